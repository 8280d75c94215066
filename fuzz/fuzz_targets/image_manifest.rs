//! Image manifests, indexes and configs as a registry sends them: parsed or refused,
//! never a panic; a parsed manifest is classified and an index searched for a platform.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_client::manifest::{ACCEPTED_MANIFESTS, Document};
use registry_client::{ImageConfig, ImageKind, Platform};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else { return };
    let content_type = ACCEPTED_MANIFESTS.get(usize::from(pick) % 5).copied();
    let config = ImageConfig::parse(body);
    match Document::parse(body, content_type) {
        Ok(Document::Manifest(m)) => {
            if let Ok(c) = &config {
                let _ = ImageKind::classify(&m, c);
            }
        }
        Ok(Document::Index(i)) => {
            let _ = registry_client::select_platform(&i, &[Platform::host()]);
        }
        Err(_) => {}
    }
});
