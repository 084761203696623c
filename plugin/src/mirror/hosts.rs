//! `shoald hosts`: containerd's `hosts.toml` files that put shoald's mirror first.
//!
//! One file per registry of the configuration (`[registry.hosts]` keys and
//! `mirror.registries`) plus `_default` (every other registry), at
//! `<dir>/<registry>/hosts.toml`. An existing file is kept: its `server`, its other host
//! entries and its comments stay; only shoald's entry is added (or replaced) and moved first,
//! so containerd tries the mirror first and the other hosts (last the `server`) after it.
//! Running it again changes nothing.

use std::path::{Path, PathBuf};

use toml_edit::{Array, DocumentMut, Item, Table};

use super::MirrorError;
use crate::config::Config;

/// The `_default` namespace: registries without a directory of their own.
pub const DEFAULT_NAMESPACE: &str = "_default";

/// The mirror's URL as a hosts.toml host key.
pub fn mirror_url(config: &Config) -> String {
    format!("http://{}", config.mirror.listen)
}

/// The registry namespaces to write, `_default` last.
pub fn namespaces(config: &Config) -> Vec<String> {
    let mut out: Vec<String> = config
        .registry
        .hosts
        .keys()
        .chain(&config.mirror.registries)
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out.push(DEFAULT_NAMESPACE.into());
    out
}

/// The `server` of `registry`'s file when it has none yet (`None` for `_default`: containerd
/// then uses the registry itself, over HTTPS).
fn server_of(config: &Config, registry: &str) -> Option<String> {
    if registry == DEFAULT_NAMESPACE {
        return None;
    }
    let plain = config.registry.host(registry).is_some_and(|h| h.plain_http);
    let host = if registry == shoal_p2p::reference::DEFAULT_REGISTRY {
        shoal_p2p::reference::DOCKER_HUB_API_HOST
    } else {
        registry
    };
    Some(format!("{}://{host}", if plain { "http" } else { "https" }))
}

/// Why an existing hosts.toml cannot take the mirror.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("not TOML: {0}")]
    Toml(#[from] toml_edit::TomlError),
    #[error("`host` is not a table")]
    HostNotTable,
}

/// `existing` (a hosts.toml's text, or `None`) with `mirror` as its first host, able to pull
/// and resolve; `server` is set when the file has none.
pub fn merge(
    existing: Option<&str>,
    server: Option<&str>,
    mirror: &str,
) -> Result<String, HostsError> {
    let mut doc: DocumentMut = existing.unwrap_or_default().parse()?;
    if let (None, Some(server)) = (doc.get("server"), server) {
        doc.insert("server", toml_edit::value(server));
    }
    let hosts = doc
        .entry("host")
        .or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        })
        .as_table_mut()
        .ok_or(HostsError::HostNotTable)?;
    let others: Vec<(String, Item)> = hosts
        .iter()
        .filter(|(k, _)| *k != mirror)
        .map(|(k, v)| (k.to_owned(), v.clone()))
        .collect();
    hosts.clear();
    let mut ours = Table::new();
    let mut capabilities = Array::new();
    capabilities.push("pull");
    capabilities.push("resolve");
    ours.insert("capabilities", toml_edit::value(capabilities));
    ours.decor_mut()
        .set_prefix("\n# shoald's mirror (`shoald hosts`): layers through the swarm\n");
    hosts.insert(mirror, Item::Table(ours));
    for (k, v) in others {
        hosts.insert(&k, v);
    }
    // Tables are written in position order: number them in the order they are now in.
    let mut next = 0;
    renumber(doc.as_table_mut(), &mut next);
    Ok(doc.to_string())
}

fn renumber(table: &mut Table, next: &mut usize) {
    for (_, item) in table.iter_mut() {
        if let Some(t) = item.as_table_mut() {
            t.set_position(*next);
            *next += 1;
            renumber(t, next);
        }
    }
}

/// Writes (or, with `print`, only returns) every hosts.toml for `config` under `dir`;
/// returns each path with its content.
pub fn write_all(
    config: &Config,
    dir: &Path,
    print: bool,
) -> Result<Vec<(PathBuf, String)>, MirrorError> {
    let mirror = mirror_url(config);
    let mut out = Vec::new();
    for ns in namespaces(config) {
        let path = dir.join(&ns).join("hosts.toml");
        let io_err = |source| MirrorError::HostsIo {
            path: path.clone(),
            source,
        };
        let existing = match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(e)),
        };
        let text = merge(
            existing.as_deref(),
            server_of(config, &ns).as_deref(),
            &mirror,
        )
        .map_err(|source| MirrorError::HostsToml {
            path: path.clone(),
            source,
        })?;
        if !print && existing.as_deref() != Some(text.as_str()) {
            let tmp = path.with_extension("toml.shoal-tmp");
            std::fs::create_dir_all(dir.join(&ns))
                .and_then(|()| std::fs::write(&tmp, &text))
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(io_err)?;
        }
        out.push((path, text));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIRROR: &str = "http://127.0.0.1:7075";

    fn hosts_order(text: &str) -> Vec<String> {
        let doc: toml::Table = text.parse().unwrap();
        // containerd takes the hosts in file order.
        let mut keys: Vec<(usize, String)> = doc["host"]
            .as_table()
            .unwrap()
            .keys()
            .map(|k| (text.find(&format!("[host.\"{k}\"]")).unwrap(), k.clone()))
            .collect();
        keys.sort();
        keys.into_iter().map(|(_, k)| k).collect()
    }

    #[test]
    fn a_new_file_has_the_server_and_the_mirror() {
        let text = merge(None, Some("https://registry.example.com"), MIRROR).unwrap();
        let doc: toml::Table = text.parse().unwrap();
        assert_eq!(doc["server"].as_str(), Some("https://registry.example.com"));
        let caps = &doc["host"][MIRROR]["capabilities"];
        assert_eq!(caps.as_array().unwrap().len(), 2);
        assert_eq!(hosts_order(&text), vec![MIRROR]);
        let default = merge(None, None, MIRROR).unwrap();
        assert!(!default.contains("server"), "{default}");
    }

    #[test]
    fn existing_entries_stay_after_the_mirror_and_reruns_change_nothing() {
        let existing = "# ours\nserver = \"http://10.0.0.1:5000\"\n\n\
                        [host.\"http://10.0.0.9:5000\"]\n  capabilities = [\"pull\"]\n  skip_verify = true\n\n\
                        [host.\"http://10.0.0.1:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n";
        let text = merge(Some(existing), Some("https://ignored"), MIRROR).unwrap();
        let doc: toml::Table = text.parse().unwrap();
        assert_eq!(
            doc["server"].as_str(),
            Some("http://10.0.0.1:5000"),
            "{text}"
        );
        assert_eq!(
            hosts_order(&text),
            vec![MIRROR, "http://10.0.0.9:5000", "http://10.0.0.1:5000"],
            "{text}"
        );
        assert_eq!(
            doc["host"]["http://10.0.0.9:5000"]["skip_verify"].as_bool(),
            Some(true)
        );
        assert!(text.contains("# ours"), "{text}");
        assert_eq!(
            merge(Some(&text), Some("https://ignored"), MIRROR).unwrap(),
            text
        );
    }

    #[test]
    fn an_old_mirror_entry_is_replaced_and_moved_first() {
        let existing = "[host.\"http://10.0.0.9:5000\"]\n  capabilities = [\"pull\"]\n\
                        [host.\"http://127.0.0.1:7075\"]\n  capabilities = [\"push\"]\n";
        let text = merge(Some(existing), None, MIRROR).unwrap();
        assert_eq!(hosts_order(&text), vec![MIRROR, "http://10.0.0.9:5000"]);
        let doc: toml::Table = text.parse().unwrap();
        let caps: Vec<&str> = doc["host"][MIRROR]["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(caps, ["pull", "resolve"]);
    }

    #[test]
    fn a_broken_file_is_an_error_not_overwritten() {
        assert!(merge(Some("server = ["), None, MIRROR).is_err());
        assert!(merge(Some("host = 3"), None, MIRROR).is_err());
    }

    #[test]
    fn writes_one_file_per_registry_and_default_idempotently() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse(
            "[registry.hosts.\"10.0.0.1:5000\"]\nplain_http = true\n\
             [mirror]\nregistries = [\"docker.io\"]\n",
            Path::new("x.toml"),
        )
        .unwrap();
        let written = write_all(&config, dir.path(), false).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|(p, _)| p.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "10.0.0.1:5000/hosts.toml",
                "docker.io/hosts.toml",
                "_default/hosts.toml"
            ]
        );
        let plain = std::fs::read_to_string(dir.path().join("10.0.0.1:5000/hosts.toml")).unwrap();
        assert!(
            plain.contains("server = \"http://10.0.0.1:5000\""),
            "{plain}"
        );
        let hub = std::fs::read_to_string(dir.path().join("docker.io/hosts.toml")).unwrap();
        assert!(
            hub.contains("server = \"https://registry-1.docker.io\""),
            "{hub}"
        );
        let again = write_all(&config, dir.path(), false).unwrap();
        assert_eq!(again, written);
        // --print writes nothing.
        let other = tempfile::tempdir().unwrap();
        write_all(&config, other.path(), true).unwrap();
        assert!(std::fs::read_dir(other.path()).unwrap().next().is_none());
    }
}
