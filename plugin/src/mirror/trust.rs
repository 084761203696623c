//! Which registries the mirror serves blobs for from the node's cache and swarm
//! (docs/security.md "Mirror trust", DESIGN "Security and bad input"): those the operator configured
//! (`[registry.hosts]`, `mirror.registries`, `mirror.default_upstream`), and every other
//! registry (containerd's `_default` hosts.toml) only when `mirror.serve_other_registries`
//! says so. Blob requests for any other registry pass through to it untouched: no access
//! check, nothing from the cache or the swarm.
//!
//! This is one of three conditions; the others are the registry's own access check for the
//! request's credentials ([`super::access`]) and the blob being known from that very
//! registry ([`shoal_p2p::source::Reader::Client`]).

use std::collections::BTreeSet;

use shoal_p2p::registry::ClientConfig;

use crate::config::MirrorSection;

/// The registries served from the cache and the swarm.
#[derive(Debug, Clone)]
pub struct Trust {
    configured: BTreeSet<String>,
    others: bool,
}

impl Trust {
    /// The registries of `registry` (its hosts) and `section`.
    pub fn new(section: &MirrorSection, registry: &ClientConfig) -> Self {
        let configured = registry
            .hosts
            .keys()
            .chain(&section.registries)
            .chain(Some(&section.default_upstream).filter(|h| !h.is_empty()))
            .cloned()
            .collect();
        Self {
            configured,
            others: section.serve_other_registries,
        }
    }

    /// Whether blobs of `registry` may be served from the cache and the swarm.
    pub fn serves(&self, registry: &str) -> bool {
        self.others || self.configured.contains(registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_p2p::registry::HostConfig;

    #[test]
    fn only_configured_registries_unless_the_policy_says_every_one() {
        let mut registry = ClientConfig::default();
        registry
            .hosts
            .insert("10.0.0.1:5000".into(), HostConfig::default());
        let mut section = MirrorSection {
            registries: vec!["docker.io".into()],
            default_upstream: "registry.example".into(),
            ..Default::default()
        };
        let trust = Trust::new(&section, &registry);
        for host in ["10.0.0.1:5000", "docker.io", "registry.example"] {
            assert!(trust.serves(host), "{host}");
        }
        for host in ["10.0.0.1:5001", "10.0.0.1", "evil.example", "", "_default"] {
            assert!(!trust.serves(host), "{host}");
        }
        section.default_upstream.clear();
        assert!(!Trust::new(&section, &registry).serves("registry.example"));
        section.serve_other_registries = true;
        assert!(Trust::new(&section, &registry).serves("evil.example"));
        // Nothing configured, the default policy: nothing served.
        let none = Trust::new(&MirrorSection::default(), &ClientConfig::default());
        assert!(!none.serves("docker.io"));
    }
}
