//! The node's certificates, as the kubelet gets them:
//! - its client identity: the `--kubeconfig` as given, or, when that file does not exist
//!   yet and a `--bootstrap-kubeconfig` is, a certificate for `system:node:N` (group
//!   `system:nodes`) requested through a CertificateSigningRequest to the signer
//!   `kubernetes.io/kube-apiserver-client-kubelet` and written to `--kubeconfig`;
//! - its serving certificate for the kubelet API: self-signed on first start, or (with
//!   `--rotate-server-certificates`) requested from `kubernetes.io/kubelet-serving`.
//!
//! Keys and certificates live in `STATE_DIR/pki`, mode 0600.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, SanType};

use super::ClusterConfig;

/// How long to wait for a request to be approved and signed before giving up.
const CSR_WAIT: Duration = Duration::from_secs(15 * 60);

fn pki(cfg: &ClusterConfig) -> PathBuf {
    cfg.state_dir.join("pki")
}

/// Writes a secret file with mode 0600, atomically.
fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn node_subject(cfg: &ClusterConfig) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, format!("system:node:{}", cfg.node_name));
    params.distinguished_name.push(DnType::OrganizationName, "system:nodes");
    Ok(params)
}

/// The kubeconfig the node runs with: `--kubeconfig` if it exists, else one made by
/// bootstrapping from `--bootstrap-kubeconfig`.
pub async fn node_kubeconfig(cfg: &ClusterConfig) -> anyhow::Result<PathBuf> {
    if cfg.kubeconfig.exists() {
        return Ok(cfg.kubeconfig.clone());
    }
    let Some(bootstrap) = &cfg.bootstrap_kubeconfig else {
        bail!("the kubeconfig {} does not exist, and no --bootstrap-kubeconfig was given", cfg.kubeconfig.display());
    };
    tracing::info!(bootstrap = %bootstrap.display(), "requesting a client certificate for the node");
    let client = super::client(bootstrap).await?;
    let key = KeyPair::generate()?;
    let request = node_subject(cfg)?.serialize_request(&key)?.pem()?;
    let cert = request_certificate(
        &client,
        &format!("node-csr-{}", cfg.node_name),
        request,
        "kubernetes.io/kube-apiserver-client-kubelet",
        // what the kubelet asks for: servers before 1.27 refuse a node client CSR
        // without key encipherment, whatever the key type; later ones accept it
        &["digital signature", "key encipherment", "client auth"],
    )
    .await?;
    let dir = pki(cfg);
    let (cert_path, key_path) = (dir.join("kubelet-client.crt"), dir.join("kubelet-client.key"));
    write_private(&cert_path, cert.as_bytes())?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    // the cluster of the bootstrap kubeconfig, the new identity
    let mut kc = kube::config::Kubeconfig::read_from(bootstrap)?;
    for auth in &mut kc.auth_infos {
        auth.auth_info = Some(kube::config::AuthInfo {
            client_certificate: Some(cert_path.display().to_string()),
            client_key: Some(key_path.display().to_string()),
            ..Default::default()
        });
    }
    let yaml = serde_yaml_ng::to_string(&kc)?;
    write_private(&cfg.kubeconfig, yaml.as_bytes())?;
    tracing::info!(kubeconfig = %cfg.kubeconfig.display(), "node client certificate issued");
    Ok(cfg.kubeconfig.clone())
}

/// Creates a CertificateSigningRequest (or finds ours from before) and waits for its
/// certificate. Returns the PEM chain.
async fn request_certificate(
    client: &kube::Client,
    name: &str,
    request_pem: String,
    signer: &str,
    usages: &[&str],
) -> anyhow::Result<String> {
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        spec: CertificateSigningRequestSpec {
            request: ByteString(request_pem.clone().into_bytes()),
            signer_name: signer.into(),
            usages: Some(usages.iter().map(|u| u.to_string()).collect()),
            ..Default::default()
        },
        status: None,
    };
    match api.create(&PostParams::default(), &csr).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {
            // an older request of ours with another key would be useless: replace it
            let old = api.get(name).await?;
            if old.spec.request.0 != request_pem.as_bytes() {
                api.delete(name, &Default::default()).await?;
                api.create(&PostParams::default(), &csr).await?;
            }
        }
        Err(e) => return Err(e).context("creating the certificate signing request"),
    }
    eprintln!(
        "wasmlet: waiting for certificate signing request {name} to be approved (kubectl certificate approve {name})"
    );
    let deadline = tokio::time::Instant::now() + CSR_WAIT;
    loop {
        if let Ok(csr) = api.get(name).await
            && let Some(status) = &csr.status
        {
            if let Some(c) = status.conditions.iter().flatten().find(|c| c.type_ == "Denied" || c.type_ == "Failed") {
                bail!("certificate signing request {name} was {}: {}", c.type_, c.message.clone().unwrap_or_default());
            }
            if let Some(cert) = &status.certificate
                && !cert.0.is_empty()
            {
                return Ok(String::from_utf8_lossy(&cert.0).into_owned());
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("certificate signing request {name} was not signed within {} minutes", CSR_WAIT.as_secs() / 60);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The cluster CA (PEM) of the kubeconfig's current cluster: what client certificates
/// on the kubelet API are checked against unless `--client-ca-file` says otherwise.
pub fn cluster_ca(kubeconfig: &Path) -> anyhow::Result<Vec<u8>> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let context = kc.current_context.clone().unwrap_or_default();
    let cluster_name = kc
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .unwrap_or_default();
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .or(kc.clusters.first())
        .and_then(|c| c.cluster.clone())
        .context("the kubeconfig names no cluster")?;
    if let Some(data) = &cluster.certificate_authority_data {
        return Ok(base64::engine::general_purpose::STANDARD.decode(data.trim())?);
    }
    if let Some(file) = &cluster.certificate_authority {
        return std::fs::read(file).with_context(|| format!("reading the cluster CA {file}"));
    }
    bail!("the kubeconfig has no cluster CA; give --client-ca-file")
}

/// The kubelet API's certificate and key (PEM): the stored one, a new self-signed one,
/// or one the cluster signed.
pub async fn serving_cert(client: &kube::Client, cfg: &ClusterConfig) -> anyhow::Result<(String, String)> {
    let dir = pki(cfg);
    let (cert_path, key_path) = (dir.join("kubelet.crt"), dir.join("kubelet.key"));
    if let (Ok(c), Ok(k)) = (std::fs::read_to_string(&cert_path), std::fs::read_to_string(&key_path)) {
        return Ok((c, k));
    }
    let key = KeyPair::generate()?;
    let mut params = node_subject(cfg)?;
    let mut sans = vec![SanType::DnsName(cfg.node_name.clone().try_into()?)];
    for ip in [&cfg.node_ip, &cfg.kubelet_address] {
        if let Ok(ip) = ip.parse::<std::net::IpAddr>()
            && !ip.is_unspecified()
            && !sans.contains(&SanType::IpAddress(ip))
        {
            sans.push(SanType::IpAddress(ip));
        }
    }
    params.subject_alt_names = sans;
    let cert = if cfg.serving_csr {
        let request = params.serialize_request(&key)?.pem()?;
        let name = format!("kubelet-serving-{}-{}", cfg.node_name, fastrand::u32(..));
        request_certificate(
            client,
            &name,
            request,
            "kubernetes.io/kubelet-serving",
            &["digital signature", "key encipherment", "server auth"],
        )
        .await?
    } else {
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.self_signed(&key)?.pem()
    };
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    write_private(&cert_path, cert.as_bytes())?;
    Ok((cert, key.serialize_pem()))
}
