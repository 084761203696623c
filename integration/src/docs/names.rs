//! The names the documentation uses, read from the texts that define them: clap's `--help`
//! (subcommands and options), the configuration examples (sections and keys), and the code
//! of the pages themselves (words, metric names). Pure; `integration/tests/docs.rs` does the
//! reading and the checks.

use std::collections::BTreeSet;

/// clap's help text: the names under "Commands:" and every `--long` under "Options:".
pub fn parse_help(help: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut commands, mut options) = (BTreeSet::new(), BTreeSet::new());
    let mut section = "";
    for line in help.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            section = line;
            continue;
        }
        let trimmed = line.trim_start();
        if section == "Commands:" && line.len() - trimmed.len() == 2 {
            if let Some(name) = trimmed.split_whitespace().next() {
                commands.insert(name.to_string());
            }
        }
        if section.ends_with("Options:") && trimmed.starts_with('-') {
            for word in trimmed.split([' ', ',', '=', '<', '[']) {
                if word.starts_with("--") && word.len() > 2 {
                    options.insert(word.to_string());
                }
            }
        }
    }
    (commands, options)
}

/// A word that reads as a subcommand (or `a|b` alternatives of them).
pub fn is_word(token: &str) -> bool {
    !token.is_empty()
        && token.split('|').all(|w| {
            w.starts_with(|c: char| c.is_ascii_lowercase())
                && w.chars().all(|c| c.is_ascii_lowercase() || c == '-')
        })
}

/// Words of a code text, split where a path or name cannot continue.
pub fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| c.is_whitespace() || "()[]{},;`'\"|<>=".contains(c))
        .map(|w| w.trim_end_matches([':', '.']))
        .filter(|w| !w.is_empty())
}

/// The metric names a code text names: `shoal_x_total{label}` is `shoal_x_total`, and
/// `shoal_a_{b,c}_total` is `shoal_a_b_total` and `shoal_a_c_total`.
pub fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("shoal_") {
        let after = &rest[start..];
        let preceded = rest[..start].chars().next_back();
        let name_len = after
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(after.len());
        let mut stems = vec![after[..name_len].to_string()];
        let mut tail = &after[name_len..];
        // `_{a,b}_more`: alternatives inside the name.
        if stems[0].ends_with('_') && tail.starts_with('{') {
            if let Some(close) = tail.find('}') {
                let alternatives: Vec<&str> = tail[1..close].split(',').collect();
                let more = &tail[close + 1..];
                let more_len = more
                    .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                    .unwrap_or(more.len());
                stems = alternatives
                    .iter()
                    .map(|a| format!("{}{a}{}", stems[0], &more[..more_len]))
                    .collect();
                tail = &more[more_len..];
            }
        }
        let is_name = !preceded.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            && !tail.starts_with("::")
            && !stems[0].starts_with("shoal_p2p");
        if is_name {
            names.extend(stems);
        }
        rest = tail;
    }
    names
}

/// Sections and `section.key`s of a configuration example, commented-out ones included;
/// quoted table names (`[registry.hosts."HOST"]`) read as `registry.hosts.*`.
pub fn example_keys(text: &str, sections: &mut BTreeSet<String>, keys: &mut BTreeSet<String>) {
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim_start_matches(['#', ' ']);
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            if !name.is_empty() && !line.starts_with("[[") {
                section = table_name(name);
                // `[a.b.c]` defines `[a]` and `[a.b]` too.
                let mut prefix = String::new();
                for part in section.split('.') {
                    if !prefix.is_empty() {
                        prefix.push('.');
                    }
                    prefix.push_str(part);
                    sections.insert(prefix.clone());
                }
                continue;
            }
        }
        if let Some((key, _)) = line.split_once('=') {
            let key = key.trim();
            if !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                keys.insert(if section.is_empty() {
                    key.to_string()
                } else {
                    format!("{section}.{key}")
                });
            }
        }
    }
}

/// `registry.hosts."HOST"` as `registry.hosts.*`.
pub fn table_name(name: &str) -> String {
    let mut out = Vec::new();
    let mut rest = name.trim();
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').map_or(quoted.len(), |e| e + 1);
            out.push("*".to_string());
            rest = quoted.get(end..).unwrap_or("");
        } else {
            let end = rest.find('.').unwrap_or(rest.len());
            out.push(rest[..end].to_string());
            rest = &rest[end..];
        }
        rest = rest.trim_start_matches('.');
    }
    out.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_commands_and_options() {
        let help = "shoal node daemon\n\nUsage: shoald [OPTIONS] <COMMAND>\n\nCommands:\n  \
                    unpack\n          Stream every layer\n  containerd-config  Write it\n\n\
                    Options:\n      --config <CONFIG>\n          shoald's file [env: X=]\n  \
                    -h, --help\n          Print help\n      --dry-run=<WHEN>  x\n";
        let (commands, options) = parse_help(help);
        assert_eq!(
            commands,
            BTreeSet::from(["unpack".into(), "containerd-config".into()])
        );
        assert_eq!(
            options,
            BTreeSet::from(["--config".into(), "--help".into(), "--dry-run".into()])
        );
    }

    #[test]
    fn subcommand_words() {
        assert!(is_word("containerd-config"));
        assert!(is_word("submit|status|cancel|jobs"));
        assert!(!is_word("0.1.0"));
        assert!(!is_word("IMAGE"));
        assert!(!is_word("--print"));
        assert!(!is_word("a||b"));
    }

    #[test]
    fn words_split_where_names_end() {
        let w: Vec<&str> =
            words("(`plugin/src/mirror.rs`), [--dir DIR] x=\"y.toml.example\".").collect();
        assert_eq!(
            w,
            [
                "plugin/src/mirror.rs",
                "--dir",
                "DIR",
                "x",
                "y.toml.example"
            ]
        );
    }

    #[test]
    fn metric_names_with_labels_and_alternatives() {
        assert_eq!(
            metric_names("shoal_component_up{component} == 0"),
            ["shoal_component_up"]
        );
        assert_eq!(
            metric_names("`shoal_mirror_access_{cached,upstream}_total`, shoal_x_seconds"),
            [
                "shoal_mirror_access_cached_total",
                "shoal_mirror_access_upstream_total",
                "shoal_x_seconds"
            ]
        );
        assert!(metric_names("shoal_p2p::swarm::planner").is_empty());
        assert!(metric_names("shoal_p2p").is_empty());
        assert!(metric_names("libshoal_x").is_empty());
    }

    #[test]
    fn example_keys_include_commented_ones() {
        let (mut sections, mut keys) = (BTreeSet::new(), BTreeSet::new());
        example_keys(
            "top = 1\n[registry]\nretries = 3\n# [registry.hosts.\"r.example\"]  # example\n\
             # username = \"u\"   # example\n# \"\" = off, 0 = unlimited\n[[array]]\n",
            &mut sections,
            &mut keys,
        );
        assert_eq!(
            sections,
            BTreeSet::from([
                "registry".into(),
                "registry.hosts".into(),
                "registry.hosts.*".into()
            ])
        );
        assert_eq!(
            keys,
            BTreeSet::from([
                "top".into(),
                "registry.retries".into(),
                "registry.hosts.*.username".into()
            ])
        );
    }

    #[test]
    fn quoted_table_names() {
        assert_eq!(table_name("registry.hosts.\"HOST\""), "registry.hosts.*");
        assert_eq!(table_name("a.\"b.c\".d"), "a.*.d");
        assert_eq!(table_name("swarm.tls"), "swarm.tls");
    }
}
