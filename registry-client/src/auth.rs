//! Registry credentials and the auth challenge.
//!
//! Credentials are kept per registry host and only ever handed to that host (or to the
//! token realm that host names). They come from a docker `config.json` (`auths`,
//! `credHelpers`, `credsStore`), found the way docker and podman find it, or are given
//! explicitly (the agent feeds imagePullSecrets through [`Keychain::insert`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::reference::DOCKER_HUB;

/// A username and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential").field("username", &self.username).field("password", &"<redacted>").finish()
    }
}

impl Credential {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credential { username: username.into(), password: password.into() }
    }

    /// The value of an `Authorization: Basic …` header.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
    }
}

/// Credentials by registry host.
#[derive(Clone, Debug, Default)]
pub struct Keychain {
    entries: HashMap<String, Credential>,
    helpers: HashMap<String, String>,
    default_helper: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, DockerAuth>,
    #[serde(default)]
    cred_helpers: HashMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl Keychain {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the credential for `registry` (`host` or `host:port`; a URL's
    /// scheme and path are ignored, and Docker Hub's aliases mean `docker.io`).
    pub fn insert(&mut self, registry: &str, credential: Credential) {
        self.entries.insert(normalize_host(registry), credential);
    }

    /// The credential for exactly this host, if any. Nothing is shared between hosts.
    pub fn get(&self, registry: &str) -> Result<Option<Credential>> {
        let host = normalize_host(registry);
        if let Some(c) = self.entries.get(&host) {
            return Ok(Some(c.clone()));
        }
        match self.helpers.get(&host).or(self.default_helper.as_ref()) {
            Some(helper) => run_helper(helper, &host),
            None => Ok(None),
        }
    }

    /// Reads a docker `config.json` / containers `auth.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::Credentials { path: path.to_path_buf(), reason };
        let data = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let config: DockerConfig = serde_json::from_slice(&data).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let mut keychain = Keychain::new();
        for (key, entry) in config.auths {
            if let Some(cred) = entry.credential().map_err(|r| bad(format!("auths.{key:?}: {r}")))? {
                keychain.insert(&key, cred);
            }
        }
        keychain.helpers = config.cred_helpers.into_iter().map(|(k, v)| (normalize_host(&k), v)).collect();
        keychain.default_helper = config.creds_store.filter(|s| !s.is_empty());
        Ok(keychain)
    }

    /// The file docker or podman would use: `$REGISTRY_AUTH_FILE`, then
    /// `$DOCKER_CONFIG/config.json`, then `~/.docker/config.json`.
    pub fn default_path() -> Option<PathBuf> {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        env("REGISTRY_AUTH_FILE")
            .or_else(|| env("DOCKER_CONFIG").map(|d| d.join("config.json")))
            .or_else(|| env("HOME").map(|h| h.join(".docker/config.json")))
    }

    /// The keychain from [`Keychain::default_path`]; empty if that file does not exist.
    pub fn from_env() -> Result<Self> {
        match Self::default_path() {
            Some(p) if p.exists() => Self::from_file(&p),
            _ => Ok(Keychain::new()),
        }
    }
}

impl DockerAuth {
    fn credential(&self) -> Result<Option<Credential>, String> {
        if let Some(auth) = self.auth.as_deref().filter(|a| !a.is_empty()) {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| format!("auth is not base64: {e}"))?;
            let raw = String::from_utf8(raw).map_err(|_| "auth is not UTF-8".to_string())?;
            let (user, pass) = raw.split_once(':').ok_or("auth is not user:password")?;
            return Ok(Some(Credential::new(user, pass)));
        }
        match (&self.username, &self.password) {
            (Some(u), Some(p)) => Ok(Some(Credential::new(u.clone(), p.clone()))),
            _ => Ok(None),
        }
    }
}

/// The credentials of a pull secret, by the registry key they are for: the
/// `.dockerconfigjson` form (`{"auths": {...}}`) or the legacy `.dockercfg` form (the
/// `auths` map alone). Entries without a credential are skipped.
pub fn pull_secret_entries(data: &[u8]) -> std::result::Result<Vec<(String, Credential)>, String> {
    let value: serde_json::Value = serde_json::from_slice(data).map_err(|e| format!("invalid JSON: {e}"))?;
    let auths = match value.get("auths") {
        Some(a) => a.clone(),
        None => value,
    };
    let auths: HashMap<String, DockerAuth> =
        serde_json::from_value(auths).map_err(|e| format!("invalid auths: {e}"))?;
    let mut out = Vec::new();
    for (key, entry) in auths {
        if let Some(c) = entry.credential().map_err(|r| format!("auths.{key:?}: {r}"))? {
            out.push((key, c));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Whether a pull-secret key (`host[:port][/path]`, a scheme allowed, `*` globs in host
/// labels) names the registry and repository of `reference`, as the kubelet's keyring
/// matches them: same number of host labels, each matching; the same port (none
/// matches none); the key's path a prefix of the repository. Returns how specific the
/// match is (longer keys first), or `None`.
pub fn key_matches(key: &str, reference: &crate::Reference) -> Option<usize> {
    let key = key.trim();
    let key = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    let (host, path) = key.split_once('/').unwrap_or((key, ""));
    let host = normalize_host(host);
    // Docker Hub's legacy key carries an API path (`/v1/`), not a repository
    let path = if host == DOCKER_HUB { "" } else { path.trim_end_matches('/') };
    let (key_name, key_port) = host.rsplit_once(':').map_or((host.as_str(), None), |(h, p)| (h, Some(p)));
    let target = reference.registry().to_ascii_lowercase();
    let (name, port) = target.rsplit_once(':').map_or((target.as_str(), None), |(h, p)| (h, Some(p)));
    if key_port != port {
        return None;
    }
    let (kl, tl): (Vec<&str>, Vec<&str>) = (key_name.split('.').collect(), name.split('.').collect());
    if kl.len() != tl.len() || !kl.iter().zip(&tl).all(|(k, t)| glob(k, t)) {
        return None;
    }
    let repo = reference.repository();
    let in_path = path.is_empty() || repo == path || repo.starts_with(&format!("{path}/"));
    in_path.then_some(key.len())
}

/// `*` matches any run of characters within one host label.
fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((head, tail)) => {
            s.starts_with(head) && (head.len()..=s.len()).any(|i| s.is_char_boundary(i) && glob(tail, &s[i..]))
        }
    }
}

/// `https://index.docker.io/v1/` → `docker.io`, `http://host:5000/x` → `host:5000`.
pub(crate) fn normalize_host(key: &str) -> String {
    let key = key.trim();
    let key = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => DOCKER_HUB.to_string(),
        h => h.to_ascii_lowercase(),
    }
}

/// Runs `docker-credential-<name> get`, the credential-helper protocol.
fn run_helper(name: &str, host: &str) -> Result<Option<Credential>> {
    use std::io::Write;
    let program = format!("docker-credential-{name}");
    let bad = |reason: String| Error::Credentials { path: PathBuf::from(&program), reason };
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(bad(format!("invalid helper name {name:?}")));
    }
    let server = if host == DOCKER_HUB { "https://index.docker.io/v1/" } else { host };
    let mut child = std::process::Command::new(&program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| bad(format!("cannot run: {e}")))?;
    child.stdin.take().expect("piped stdin").write_all(server.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let out = child.wait_with_output().map_err(|e| bad(e.to_string()))?;
    if !out.status.success() {
        // The protocol's "credentials not found" is a failure exit; treat it as none.
        return Ok(None);
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Reply {
        username: String,
        secret: String,
    }
    let reply: Reply = serde_json::from_slice(&out.stdout).map_err(|e| bad(format!("invalid reply: {e}")))?;
    Ok(Some(Credential::new(reply.username, reply.secret)))
}

/// A parsed `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

impl Challenge {
    /// Parses `Basic realm="x"` or `Bearer realm="…",service="…",scope="…"`.
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
        let params = parse_params(params);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => Some(Challenge::Basic),
            "bearer" => Some(Challenge::Bearer {
                realm: params.get("realm")?.clone(),
                service: params.get("service").cloned(),
                scope: params.get("scope").cloned(),
            }),
            _ => None,
        }
    }
}

/// `k="v", k2=v2` with quoted values that may contain commas.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else { break };
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = if let Some(q) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &q[end.min(q.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        out.insert(key, value);
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_forms() {
        assert_eq!(Challenge::parse(r#"Basic realm="regtest-realm""#), Some(Challenge::Basic));
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull,push".into()),
            })
        );
        assert_eq!(Challenge::parse("Bearer service=x"), None, "realm is required");
        assert_eq!(Challenge::parse("Negotiate abc"), None);
    }

    #[test]
    fn docker_config_keys_and_forms() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:s3cret:with:colons");
        std::fs::write(
            &path,
            format!(
                r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{b64}"}},"127.0.0.1:5001":{{"username":"bob","password":"pw"}},"http://reg.lan:5000/v2/":{{"auth":""}}}}}}"#
            ),
        )
        .unwrap();
        let k = Keychain::from_file(&path).unwrap();
        assert_eq!(k.get("docker.io").unwrap(), Some(Credential::new("alice", "s3cret:with:colons")));
        assert_eq!(k.get("127.0.0.1:5001").unwrap(), Some(Credential::new("bob", "pw")));
        assert_eq!(k.get("127.0.0.1:5000").unwrap(), None, "another port is another registry");
        assert_eq!(k.get("reg.lan:5000").unwrap(), None);
    }

    #[test]
    fn pull_secret_keys_match_as_the_kubelet_matches_them() {
        let r = |s: &str| s.parse::<crate::Reference>().unwrap();
        let img = r("registry.example.com:5000/team/app:v1");
        assert!(key_matches("registry.example.com:5000", &img).is_some());
        assert!(key_matches("https://registry.example.com:5000/v2/", &img).is_none(), "a path is a repository prefix");
        assert!(key_matches("registry.example.com:5000/team", &img).is_some());
        assert!(key_matches("registry.example.com:5000/tea", &img).is_none(), "whole path segments");
        assert!(key_matches("registry.example.com", &img).is_none(), "another port is another registry");
        assert!(key_matches("*.example.com:5000", &img).is_some());
        assert!(key_matches("*.com:5000", &img).is_none(), "a glob spans one label");
        assert!(key_matches("evil.com:5000", &img).is_none());
        assert!(key_matches("https://index.docker.io/v1/", &r("busybox")).is_some());
        let (a, b) =
            (key_matches("registry.example.com:5000/team", &img), key_matches("registry.example.com:5000", &img));
        assert!(a > b, "the more specific key first");
        let b64 = base64::engine::general_purpose::STANDARD.encode("u:p");
        let json = format!(r#"{{"auths":{{"reg:5000":{{"auth":"{b64}"}},"other":{{}}}}}}"#);
        assert_eq!(pull_secret_entries(json.as_bytes()).unwrap(), vec![("reg:5000".into(), Credential::new("u", "p"))]);
        let legacy = format!(r#"{{"reg:5000":{{"auth":"{b64}"}}}}"#);
        assert_eq!(pull_secret_entries(legacy.as_bytes()).unwrap().len(), 1);
        assert!(pull_secret_entries(b"{").unwrap_err().starts_with("invalid JSON"));
    }

    #[test]
    fn bad_config_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"auths":{"x":{"auth":"!!notbase64"}}}"#).unwrap();
        let err = Keychain::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("config.json") && err.contains("base64"), "{err}");
    }

    #[test]
    fn debug_hides_the_password() {
        let s = format!("{:?}", Credential::new("u", "hunter2"));
        assert!(!s.contains("hunter2"));
    }
}
