//! Image references: `[registry/]repository[:tag][@digest]`, normalised like Docker does.
//!
//! - `ubuntu` is `docker.io/library/ubuntu:latest`;
//! - the first path component is a registry host when it contains `.` or `:`, is
//!   `localhost`, or has uppercase letters (`127.0.0.1:5000/a/b:t`, `localhost/x`);
//! - a reference with a digest and no tag keeps no tag (`host/name@sha256:...`);
//! - `index.docker.io` is spelled `docker.io`.
//!
//! The registry host `docker.io` is only a name: [`ImageReference::api_host`] maps it to
//! `registry-1.docker.io` when URLs are built.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;

/// The registry Docker Hub images live in when a reference names none.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The host Docker Hub's registry API answers on.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
/// The tag used when a reference names neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";
/// Longest accepted repository path (Docker's limit), registry excluded.
pub const MAX_REPOSITORY_LEN: usize = 255;
/// Longest accepted tag (Docker's limit).
pub const MAX_TAG_LEN: usize = 128;
/// Longest accepted reference string as a whole.
pub const MAX_REFERENCE_LEN: usize = 1024;

/// A parsed, normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageReference {
    /// Registry as written, normalised: `docker.io`, `127.0.0.1:5000`, `localhost`.
    pub registry: String,
    /// Repository path inside the registry: `library/ubuntu`, `a/b`.
    pub repository: String,
    /// Tag; `latest` when the input named neither tag nor digest.
    pub tag: Option<String>,
    /// Digest of the manifest (or index) the reference pins.
    pub digest: Option<Digest>,
}

/// Why a string is not a valid image reference.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("empty image reference")]
    Empty,
    #[error("image reference {input:?} is longer than {max} characters")]
    TooLong { input: String, max: usize },
    #[error("invalid registry host {host:?} in image reference {input:?}")]
    InvalidRegistry { input: String, host: String },
    #[error("invalid repository {repository:?} in image reference {input:?}: {reason}")]
    InvalidRepository {
        input: String,
        repository: String,
        reason: &'static str,
    },
    #[error("invalid tag {tag:?} in image reference {input:?}: tags are 1-128 characters of [A-Za-z0-9_.-], not starting with '.' or '-'")]
    InvalidTag { input: String, tag: String },
    #[error("invalid digest in image reference {input:?}: {source}")]
    InvalidDigest {
        input: String,
        #[source]
        source: crate::digest::DigestParseError,
    },
}

impl ImageReference {
    /// The host (and port) to send registry API requests to: `docker.io` becomes
    /// `registry-1.docker.io`, every other registry is used as written.
    pub fn api_host(&self) -> &str {
        if self.registry == DEFAULT_REGISTRY {
            DOCKER_HUB_API_HOST
        } else {
            &self.registry
        }
    }

    /// What to put after `/manifests/`: the digest when pinned, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// The same repository, pinned to `digest` (tag kept).
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            digest: Some(digest),
            ..self.clone()
        }
    }
}

impl fmt::Display for ImageReference {
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

impl FromStr for ImageReference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if input.len() > MAX_REFERENCE_LEN {
            return Err(ReferenceError::TooLong {
                input: truncate(input),
                max: MAX_REFERENCE_LEN,
            });
        }
        let (rest, digest) = match input.rsplit_once('@') {
            Some((rest, d)) => {
                let digest = d.parse().map_err(|source| ReferenceError::InvalidDigest {
                    input: input.to_string(),
                    source,
                })?;
                (rest, Some(digest))
            }
            None => (input, None),
        };
        // A tag is after the last ':' that follows the last '/' (a ':' before it is a port).
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let i = last_slash + i;
                (&rest[..i], Some(&rest[i + 1..]))
            }
            None => (rest, None),
        };
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(ReferenceError::InvalidTag {
                    input: input.to_string(),
                    tag: tag.to_string(),
                });
            }
        }
        let (registry, repository) = split_registry(name);
        if !valid_host(registry) {
            return Err(ReferenceError::InvalidRegistry {
                input: input.to_string(),
                host: registry.to_string(),
            });
        }
        let mut registry = registry.to_string();
        if registry == "index.docker.io" || registry == DOCKER_HUB_API_HOST {
            registry = DEFAULT_REGISTRY.to_string();
        }
        let mut repository = repository.to_string();
        if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            repository = format!("library/{repository}");
        }
        check_repository(&repository).map_err(|reason| ReferenceError::InvalidRepository {
            input: input.to_string(),
            repository: repository.clone(),
            reason,
        })?;
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_string()),
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

impl serde::Serialize for ImageReference {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ImageReference {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn truncate(s: &str) -> String {
    let mut end = 64.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Docker's rule: the first component is a registry when it looks like a host.
fn split_registry(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => (DEFAULT_REGISTRY, name),
    }
}

fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// `host[:port]` where host is DNS labels, an IPv4 address or a bracketed IPv6 address.
pub fn valid_host(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(p) => ("", Some(p)),
                None => return false,
            },
        }
    } else {
        match host.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        if p.parse::<u32>().map_or(true, |n| n == 0 || n > 65535) {
            return false;
        }
    }
    if host.starts_with('[') {
        return true;
    }
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

/// Path components of lowercase alphanumerics joined by `.`, `_`, `__` or runs of `-`.
fn check_repository(repo: &str) -> Result<(), &'static str> {
    if repo.is_empty() {
        return Err("empty repository name");
    }
    if repo.len() > MAX_REPOSITORY_LEN {
        return Err("repository name is longer than 255 characters");
    }
    for component in repo.split('/') {
        let b = component.as_bytes();
        if b.is_empty() {
            return Err("empty path component");
        }
        if b.iter().any(|c| c.is_ascii_uppercase()) {
            return Err("repository names must be lowercase");
        }
        if !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
            return Err("path components must start and end with [a-z0-9]");
        }
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                i += 1;
                continue;
            }
            // A separator run between two alphanumerics.
            let start = i;
            while i < b.len() && !(b[i].is_ascii_lowercase() || b[i].is_ascii_digit()) {
                i += 1;
            }
            let sep = &component[start..i];
            let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
            if !ok {
                return Err(
                    "path components may only contain [a-z0-9] separated by '.', '_', '__' or '-'",
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn r(reg: &str, repo: &str, tag: Option<&str>, digest: bool) -> ImageReference {
        ImageReference {
            registry: reg.into(),
            repository: repo.into(),
            tag: tag.map(Into::into),
            digest: digest.then(|| D.parse().unwrap()),
        }
    }

    #[test]
    fn parses_good_references() {
        let cases = [
            (
                "ubuntu",
                r("docker.io", "library/ubuntu", Some("latest"), false),
            ),
            (
                "ubuntu:22.04",
                r("docker.io", "library/ubuntu", Some("22.04"), false),
            ),
            (
                "user/app",
                r("docker.io", "user/app", Some("latest"), false),
            ),
            (
                "docker.io/ubuntu",
                r("docker.io", "library/ubuntu", Some("latest"), false),
            ),
            (
                "index.docker.io/library/ubuntu:x",
                r("docker.io", "library/ubuntu", Some("x"), false),
            ),
            (
                "127.0.0.1:5000/a/b:t",
                r("127.0.0.1:5000", "a/b", Some("t"), false),
            ),
            (
                "127.0.0.1:5000/a/b",
                r("127.0.0.1:5000", "a/b", Some("latest"), false),
            ),
            (
                &format!("host.example/name@{D}"),
                r("host.example", "name", None, true),
            ),
            (
                &format!("name:tag@{D}"),
                r("docker.io", "library/name", Some("tag"), true),
            ),
            ("localhost/x", r("localhost", "x", Some("latest"), false)),
            (
                "localhost:5000/x_y/z__w/a-b--c/d.e:v1.0-rc_1",
                r(
                    "localhost:5000",
                    "x_y/z__w/a-b--c/d.e",
                    Some("v1.0-rc_1"),
                    false,
                ),
            ),
            (
                "[::1]:5000/foo:bar",
                r("[::1]:5000", "foo", Some("bar"), false),
            ),
            (
                "Example.COM/foo",
                r("Example.COM", "foo", Some("latest"), false),
            ),
            (
                "ghcr.io/a/b/c/d:_x",
                r("ghcr.io", "a/b/c/d", Some("_x"), false),
            ),
        ];
        for (input, want) in cases {
            let got: ImageReference = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(got, want, "{input}");
            // Display round-trips.
            let again: ImageReference = got.to_string().parse().unwrap();
            assert_eq!(again, got, "{input} -> {got}");
        }
    }

    #[test]
    fn rejects_bad_references() {
        let long_repo = format!("host.example/{}", "a".repeat(256));
        let long_tag = format!("a:{}", "t".repeat(129));
        let huge = "a".repeat(2000);
        type Check = fn(&ReferenceError) -> bool;
        let cases: Vec<(&str, Check)> = vec![
            ("", |e| matches!(e, ReferenceError::Empty)),
            ("Ubuntu", |e| {
                matches!(e, ReferenceError::InvalidRepository { .. })
            }),
            ("docker.io/Library/ubuntu", |e| {
                matches!(e, ReferenceError::InvalidRepository { .. })
            }),
            ("a b", |e| {
                matches!(e, ReferenceError::InvalidRepository { .. })
            }),
            ("a//b", |e| {
                matches!(e, ReferenceError::InvalidRepository { .. })
            }),
            ("host.example/", |e| {
                matches!(e, ReferenceError::InvalidRepository { .. })
            }),
            ("host.example/-a", |e| {
                matches!(e, ReferenceError::InvalidRepository { .. })
            }),
            ("host.example/a..b", |e| {
                matches!(e, ReferenceError::InvalidRepository { .. })
            }),
            ("host.example/a___b", |e| {
                matches!(e, ReferenceError::InvalidRepository { .. })
            }),
            ("a:", |e| matches!(e, ReferenceError::InvalidTag { .. })),
            ("a:-x", |e| matches!(e, ReferenceError::InvalidTag { .. })),
            ("a:x$y", |e| matches!(e, ReferenceError::InvalidTag { .. })),
            (&long_tag, |e| {
                matches!(e, ReferenceError::InvalidTag { .. })
            }),
            ("a@sha256:abc", |e| {
                matches!(e, ReferenceError::InvalidDigest { .. })
            }),
            ("a@", |e| matches!(e, ReferenceError::InvalidDigest { .. })),
            ("a@md5:00", |e| {
                matches!(e, ReferenceError::InvalidDigest { .. })
            }),
            ("host_x.example:5000/a", |e| {
                matches!(e, ReferenceError::InvalidRegistry { .. })
            }),
            ("host.example:99999/a", |e| {
                matches!(e, ReferenceError::InvalidRegistry { .. })
            }),
            ("host.example:/a", |e| {
                matches!(e, ReferenceError::InvalidRegistry { .. })
            }),
            ("[zz]:5/a", |e| {
                matches!(e, ReferenceError::InvalidRegistry { .. })
            }),
            (&long_repo, |e| {
                matches!(e, ReferenceError::InvalidRepository { .. })
            }),
            (&huge, |e| matches!(e, ReferenceError::TooLong { .. })),
        ];
        for (input, check) in cases {
            match input.parse::<ImageReference>() {
                Ok(r) => panic!("{input:?} accepted as {r:?}"),
                Err(e) => {
                    assert!(check(&e), "{input:?}: unexpected error {e:?}");
                    assert!(!e.to_string().is_empty());
                }
            }
        }
    }

    #[test]
    fn api_host_maps_docker_hub_only() {
        let hub: ImageReference = "ubuntu".parse().unwrap();
        assert_eq!(hub.api_host(), "registry-1.docker.io");
        assert_eq!(hub.to_string(), "docker.io/library/ubuntu:latest");
        let local: ImageReference = "127.0.0.1:5000/a".parse().unwrap();
        assert_eq!(local.api_host(), "127.0.0.1:5000");
        assert_eq!(local.manifest_reference(), "latest");
        let pinned = local.with_digest(D.parse().unwrap());
        assert_eq!(pinned.manifest_reference(), D);
    }

    #[test]
    fn serde_round_trip() {
        let r: ImageReference = "localhost:5000/x:y".parse().unwrap();
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, "\"localhost:5000/x:y\"");
        assert_eq!(serde_json::from_str::<ImageReference>(&json).unwrap(), r);
        assert!(serde_json::from_str::<ImageReference>("\"A\"").is_err());
    }
}
