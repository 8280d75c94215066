//! The manifest parser and validator (`wasmlet apply -f`, the local API's `POST /v1/apply`
//! body, YAML or JSON): any text is parsed or refused with a field error, never a panic;
//! what is accepted parses again the same once written back out as JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(objects) = wasmlet::spec::parse(text) else { return };
    for object in objects {
        if let wasmlet::spec::Object::Pod(pod) = object {
            let json = serde_json::to_string(&pod).expect("a parsed pod serialises");
            let again = wasmlet::spec::parse(&json);
            assert!(again.is_ok(), "accepted, then refused when written back: {json}: {again:?}");
        }
    }
});
