//! The documentation (README.md and docs/*.md) names only what exists, so it cannot rot
//! silently:
//!
//! - every relative link points at a file or directory of the repository, and its `#anchor`
//!   at a heading of the page; every docs page is reachable from the README by links;
//! - every `shoald ...` and `shoal-registry-ext ...` in code names subcommands and `--options`
//!   the debug binaries' `--help` lists (both built by `cargo test --workspace`);
//! - every repository path in code (`plugin/src/mirror.rs`, `systemd/shoald.service`,
//!   `shoald.toml.example`) exists;
//! - every metric (`shoal_...`) is registered under that name somewhere in the crates' sources,
//!   and every environment variable (`SHOAL_...`, `SHOALD_...`) is read by a source or script;
//! - every configuration section and key (`[swarm] enabled`, `mirror.hosts_dir`, the keys of
//!   ```toml blocks) is one of `shoald.toml.example` or `registry-ext.toml.example`, commented
//!   out or not (the crates' config tests load the examples, and the structs refuse unknown
//!   keys);
//! - the push hook's config.yml snippet is what the push hook test runs with
//!   (`registry::notifications_yaml`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use shoal_integration::docs::markdown::{self, Page};
use shoal_integration::docs::names::{
    example_keys, is_word, metric_names, parse_help, table_name, words,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate is in the workspace")
        .to_path_buf()
}

/// README.md and docs/*.md, read: (path relative to the repository, text, parsed).
fn pages() -> Result<Vec<(PathBuf, String, Page)>> {
    let root = repo();
    let mut paths = vec![PathBuf::from("README.md")];
    let mut docs: Vec<PathBuf> = fs::read_dir(root.join("docs"))
        .context("reading docs/")?
        .map(|e| e.map(|e| Path::new("docs").join(e.file_name())))
        .collect::<std::io::Result<_>>()?;
    docs.retain(|p| p.extension().is_some_and(|e| e == "md"));
    docs.sort();
    paths.extend(docs);
    paths
        .into_iter()
        .map(|p| {
            let text = fs::read_to_string(root.join(&p))
                .with_context(|| format!("reading {}", p.display()))?;
            let page = markdown::parse(&text);
            Ok((p, text, page))
        })
        .collect()
}

/// Every failure, one line each, so one run lists them all.
fn report(problems: Vec<String>) -> Result<()> {
    ensure!(
        problems.is_empty(),
        "{} problem(s) in the documentation:\n{}",
        problems.len(),
        problems.join("\n")
    );
    Ok(())
}

/// `a/../b` and `./` folded, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn links_point_at_files_and_headings() -> Result<()> {
    let root = repo();
    let pages = pages()?;
    let anchors: BTreeMap<PathBuf, &Vec<String>> = pages
        .iter()
        .map(|(p, _, page)| (p.clone(), &page.anchors))
        .collect();
    let mut problems = Vec::new();
    let mut linked: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for (path, _, page) in &pages {
        for (line, target) in &page.links {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = match target.split_once('#') {
                Some((file, anchor)) => (file, Some(anchor)),
                None => (target.as_str(), None),
            };
            let at = format!("{}:{line}: link {target:?}", path.display());
            let resolved = if file.is_empty() {
                path.clone()
            } else {
                normalize(&path.parent().unwrap_or(Path::new("")).join(file))
            };
            if !root.join(&resolved).exists() {
                problems.push(format!("{at}: {} does not exist", resolved.display()));
                continue;
            }
            linked
                .entry(path.clone())
                .or_default()
                .insert(resolved.clone());
            if let Some(anchor) = anchor {
                match anchors.get(&resolved) {
                    Some(list) if list.iter().any(|a| a == anchor) => {}
                    Some(list) => problems.push(format!(
                        "{at}: no heading of {} has that anchor (it has {list:?})",
                        resolved.display()
                    )),
                    None => problems.push(format!(
                        "{at}: anchors are checked only in README.md and docs/*.md"
                    )),
                }
            }
        }
    }
    // Every page is reachable from the README.
    let mut reached = BTreeSet::from([PathBuf::from("README.md")]);
    let mut queue = vec![PathBuf::from("README.md")];
    while let Some(page) = queue.pop() {
        for next in linked.get(&page).into_iter().flatten() {
            if reached.insert(next.clone()) {
                queue.push(next.clone());
            }
        }
    }
    for (path, _, _) in &pages {
        if !reached.contains(path) {
            problems.push(format!(
                "{}: no link leads here from README.md",
                path.display()
            ));
        }
    }
    report(problems)
}

/// Inline code and code-block lines of every page: (where, text).
fn code(pages: &[(PathBuf, String, Page)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, _, page) in pages {
        for (line, span) in &page.spans {
            out.push((format!("{}:{line}", path.display()), span.clone()));
        }
        for block in &page.blocks {
            for (i, text) in block.text.lines().enumerate() {
                out.push((
                    format!("{}:{}", path.display(), block.line + 1 + i),
                    text.to_string(),
                ));
            }
        }
    }
    out
}

/// A binary's subcommands and options, from `--help` of each command path, cached.
struct Cli {
    binary: PathBuf,
    helps: BTreeMap<Vec<String>, (BTreeSet<String>, BTreeSet<String>)>,
}

impl Cli {
    fn new(binary: PathBuf) -> Self {
        Self {
            binary,
            helps: BTreeMap::new(),
        }
    }

    /// (subcommands, `--options`) of `BINARY PATH...`.
    fn help(&mut self, path: &[String]) -> Result<&(BTreeSet<String>, BTreeSet<String>)> {
        if !self.helps.contains_key(path) {
            let out = Command::new(&self.binary)
                .args(path)
                .arg("--help")
                .output()
                .with_context(|| format!("running {}", self.binary.display()))?;
            ensure!(
                out.status.success(),
                "{} {} --help: {}",
                self.binary.display(),
                path.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            let help = parse_help(&String::from_utf8_lossy(&out.stdout));
            self.helps.insert(path.to_vec(), help);
        }
        Ok(&self.helps[path])
    }
}

/// Checks one use of `program` (the tokens after its name).
fn check_use(cli: &mut Cli, name: &str, args: &[&str], at: &str) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut path: Vec<String> = Vec::new();
    let mut rest = args;
    while let Some((&token, tail)) = rest.split_first() {
        let (commands, _) = cli.help(&path)?.clone();
        if commands.is_empty() || !is_word(token) {
            break;
        }
        let words: Vec<&str> = token.split('|').collect();
        for word in &words {
            if !commands.contains(*word) {
                problems.push(format!(
                    "{at}: `{name} {}{word}`: no such subcommand (it has {commands:?})",
                    prefix(&path)
                ));
            }
        }
        rest = tail;
        if words.len() > 1 || !commands.contains(token) {
            break;
        }
        path.push(token.to_string());
    }
    let (_, options) = cli.help(&path)?.clone();
    for token in rest {
        if matches!(*token, "&&" | ";" | "#" | "||") {
            break;
        }
        let option = token
            .trim_start_matches(['[', '('])
            .split(['=', ']', ')', ',', '`', '\''])
            .next()
            .unwrap_or("");
        if option.starts_with("--") && option.len() > 2 && !options.contains(option) {
            problems.push(format!(
                "{at}: `{name} {}{option}`: no such option (it has {options:?})",
                prefix(&path)
            ));
        }
    }
    Ok(problems)
}

fn prefix(path: &[String]) -> String {
    path.iter().map(|p| format!("{p} ")).collect()
}

#[test]
fn commands_and_options_exist() -> Result<()> {
    let pages = pages()?;
    let mut clis = [
        ("shoald", Cli::new(shoal_integration::cri::shoald_binary()?)),
        (
            "shoal-registry-ext",
            Cli::new(shoal_integration::cluster::registry_ext_binary()?),
        ),
    ];
    let mut problems = Vec::new();
    let mut uses = 0;
    for (at, text) in code(&pages) {
        let tokens: Vec<&str> = text.split_whitespace().collect();
        for (i, token) in tokens.iter().enumerate() {
            let token = token.trim_start_matches(['(', '`', '"']);
            // `cargo build -p shoal-registry-ext` names the package, not the program.
            if i > 0 && matches!(tokens[i - 1], "-p" | "--package") {
                continue;
            }
            for (name, cli) in clis.iter_mut() {
                if token == *name {
                    uses += 1;
                    problems.extend(check_use(cli, name, &tokens[i + 1..], &at)?);
                }
            }
        }
    }
    ensure!(
        uses > 20,
        "only {uses} commands found in the docs: is the parser broken?"
    );
    report(problems)
}

#[test]
fn repository_paths_exist() -> Result<()> {
    let root = repo();
    let pages = pages()?;
    // The repository's top-level directories (a path in code starting with one is checked)
    // and its top-level example files.
    let mut dirs = BTreeSet::new();
    for entry in fs::read_dir(&root)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_dir()
            && name != "target"
            && (name == ".ci" || !name.starts_with('.'))
        {
            dirs.insert(name);
        }
    }
    let mut problems = Vec::new();
    let mut checked = 0;
    for (at, text) in code(&pages) {
        for word in words(&text) {
            let first = word.split('/').next().unwrap_or("");
            let is_path = word.contains('/') && dirs.contains(first);
            let is_example = !word.contains('/') && word.ends_with(".toml.example");
            if !(is_path || is_example) || word.contains(['*', '$', '…']) {
                continue;
            }
            checked += 1;
            if !root.join(word).exists() {
                problems.push(format!("{at}: {word} does not exist"));
            }
        }
    }
    ensure!(
        checked > 50,
        "only {checked} paths found in the docs: is the parser broken?"
    );
    report(problems)
}

/// Every file under `dir` whose name ends with one of `extensions`, read.
fn sources(dir: &Path, extensions: &[&str], out: &mut String) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_dir() {
            if name != "target" && !name.starts_with('.') {
                sources(&path, extensions, out)?;
            }
        } else if extensions.iter().any(|e| name.ends_with(e)) {
            out.push_str(&fs::read_to_string(&path)?);
            out.push('\n');
        }
    }
    Ok(())
}

#[test]
fn metrics_and_environment_variables_exist() -> Result<()> {
    let root = repo();
    let pages = pages()?;
    let mut rust = String::new();
    for krate in ["p2p", "plugin", "registry-ext"] {
        sources(&root.join(krate).join("src"), &[".rs"], &mut rust)?;
    }
    let mut everything = String::new();
    sources(&root, &[".rs", ".sh", ".py"], &mut everything)?;
    let mut problems = Vec::new();
    let (mut metrics, mut variables) = (0, 0);
    for (at, text) in code(&pages) {
        for name in metric_names(&text) {
            metrics += 1;
            // prometheus-client adds `_total` to counters (registered without it); a
            // histogram's series add `_bucket`, `_sum` and `_count` to its name.
            let registered = |n: &str| rust.contains(&format!("\"{n}\""));
            let base = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            // `shoal_upload_*`: a family, named by its prefix.
            let family = name.ends_with('_') && rust.contains(&format!("\"{name}"));
            if !family && !registered(&name) && !registered(base) {
                problems.push(format!(
                    "{at}: metric {name} is not registered in p2p, plugin or registry-ext"
                ));
            }
        }
        for word in words(&text) {
            let word = word.trim_start_matches('$');
            if (word.starts_with("SHOAL_") || word.starts_with("SHOALD_"))
                && word
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                variables += 1;
                if !everything.contains(word) {
                    problems.push(format!("{at}: {word} is read by no source or script"));
                }
            }
        }
    }
    ensure!(
        metrics > 50 && variables > 10,
        "only {metrics} metrics and {variables} variables found in the docs: is the parser broken?"
    );
    report(problems)
}

/// Names that look like shoal's configuration but are containerd's, or the keys of a
/// Kubernetes TLS Secret (`tls.crt`, `tls.key`).
const CONTAINERD_KEYS: &[&str] = &["registry.mirrors", "tls.crt", "tls.key"];

#[test]
fn configuration_keys_exist() -> Result<()> {
    let root = repo();
    let pages = pages()?;
    let (mut sections, mut keys) = (BTreeSet::new(), BTreeSet::new());
    for example in ["shoald.toml.example", "registry-ext.toml.example"] {
        example_keys(
            &fs::read_to_string(root.join(example))?,
            &mut sections,
            &mut keys,
        );
    }
    // Only names under shoal's own top-level sections are checked (containerd's config has
    // `plugins`, `proxy_plugins`, `host`, ...).
    let tops: BTreeSet<String> = sections
        .iter()
        .map(|s| s.split('.').next().unwrap_or("").to_string())
        .collect();
    let ours = |name: &str| tops.contains(name.split('.').next().unwrap_or(""));
    let mut problems = Vec::new();
    let mut checked = 0;
    let mut check = |at: &str, name: String, is_section: bool, problems: &mut Vec<String>| {
        if !ours(&name) || CONTAINERD_KEYS.contains(&name.as_str()) {
            return;
        }
        checked += 1;
        let known = if is_section { &sections } else { &keys };
        if !known.contains(&name) {
            let what = if is_section { "section" } else { "key" };
            problems.push(format!(
                "{at}: configuration {what} {name} is in neither shoald.toml.example nor \
                 registry-ext.toml.example"
            ));
        }
    };
    for (path, _, page) in &pages {
        for (line, span) in &page.spans {
            let at = format!("{}:{line}", path.display());
            if let Some(inner) = span.strip_prefix('[').filter(|s| !s.starts_with('[')) {
                // `[section]`, `[section] key`, `[section] key = value`
                let Some((name, rest)) = inner.split_once(']') else {
                    continue;
                };
                let section = table_name(name);
                check(&at, section.clone(), true, &mut problems);
                if let Some(key) = rest
                    .split_whitespace()
                    .next()
                    .filter(|k| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
                {
                    check(&at, format!("{section}.{key}"), false, &mut problems);
                }
            } else if span.contains('.')
                && span
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.')
                && !span.starts_with('.')
                && !span.ends_with('.')
            {
                // `section.key`
                check(&at, span.clone(), false, &mut problems);
            }
        }
        for block in page.blocks.iter().filter(|b| b.info == "toml") {
            let (mut block_sections, mut block_keys) = (BTreeSet::new(), BTreeSet::new());
            example_keys(&block.text, &mut block_sections, &mut block_keys);
            let at = format!("{}:{}", path.display(), block.line);
            for section in block_sections {
                check(&at, section, true, &mut problems);
            }
            for key in block_keys {
                check(&at, key, false, &mut problems);
            }
        }
    }
    ensure!(
        checked > 40,
        "only {checked} configuration names found in the docs: is the parser broken?"
    );
    report(problems)
}

#[test]
fn the_push_hook_snippet_is_what_the_test_runs() -> Result<()> {
    let pages = pages()?;
    let (_, _, page) = pages
        .iter()
        .find(|(p, _, _)| p == Path::new("docs/registry-side.md"))
        .context("docs/registry-side.md")?;
    let block = page
        .blocks
        .iter()
        .find(|b| b.info == "yaml" && b.text.starts_with("notifications:"))
        .context("no ```yaml block with the registry's notifications in docs/registry-side.md")?;
    let shown: String = block
        .text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let tested = shoal_integration::registry::notifications_yaml(
        "http://127.0.0.1:7081/v1/registry-events",
        "<the same token>",
    );
    ensure!(
        shown == tested,
        "docs/registry-side.md shows\n{shown}\nbut integration/tests/push_hook.rs runs with\n{tested}"
    );
    Ok(())
}
