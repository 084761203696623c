//! Platforms (`linux/arm64/v8`) and picking a manifest from an index the way containerd does.

use std::fmt;
use std::str::FromStr;

/// An OS/architecture/variant triple in Go's naming (`linux`, `amd64`, `arm64`, `v8`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

/// Why a string is not a platform.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid platform {input:?}: expected os/arch[/variant], e.g. linux/arm64/v8")]
pub struct PlatformParseError {
    pub input: String,
}

impl Platform {
    /// A platform from its parts, normalised (`aarch64` is `arm64`, `x86_64` is `amd64`, ...).
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        let (architecture, variant) = normalize_arch(architecture, variant.unwrap_or(""));
        Self {
            os: os.to_ascii_lowercase(),
            architecture,
            variant: (!variant.is_empty()).then_some(variant),
        }
    }

    /// Linux on the architecture this process runs on.
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "x86" => "386",
            "aarch64" => "arm64",
            "arm" => "arm",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "powerpc64" => "ppc64",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            "loongarch64" => "loong64",
            "mips64" if cfg!(target_endian = "little") => "mips64le",
            "mips64" => "mips64",
            other => other,
        };
        Self::new("linux", arch, None)
    }

    /// Whether a manifest for `other` runs here, as containerd's default matcher decides:
    /// same OS and architecture; variants equal after normalisation (arm64 without a variant
    /// is v8, arm without one is v7), and an arm vN host also runs arm variants below N.
    pub fn matches(&self, other: &Platform) -> bool {
        self.rank(other).is_some()
    }

    /// Lower is better; `None` when `other` does not run here.
    pub(crate) fn rank(&self, other: &Platform) -> Option<u32> {
        if !self.os.eq_ignore_ascii_case(&other.os) || self.architecture != other.architecture {
            return None;
        }
        let mine = self.effective_variant();
        let theirs = other.effective_variant();
        if mine == theirs {
            return Some(0);
        }
        if self.architecture == "arm" {
            let n = |v: &str| v.strip_prefix('v').and_then(|d| d.parse::<u32>().ok());
            if let (Some(m), Some(t)) = (n(&mine), n(&theirs)) {
                if t < m {
                    return Some(m - t);
                }
            }
        }
        None
    }

    fn effective_variant(&self) -> String {
        match (self.architecture.as_str(), self.variant.as_deref()) {
            ("arm64", None) => "v8".into(),
            ("arm", None) => "v7".into(),
            (_, v) => v.unwrap_or("").to_string(),
        }
    }
}

/// containerd's `normalizeArch`, with arm64's variant spelled `v8` when given.
fn normalize_arch(arch: &str, variant: &str) -> (String, String) {
    let arch = arch.to_ascii_lowercase();
    let variant = variant.to_ascii_lowercase();
    match arch.as_str() {
        "i386" => ("386".into(), String::new()),
        "x86_64" | "x86-64" | "amd64" => {
            let v = if variant == "v1" {
                String::new()
            } else {
                variant
            };
            ("amd64".into(), v)
        }
        "aarch64" | "arm64" => {
            let v = match variant.as_str() {
                "8" | "v8" => "v8".to_string(),
                _ => variant,
            };
            ("arm64".into(), v)
        }
        "armhf" => ("arm".into(), "v7".into()),
        "armel" => ("arm".into(), "v6".into()),
        "arm" => {
            let v = match variant.as_str() {
                "" | "7" => "v7".to_string(),
                "5" | "6" | "8" => format!("v{variant}"),
                _ => variant,
            };
            ("arm".into(), v)
        }
        _ => (arch, variant),
    }
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

impl FromStr for Platform {
    type Err = PlatformParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PlatformParseError {
            input: s.to_string(),
        };
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 64
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        };
        if !parts.iter().all(|p| ok(p)) {
            return Err(err());
        }
        match parts.as_slice() {
            [os, arch] => Ok(Self::new(os, arch, None)),
            [os, arch, variant] => Ok(Self::new(os, arch, Some(variant))),
            _ => Err(err()),
        }
    }
}

impl From<&oci_spec::image::Platform> for Platform {
    fn from(p: &oci_spec::image::Platform) -> Self {
        Self::new(
            &p.os().to_string(),
            &p.architecture().to_string(),
            p.variant().as_deref(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_normalises() {
        assert_eq!(p("linux/arm64/v8").to_string(), "linux/arm64/v8");
        assert_eq!(p("linux/aarch64").to_string(), "linux/arm64");
        assert_eq!(p("Linux/x86_64").to_string(), "linux/amd64");
        assert_eq!(p("linux/arm").to_string(), "linux/arm/v7");
        assert_eq!(p("linux/arm64/8").variant.as_deref(), Some("v8"));
        for bad in ["", "linux", "linux/", "/amd64", "a/b/c/d", "linux/am d64"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn host_is_linux_in_go_naming() {
        let h = Platform::host();
        assert_eq!(h.os, "linux");
        assert!(!h.architecture.contains('_'), "{h}");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(h.architecture, "amd64");
        }
    }

    #[test]
    fn matching_like_containerd() {
        // arm64: no variant and v8 are the same thing.
        assert!(p("linux/arm64").matches(&p("linux/arm64/v8")));
        assert!(p("linux/arm64/v8").matches(&p("linux/arm64")));
        assert!(!p("linux/arm64").matches(&p("linux/arm64/v9")));
        assert!(!p("linux/arm64").matches(&p("linux/amd64")));
        assert!(!p("linux/amd64").matches(&p("windows/amd64")));
        // arm v7 runs v6 and v5, but not v8; the exact variant ranks first.
        assert!(p("linux/arm/v7").matches(&p("linux/arm/v6")));
        assert!(!p("linux/arm/v6").matches(&p("linux/arm/v7")));
        let host = p("linux/arm/v7");
        assert!(host.rank(&p("linux/arm/v7")) < host.rank(&p("linux/arm/v6")));
        assert!(p("linux/amd64").matches(&p("linux/amd64")));
        assert!(!p("linux/amd64").matches(&p("linux/amd64/v3")));
    }
}
