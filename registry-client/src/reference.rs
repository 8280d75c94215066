//! Image references, parsed and normalised the way `docker pull` does: `busybox` is
//! `docker.io/library/busybox:latest`, a first component with a dot, a colon or the name
//! `localhost` is a registry host, and a digest pins the content.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// The registry that references without a host name belong to.
pub const DOCKER_HUB: &str = "docker.io";
const NAME_MAX: usize = 255;
const TAG_MAX: usize = 128;

/// A parsed, normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Registry host (and port), e.g. `docker.io` or `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Repository path inside the registry, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag as written, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// Whether the reference names `latest` explicitly or implicitly (no tag, no digest):
    /// Kubernetes then defaults `imagePullPolicy` to `Always`.
    pub fn is_latest(&self) -> bool {
        self.digest.is_none() && self.tag.as_deref().is_none_or(|t| t == "latest")
    }

    /// What to ask the registry's manifest endpoint for: the digest if pinned, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// The same repository at another digest (an index entry, say).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference { digest: Some(digest), ..self.clone() }
    }

    /// The same repository and tag on another registry (a mirror).
    pub fn on_registry(&self, registry: &str) -> Reference {
        Reference { registry: registry.to_string(), ..self.clone() }
    }

    /// A reference with explicit parts; the parts are validated like a parsed string.
    pub fn new(registry: &str, repository: &str, tag: Option<&str>, digest: Option<Digest>) -> Result<Self> {
        let mut s = format!("{registry}/{repository}");
        if let Some(t) = tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &digest {
            s.push('@');
            s.push_str(&d.to_string());
        }
        s.parse()
    }

    pub(crate) fn to_oci(&self) -> oci_client::Reference {
        match (&self.digest, &self.tag) {
            (Some(d), Some(t)) => oci_client::Reference::with_tag_and_digest(
                self.registry.clone(),
                self.repository.clone(),
                t.clone(),
                d.to_string(),
            ),
            (Some(d), None) => {
                oci_client::Reference::with_digest(self.registry.clone(), self.repository.clone(), d.to_string())
            }
            (None, t) => oci_client::Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                t.clone().unwrap_or_else(|| "latest".into()),
            ),
        }
    }
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self> {
        let bad = |reason: &str| Error::InvalidReference { reference: input.to_string(), reason: reason.to_string() };
        if input.is_empty() {
            return Err(bad("empty"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => (rest, Some(d.parse::<Digest>()?)),
            None => (input, None),
        };
        let (name, tag) = split_tag(rest);
        if let Some(t) = tag {
            validate_tag(t).map_err(|r| bad(&r))?;
        }
        let (registry, repository) = split_registry(name);
        if registry.is_empty() || registry.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err(bad("invalid registry host"));
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_string()
        };
        validate_repository(&repository).map_err(|r| bad(&r))?;
        if registry.len() + 1 + repository.len() > NAME_MAX {
            return Err(bad("name longer than 255 characters"));
        }
        Ok(Reference { registry, repository, tag: tag.map(str::to_string), digest })
    }
}

/// `name[:tag]` where the tag is after the last `/` (so `host:5000/repo` has no tag).
fn split_tag(s: &str) -> (&str, Option<&str>) {
    match s.rfind(':') {
        Some(i) if !s[i..].contains('/') => (&s[..i], Some(&s[i + 1..])),
        _ => (s, None),
    }
}

fn split_registry(name: &str) -> (String, &str) {
    match name.split_once('/') {
        Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            let host = match first {
                "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
                h => h,
            };
            (host.to_string(), rest)
        }
        _ => (DOCKER_HUB.to_string(), name),
    }
}

fn validate_tag(tag: &str) -> Result<(), String> {
    let mut chars = tag.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !first_ok || !rest_ok || tag.len() > TAG_MAX {
        return Err(format!("invalid tag {tag:?}: tags are [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}"));
    }
    Ok(())
}

/// Each path component: lowercase alphanumerics joined by `.`, `_`, `__` or runs of `-`.
fn validate_repository(repo: &str) -> Result<(), String> {
    for component in repo.split('/') {
        let ok = !component.is_empty()
            && component.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
            && component.as_bytes()[0].is_ascii_alphanumeric()
            && component.as_bytes()[component.len() - 1].is_ascii_alphanumeric()
            && !component.contains("..")
            && !component.contains("___")
            && !component.contains("._")
            && !component.contains("_.");
        if !ok {
            return Err(format!(
                "invalid repository path component {component:?}: lowercase letters, digits and separators (. _ __ -)"
            ));
        }
    }
    Ok(())
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Reference {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn docker_hub_defaults() {
        let r = parse("busybox");
        assert_eq!((r.registry(), r.repository(), r.tag()), ("docker.io", "library/busybox", None));
        assert!(r.is_latest());
        assert_eq!(r.manifest_ref(), "latest");
        assert_eq!(parse("nginx:1.27").to_string(), "docker.io/library/nginx:1.27");
        assert_eq!(parse("bitnami/redis").repository(), "bitnami/redis");
        assert_eq!(parse("index.docker.io/library/alpine:3").registry(), "docker.io");
    }

    #[test]
    fn registry_host_detection() {
        let r = parse("127.0.0.1:5000/regtest/busybox:v1");
        assert_eq!((r.registry(), r.repository(), r.tag()), ("127.0.0.1:5000", "regtest/busybox", Some("v1")));
        assert_eq!(parse("localhost/app").registry(), "localhost");
        assert_eq!(parse("ghcr.io/a/b/c").repository(), "a/b/c");
        // host:port without a tag is not mistaken for a tag
        assert_eq!(parse("localhost:5000/app").tag(), None);
    }

    #[test]
    fn digests_pin_and_are_validated() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let r = parse(&format!("app:v1@{d}"));
        assert_eq!(r.manifest_ref(), d);
        assert!(!r.is_latest());
        assert!("app@sha256:abc".parse::<Reference>().is_err());
    }

    #[test]
    fn rejects_bad_names() {
        for bad in ["", "UPPER/case", "a//b", "a/../b", "app:bad tag", "app:-x", "/abs", "a/b-"] {
            assert!(bad.parse::<Reference>().is_err(), "{bad:?} accepted");
        }
    }
}
