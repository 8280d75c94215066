//! OCI and Docker manifests, indexes and image configs: parsed strictly, with the checks
//! oci-client leaves to us (ambiguous documents, CVE-2021-41190; body media type versus
//! Content-Type; schema version).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::platform::Platform;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// CNCF TAG-Runtime Wasm artifact: config and layer media types.
pub const WASM_CONFIG_V0: &str = "application/vnd.wasm.config.v0+json";
pub const WASM_LAYER: &str = "application/wasm";
/// The older wasm-to-oci / Krustlet form.
pub const WASM_CONFIG_V1: &str = "application/vnd.wasm.config.v1+json";
pub const WASM_LAYER_V1: &str = "application/vnd.wasm.content.layer.v1+wasm";
/// runwasi's component layer.
pub const WASM_COMPONENT_LAYER: &str = "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm";

/// Media types we send in `Accept` when resolving a reference.
pub const ACCEPTED_MANIFESTS: [&str; 4] = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// A content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            platform: None,
            urls: None,
            annotations: None,
            artifact_type: None,
        }
    }
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image index (OCI) or manifest list (Docker).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// What a manifest endpoint returned. Parsed once per pull, so the size difference
/// between the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Document {
    Manifest(Manifest),
    Index(Index),
}

/// Every field either document kind may have, to see what a body really is.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: Option<serde_json::Value>,
    media_type: Option<String>,
    config: Option<serde_json::Value>,
    layers: Option<serde_json::Value>,
    manifests: Option<serde_json::Value>,
}

impl Document {
    /// Parses a manifest or index body. `content_type` is the response's Content-Type.
    /// Errors are plain reasons; the caller adds the reference and digest.
    pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<Document, String> {
        let probe: Probe = serde_json::from_slice(body).map_err(|e| format!("not a JSON object: {e}"))?;
        match probe.schema_version.as_ref().and_then(|v| v.as_u64()) {
            Some(2) => {}
            Some(v) => return Err(format!("schemaVersion {v} is not supported (only 2)")),
            None => return Err("schemaVersion missing".into()),
        }
        if probe.manifests.is_some() && (probe.layers.is_some() || probe.config.is_some()) {
            return Err("ambiguous document: has both manifests and config/layers (CVE-2021-41190)".into());
        }
        let header = content_type.map(|c| c.split(';').next().unwrap_or(c).trim()).filter(|c| is_manifest_type(c));
        if let (Some(body_type), Some(header)) = (probe.media_type.as_deref(), header)
            && body_type != header
        {
            return Err(format!("mediaType {body_type} in the body differs from Content-Type {header}"));
        }
        let media_type = probe.media_type.as_deref().or(header);
        let is_index = match media_type {
            Some(OCI_INDEX | DOCKER_LIST) => true,
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
            Some(other) => return Err(format!("unsupported manifest media type {other}")),
            None => probe.manifests.is_some(),
        };
        if is_index {
            if probe.manifests.is_none() {
                return Err("index without manifests".into());
            }
            serde_json::from_slice(body).map(Document::Index).map_err(|e| format!("invalid index: {e}"))
        } else {
            if probe.config.is_none() || probe.layers.is_none() {
                return Err("manifest without config or layers".into());
            }
            serde_json::from_slice(body).map(Document::Manifest).map_err(|e| format!("invalid manifest: {e}"))
        }
    }
}

fn is_manifest_type(t: &str) -> bool {
    ACCEPTED_MANIFESTS.contains(&t)
}

/// The parts of an image config wasmlet uses (OCI image-spec `config`, Docker's too).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContainerConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<RootFs>,
}

/// The runtime defaults an image carries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

impl ImageConfig {
    /// Parses an image config blob. Wasm artifact configs parse too (all fields optional).
    pub fn parse(body: &[u8]) -> Result<ImageConfig, String> {
        serde_json::from_slice(body).map_err(|e| format!("invalid image config: {e}"))
    }
}

/// Which runtime an image is for, as far as the registry can tell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum ImageKind {
    /// Root filesystem layers for a Linux container.
    Linux,
    /// A WebAssembly module or component stored as a blob of its own.
    Wasm { form: WasmForm, layer: Descriptor },
    /// A filesystem image whose entrypoint is a `.wasm` file inside it.
    WasmInRootfs { path: String },
}

/// The packaging conventions for Wasm we accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WasmForm {
    /// CNCF TAG-Runtime artifact (`application/vnd.wasm.config.v0+json` + `application/wasm`).
    Cncf,
    /// wasm-to-oci / Krustlet (`application/vnd.wasm.content.layer.v1+wasm`).
    WasmToOci,
    /// runwasi's component layer.
    RunwasiComponent,
}

/// Whether a `.wasm` binary is a core module (wasip1) or a component (wasip2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WasmBinary {
    Module,
    Component,
}

impl WasmBinary {
    /// Reads the 8-byte preamble: `\0asm` then version 1 (module) or the component layer.
    pub fn detect(header: &[u8]) -> Option<WasmBinary> {
        match header.get(..8)? {
            [0, b'a', b's', b'm', 1, 0, 0, 0] => Some(WasmBinary::Module),
            [0, b'a', b's', b'm', _, _, 1, 0] => Some(WasmBinary::Component),
            _ => None,
        }
    }
}

impl ImageKind {
    /// Decides the kind from the manifest's media types, then the config's entrypoint.
    pub fn classify(manifest: &Manifest, config: &ImageConfig) -> ImageKind {
        let find = |types: &[&str]| manifest.layers.iter().find(|l| types.contains(&l.media_type.as_str())).cloned();
        if let Some(layer) = find(&[WASM_COMPONENT_LAYER]) {
            return ImageKind::Wasm { form: WasmForm::RunwasiComponent, layer };
        }
        let cfg = manifest.config.media_type.as_str();
        if let Some(layer) =
            find(&[WASM_LAYER]).filter(|_| cfg == WASM_CONFIG_V0 || cfg == WASM_CONFIG_V1 || !has_tar_layers(manifest))
        {
            return ImageKind::Wasm { form: WasmForm::Cncf, layer };
        }
        if let Some(layer) = find(&[WASM_LAYER_V1]) {
            return ImageKind::Wasm { form: WasmForm::WasmToOci, layer };
        }
        let entry = config
            .config
            .as_ref()
            .and_then(|c| c.entrypoint.as_ref().filter(|e| !e.is_empty()).or(c.cmd.as_ref())?.first().cloned());
        match entry {
            Some(path) if path.ends_with(".wasm") => ImageKind::WasmInRootfs { path },
            _ => ImageKind::Linux,
        }
    }

    pub fn is_wasm(&self) -> bool {
        !matches!(self, ImageKind::Linux)
    }
}

fn has_tar_layers(manifest: &Manifest) -> bool {
    manifest.layers.iter().any(|l| is_tar_layer(&l.media_type))
}

/// Whether a layer media type is a filesystem changeset we unpack.
pub fn is_tar_layer(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.oci.image.layer.")
        || media_type.starts_with("application/vnd.docker.image.rootfs.")
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn manifest_json(config_type: &str, layer_type: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{config_type}","digest":"{D1}","size":2}},"layers":[{{"mediaType":"{layer_type}","digest":"{D1}","size":0}}]}}"#
        )
    }

    fn classify(json: &str, config: &str) -> ImageKind {
        let Document::Manifest(m) = Document::parse(json.as_bytes(), None).unwrap() else { panic!("not a manifest") };
        ImageKind::classify(&m, &ImageConfig::parse(config.as_bytes()).unwrap())
    }

    #[test]
    fn rejects_ambiguous_documents() {
        let body = format!(
            r#"{{"schemaVersion":2,"manifests":[],"layers":[],"config":{{"mediaType":"x","digest":"{D1}","size":0}}}}"#
        );
        let err = Document::parse(body.as_bytes(), None).unwrap_err();
        assert!(err.contains("ambiguous"), "{err}");
    }

    #[test]
    fn body_type_must_match_content_type() {
        let body = manifest_json(OCI_CONFIG, OCI_LAYER_GZIP);
        assert!(Document::parse(body.as_bytes(), Some(OCI_INDEX)).is_err());
        assert!(Document::parse(body.as_bytes(), Some(OCI_MANIFEST)).is_ok());
        // generic types say nothing either way
        assert!(Document::parse(body.as_bytes(), Some("application/json")).is_ok());
    }

    #[test]
    fn rejects_schema1_and_unknown_types() {
        assert!(Document::parse(br#"{"schemaVersion":1,"fsLayers":[]}"#, None).is_err());
        let body = manifest_json(OCI_CONFIG, OCI_LAYER_GZIP).replace(OCI_MANIFEST, "text/html");
        assert!(Document::parse(body.as_bytes(), None).is_err());
        let index_without = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}"}}"#);
        assert!(Document::parse(index_without.as_bytes(), None).is_err());
    }

    #[test]
    fn index_parses_with_platforms() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":1,"platform":{{"os":"wasip2","architecture":"wasm"}}}}]}}"#
        );
        let Document::Index(i) = Document::parse(body.as_bytes(), None).unwrap() else { panic!() };
        assert_eq!(i.manifests[0].platform.as_ref().unwrap().os, "wasip2");
    }

    #[test]
    fn classifies_every_wasm_form() {
        let k = classify(&manifest_json(WASM_CONFIG_V0, WASM_LAYER), "{}");
        assert!(matches!(k, ImageKind::Wasm { form: WasmForm::Cncf, .. }));
        let k = classify(&manifest_json(WASM_CONFIG_V1, WASM_LAYER_V1), "{}");
        assert!(matches!(k, ImageKind::Wasm { form: WasmForm::WasmToOci, .. }));
        let k = classify(&manifest_json(OCI_CONFIG, WASM_COMPONENT_LAYER), r#"{"os":"wasip2","architecture":"wasm"}"#);
        assert!(matches!(k, ImageKind::Wasm { form: WasmForm::RunwasiComponent, .. }));
        let k = classify(&manifest_json(OCI_CONFIG, OCI_LAYER_GZIP), r#"{"config":{"Entrypoint":["/app.wasm"]}}"#);
        assert_eq!(k, ImageKind::WasmInRootfs { path: "/app.wasm".into() });
        let k = classify(&manifest_json(OCI_CONFIG, OCI_LAYER_GZIP), r#"{"config":{"Entrypoint":["/bin/sh"]}}"#);
        assert_eq!(k, ImageKind::Linux);
    }

    #[test]
    fn wasm_binary_preamble() {
        assert_eq!(WasmBinary::detect(b"\0asm\x01\0\0\0rest"), Some(WasmBinary::Module));
        assert_eq!(WasmBinary::detect(b"\0asm\x0d\0\x01\0"), Some(WasmBinary::Component));
        assert_eq!(WasmBinary::detect(b"\x7fELF\x02\x01\x01\0"), None);
    }
}
