//! Platform selection from an image index, the way containerd matches: the same OS, the
//! same architecture (with common aliases normalised), and the best variant.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An OCI platform (`os`/`architecture`[/`variant`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        let (architecture, variant) = normalize(architecture, variant);
        Platform { os: os.to_string(), architecture, variant }
    }

    /// The platform of this process.
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        let variant = match arch {
            "arm" => Some("v7"),
            _ => None,
        };
        Platform::new("linux", arch, variant)
    }

    /// How well `candidate` serves this platform: `None` if it cannot run here, else a
    /// rank where larger is better (an exact variant beats a compatible older one).
    pub fn rank(&self, candidate: &Platform) -> Option<u32> {
        let candidate = Platform::new(&candidate.os, &candidate.architecture, candidate.variant.as_deref());
        if candidate.os != self.os || candidate.architecture != self.architecture {
            return None;
        }
        match (&self.variant, &candidate.variant) {
            (a, b) if a == b => Some(100),
            (_, None) => Some(50),
            (Some(want), Some(have)) => {
                let (w, h) = (variant_level(want)?, variant_level(have)?);
                (h <= w).then_some(h)
            }
            (None, Some(_)) => None,
        }
    }
}

fn variant_level(v: &str) -> Option<u32> {
    v.strip_prefix('v')?.parse().ok()
}

/// containerd's normalisation: aliases for the same architecture, and arm64's default v8.
fn normalize(arch: &str, variant: Option<&str>) -> (String, Option<String>) {
    let arch = match arch.to_ascii_lowercase().as_str() {
        "x86_64" | "x86-64" => "amd64".to_string(),
        "aarch64" => "arm64".to_string(),
        "armhf" => return ("arm".into(), Some("v7".into())),
        "armel" => return ("arm".into(), Some("v6".into())),
        other => other.to_string(),
    };
    let variant = match (arch.as_str(), variant) {
        ("arm64", Some("v8") | None) => None,
        ("amd64", Some("v1")) => None,
        (_, v) => v.map(str::to_string),
    };
    (arch, variant)
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_beats_compatible_and_foreign_is_refused() {
        let want = Platform::new("linux", "arm", Some("v7"));
        assert_eq!(want.rank(&Platform::new("linux", "arm", Some("v7"))), Some(100));
        assert_eq!(want.rank(&Platform::new("linux", "arm", Some("v6"))), Some(6));
        assert_eq!(want.rank(&Platform::new("linux", "arm", Some("v8"))), None);
        assert_eq!(want.rank(&Platform::new("linux", "arm64", None)), None);
        assert_eq!(want.rank(&Platform::new("windows", "arm", Some("v7"))), None);
    }

    #[test]
    fn aliases_are_normalised() {
        let amd = Platform::new("linux", "amd64", None);
        assert_eq!(amd.rank(&Platform::new("linux", "x86_64", None)), Some(100));
        let arm64 = Platform::new("linux", "aarch64", None);
        assert_eq!(arm64.rank(&Platform::new("linux", "arm64", Some("v8"))), Some(100));
        assert_eq!(Platform::new("linux", "armhf", None).to_string(), "linux/arm/v7");
    }
}
