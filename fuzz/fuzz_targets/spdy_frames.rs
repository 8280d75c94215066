//! The SPDY/3.1 decoder `kubectl exec`, `attach` and `port-forward` speak to: any bytes
//! decode to frames or an error, never a panic or a hang; a decoded frame encodes and
//! decodes back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spdy::Codec;

fuzz_target!(|data: &[u8]| {
    let mut codec = Codec::new();
    let mut rest = data;
    let (mut tx, mut rx) = (Codec::new(), Codec::new());
    while let Ok(Some((frame, used))) = codec.decode(rest) {
        assert!(used > 0 && used <= rest.len());
        rest = &rest[used..];
        let bytes = tx.encode(&frame);
        match rx.decode(&bytes) {
            Ok(Some((again, n))) => {
                assert_eq!(n, bytes.len());
                assert_eq!(again, frame, "a frame did not survive encode and decode");
            }
            other => panic!("{frame:?} encoded to what does not decode: {other:?}"),
        }
    }
});
