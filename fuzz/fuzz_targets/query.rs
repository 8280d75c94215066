//! Query strings of the kubelet API and the local API (`/containerLogs/…?tailLines=…`,
//! `/exec/…?command=…&command=…`) and image references: decoded or refused, never a
//! panic; an encoded value decodes back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let q = wasmlet::http::parse_query(text);
    let _ = wasmlet::http::get(&q, "command");
    let _ = text.parse::<registry_client::Reference>();
    let encoded: String = text
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() { char::from(b).to_string() } else { format!("%{b:02X}") })
        .collect();
    let back = wasmlet::http::parse_query(&format!("v={encoded}"));
    assert_eq!(back, [("v".to_string(), text.to_string())]);
});
