//! The shipped containerd configurations (`config.toml.example` for containerd 1.6/1.7,
//! `config-v3.toml.example` for 2.x) are exactly what `shoald containerd-config` writes, say
//! what shoald needs, and agree with the systemd unit (`systemd/shoald.service`) and
//! shoald's own example configuration.

use std::path::{Path, PathBuf};
use std::process::Command;

use shoal_plugin::containerd::config::{apply, Options, PullPath};

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// A checked-in example: `header` run through `apply` for containerd `version`.
struct Example {
    file: &'static str,
    version: &'static str,
    header: &'static str,
}

const V2: Example = Example {
    file: "config.toml.example",
    version: "1.6.20",
    header: r#"# containerd 1.6 and 1.7 (config schema 2): what shoal needs in /etc/containerd/config.toml.
#
# Do not copy this file: on the node, run
#   shoald containerd-config
# It asks containerd for its version, adds these settings to /etc/containerd/config.toml
# while keeping everything else the file says, prints what it changed and why, and writes
# the containerd 2.x form (config-v3.toml.example) for containerd 2.x. `--print` shows the
# result without writing it. Then restart containerd (shoald.service running) and check
# with `shoald doctor`.
#
# This is that command's output for containerd 1.6.20 on an empty file: only the keys shoal
# needs, everything else keeps containerd's defaults. (plugin/tests/config_examples.rs
# checks that it still is.)
#
# shoald's registry mirror is configured in the hosts directory (config_path below), not
# here: `shoald hosts` writes e.g. /etc/containerd/certs.d/docker.io/hosts.toml:
#   server = "https://registry-1.docker.io"
#   [host."http://127.0.0.1:7075"]
#     capabilities = ["pull", "resolve"]
"#,
};

const V3: Example = Example {
    file: "config-v3.toml.example",
    version: "2.1.9",
    header: r#"# containerd 2.x (config schema 3): what shoal needs in /etc/containerd/config.toml.
#
# Do not copy this file: on the node, run
#   shoald containerd-config
# It asks containerd for its version, adds these settings to /etc/containerd/config.toml
# while keeping everything else the file says, and prints what it changed and why. A
# version = 2 file must be migrated first (`containerd config migrate`). `--print` shows the
# result without writing it. Then restart containerd (shoald.service running) and check with
# `shoald doctor`.
#
# This is that command's output for containerd 2.1.9 on an empty file, for CRI pulls through
# the transfer service (containerd's default from 2.1). `shoald containerd-config
# --local-pull` writes the local path instead: use_local_image_pull = true and
# disable_snapshot_annotations = false, no exports or unpack_config. containerd 2.0 always
# pulls locally; from 2.2 config_path has a default and is left out. (plugin/tests/
# config_examples.rs checks that this file is still that output.)
#
# shoald's registry mirror is configured in the hosts directory (config_path below), not
# here: `shoald hosts` writes e.g. /etc/containerd/certs.d/docker.io/hosts.toml:
#   server = "https://registry-1.docker.io"
#   [host."http://127.0.0.1:7075"]
#     capabilities = ["pull", "resolve"]
"#,
};

/// What `shoald containerd-config` writes for `e`.
fn generated(e: &Example) -> String {
    let opts = Options {
        version: e.version.parse().unwrap(),
        shoald_socket: "/run/shoal/shoald.sock".into(),
        pull_path: PullPath::Transfer,
        platform: "linux/amd64".into(),
    };
    apply(e.header, &opts).unwrap().text
}

/// With SHOAL_REGENERATE_EXAMPLES=1 the files are rewritten instead.
#[test]
fn examples_are_what_containerd_config_writes() {
    let regenerate = std::env::var_os("SHOAL_REGENERATE_EXAMPLES").is_some();
    for e in [V2, V3] {
        let want = generated(&e);
        let path = repo_file(e.file);
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if regenerate {
            if have != want {
                std::fs::write(&path, &want).unwrap();
                eprintln!("rewrote {}", e.file);
            }
            continue;
        }
        let first_difference = have
            .lines()
            .zip(want.lines())
            .position(|(a, b)| a != b)
            .map_or(have.lines().count().min(want.lines().count()), |i| i)
            + 1;
        assert!(
            have == want,
            "{} is not what `shoald containerd-config` writes for containerd {} (first \
             difference at line {first_difference}): if the code is right, regenerate it with \
             SHOAL_REGENERATE_EXAMPLES=1 cargo test -p shoal-plugin --test config_examples",
            e.file,
            e.version
        );
    }
}

fn example_toml(e: &Example) -> toml::Table {
    let text = std::fs::read_to_string(repo_file(e.file)).unwrap();
    text.parse()
        .unwrap_or_else(|err| panic!("{} is not TOML: {err}", e.file))
}

fn containerd_config() -> toml::Table {
    example_toml(&V2)
}

fn get<'a>(table: &'a toml::Table, path: &[&str]) -> &'a toml::Value {
    let (last, parents) = path.split_last().unwrap();
    let mut t = table;
    for key in parents {
        t = t
            .get(*key)
            .and_then(|v| v.as_table())
            .unwrap_or_else(|| panic!("no table {key:?} on the way to {path:?}"));
    }
    t.get(*last)
        .unwrap_or_else(|| panic!("no key {path:?} in the example"))
}

const CRI: &str = "io.containerd.grpc.v1.cri";
const IMAGES: &str = "io.containerd.cri.v1.images";
const TRANSFER: &str = "io.containerd.transfer.v1.local";

#[test]
fn containerd_config_registers_shoal() {
    let c = containerd_config();
    assert_eq!(get(&c, &["version"]).as_integer(), Some(2));
    assert_eq!(
        get(&c, &["proxy_plugins", "shoal", "type"]).as_str(),
        Some("snapshot")
    );
    assert_eq!(
        get(&c, &["proxy_plugins", "shoal", "address"]).as_str(),
        Some("/run/shoal/shoald.sock")
    );
    assert_eq!(
        get(&c, &["plugins", CRI, "containerd", "snapshotter"]).as_str(),
        Some("shoal")
    );
    assert_eq!(
        get(
            &c,
            &["plugins", CRI, "containerd", "disable_snapshot_annotations"]
        )
        .as_bool(),
        Some(false)
    );
    assert_eq!(
        get(&c, &["plugins", CRI, "registry", "config_path"]).as_str(),
        Some("/etc/containerd/certs.d")
    );
    // containerd refuses config_path together with the deprecated mirrors.
    let registry = get(&c, &["plugins", CRI, "registry"]).as_table().unwrap();
    assert!(!registry.contains_key("mirrors"));
}

#[test]
fn containerd_2_config_registers_shoal_for_the_transfer_path() {
    let c = example_toml(&V3);
    assert_eq!(get(&c, &["version"]).as_integer(), Some(3));
    let shoal = get(&c, &["proxy_plugins", "shoal"]);
    assert_eq!(shoal["type"].as_str(), Some("snapshot"));
    assert_eq!(shoal["address"].as_str(), Some("/run/shoal/shoald.sock"));
    assert_eq!(
        shoal["exports"]["enable_remote_snapshot_annotations"].as_str(),
        Some("true")
    );
    assert!(shoal.get("capabilities").is_none(), "no rebase");
    let images = get(&c, &["plugins", IMAGES]);
    assert_eq!(images["snapshotter"].as_str(), Some("shoal"));
    // false would send CRI's pulls down the local path, without the transfer path's labels.
    assert_eq!(images["disable_snapshot_annotations"].as_bool(), Some(true));
    assert!(images.get("use_local_image_pull").is_none());
    assert_eq!(
        images["registry"]["config_path"].as_str(),
        Some("/etc/containerd/certs.d")
    );
    let unpack: Vec<(&str, &str)> = get(&c, &["plugins", TRANSFER, "unpack_config"])
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["platform"].as_str().unwrap(),
                e["snapshotter"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        unpack,
        [("linux/amd64", "overlayfs"), ("linux/amd64", "shoal")],
        "a list replaces containerd's default one: overlayfs stays"
    );
}

#[path = "../../testing/skip.rs"]
mod skip;

/// The containerd binaries at hand: the system's (Debian 12's 1.6) and the newest of each
/// line unpacked under SHOAL_CONTAINERD_DIR (scripts/install-containerd-versions.sh).
fn containerds() -> Vec<(shoal_plugin::containerd::ContainerdVersion, PathBuf)> {
    use shoal_plugin::containerd::config::file::detect_version;
    let mut found = Vec::new();
    if let Ok(v) = detect_version(Path::new("containerd")) {
        found.push((v, PathBuf::from("containerd")));
    }
    let root = std::env::var_os("SHOAL_CONTAINERD_DIR")
        .map_or_else(|| PathBuf::from("/var/tmp/shoal-containerd"), PathBuf::from);
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let bin = entry.path().join("usr/bin/containerd");
        if let (true, Ok(v)) = (bin.is_file(), detect_version(&bin)) {
            found.push((v, bin));
        }
    }
    found.sort();
    found.dedup_by_key(|(v, _)| *v);
    found
}

/// `containerd --config FILE config dump`: the configuration containerd would run with.
fn dump(bin: &Path, text: &str) -> toml::Table {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(bin)
        .arg("--config")
        .arg(&file)
        .args(["config", "dump"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{bin:?} config dump: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .parse()
        .unwrap_or_else(|e| panic!("{bin:?} config dump is not TOML: {e}\n{stdout}"))
}

/// The examples, and `--local-pull`'s output, load in every containerd at hand, and
/// containerd reads from them what shoal means.
#[test]
fn real_containerd_reads_the_examples_as_meant() {
    let found = containerds();
    if found.is_empty() {
        skip::skip("no containerd installed (scripts/install-deps.sh installs it)");
        return;
    }
    let mut schemas = Vec::new();
    for (version, bin) in &found {
        eprintln!("containerd {version}: {bin:?}");
        let schema = version.schema();
        schemas.push(schema.number());
        let images = schema.cri_images_table();
        let get = |t: &toml::Table, key: &str| {
            let mut v = &t[images[0]];
            for k in &images[1..] {
                v = &v[*k];
            }
            v[key].clone()
        };
        let e = if schema.number() == 2 { V2 } else { V3 };
        let text = std::fs::read_to_string(repo_file(e.file)).unwrap();
        let c = dump(bin, &text);
        assert_eq!(get(&c, "snapshotter").as_str(), Some("shoal"), "{version}");
        let shoal = &c["proxy_plugins"]["shoal"];
        assert_eq!(shoal["address"].as_str(), Some("/run/shoal/shoald.sock"));
        if !version.cri_pulls_via_transfer() {
            assert_eq!(
                get(&c, "disable_snapshot_annotations").as_bool(),
                Some(false)
            );
            continue;
        }
        // 2.1+, transfer path: annotations stay disabled (else containerd pulls locally),
        // the proxy plugin exports them instead, and both snapshotters are unpack targets.
        assert_eq!(
            get(&c, "disable_snapshot_annotations").as_bool(),
            Some(true)
        );
        assert_eq!(get(&c, "use_local_image_pull").as_bool(), Some(false));
        assert_eq!(
            shoal["exports"]["enable_remote_snapshot_annotations"].as_str(),
            Some("true")
        );
        let unpack: Vec<String> = c["plugins"][TRANSFER]["unpack_config"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["snapshotter"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(unpack, ["overlayfs", "shoal"], "{version}");
        // --local-pull's output.
        let local = apply(
            "",
            &Options {
                version: *version,
                shoald_socket: "/run/shoal/shoald.sock".into(),
                pull_path: PullPath::Local,
                platform: shoal_plugin::containerd::config::host_platform(),
            },
        )
        .unwrap();
        let c = dump(bin, &local.text);
        assert_eq!(get(&c, "use_local_image_pull").as_bool(), Some(true));
        assert_eq!(
            get(&c, "disable_snapshot_annotations").as_bool(),
            Some(false)
        );
    }
    if skip::strict() {
        assert!(
            schemas.contains(&2) && schemas.contains(&3),
            "CI has containerd 1.x and 2.x: {found:?}"
        );
    }
}

/// The mirror of shoald.toml.example is where config.toml.example's hosts.toml example points,
/// and `shoald hosts` writes into the `config_path` containerd reads.
#[test]
fn mirror_example_agrees_with_containerds_config() {
    let text = std::fs::read_to_string(repo_file("shoald.toml.example")).unwrap();
    let example =
        shoal_plugin::config::Config::parse(&text, Path::new("shoald.toml.example")).unwrap();
    let mirror = &example.mirror;
    assert!(
        mirror.listen.ip().is_loopback(),
        "the mirror must stay on loopback"
    );
    let entry = format!(
        "[host.\"{}\"]",
        shoal_plugin::mirror::hosts::mirror_url(&example)
    );
    for (e, registry) in [(V2, [CRI, "registry"]), (V3, [IMAGES, "registry"])] {
        let c = example_toml(&e);
        assert_eq!(
            get(&c, &["plugins", registry[0], registry[1], "config_path"]).as_str(),
            mirror.hosts_dir.to_str(),
            "{}: shoald hosts must write where containerd reads",
            e.file
        );
        let containerd_text = std::fs::read_to_string(repo_file(e.file)).unwrap();
        assert!(
            containerd_text.contains(&entry),
            "{}'s hosts.toml example must name {entry}",
            e.file
        );
    }
    // The example's hosts.toml, as `shoald hosts --print` makes it, is what containerd reads.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_shoald"))
        .arg("--config")
        .arg(repo_file("shoald.toml.example"))
        .args(["hosts", "--print", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("_default/hosts.toml"), "{printed}");
    assert!(printed.contains(&entry), "{printed}");
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

/// `KEY=value` lines of the unit (all sections), in order.
fn unit_entries() -> Vec<(String, String)> {
    std::fs::read_to_string(repo_file("systemd/shoald.service"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn unit_value(entries: &[(String, String)], key: &str) -> String {
    entries
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn unit_starts_shoald_before_containerd_on_the_configured_socket() {
    let e = unit_entries();
    assert_eq!(unit_value(&e, "Type"), "notify");
    assert_eq!(unit_value(&e, "Restart"), "on-failure");
    assert!(unit_value(&e, "Before").contains("containerd.service"));
    assert!(unit_value(&e, "WantedBy").contains("containerd.service"));
    let exec = unit_value(&e, "ExecStart");
    let args: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(args[0], "/usr/local/bin/shoald");
    assert_eq!(args[1], "snapshotter");
    let address = args
        .iter()
        .position(|a| *a == "--address")
        .map(|i| args[i + 1])
        .expect("--address");
    let c = containerd_config();
    assert_eq!(
        Some(address),
        get(&c, &["proxy_plugins", "shoal", "address"]).as_str(),
        "shoald must listen where containerd's proxy_plugins.shoal connects"
    );
    let root = args
        .iter()
        .position(|a| *a == "--root")
        .map(|i| args[i + 1])
        .expect("--root");
    assert!(root.starts_with("/var/lib/shoal"));
    // The default blob cache must be writable under ProtectSystem=strict.
    let cache = shoal_plugin::config::Config::default().cache.dir;
    assert!(
        unit_value(&e, "ReadWritePaths")
            .split_whitespace()
            .any(|p| cache.starts_with(p)),
        "{cache:?} is not in ReadWritePaths"
    );
    let caps = unit_value(&e, "CapabilityBoundingSet");
    for cap in [
        "CAP_SYS_ADMIN",
        "CAP_MKNOD",
        "CAP_CHOWN",
        "CAP_FOWNER",
        "CAP_DAC_OVERRIDE",
        "CAP_SETFCAP",
    ] {
        assert!(caps.contains(cap), "missing {cap}");
    }
    // These would break unpacking real images.
    assert!(!e.iter().any(|(k, v)| k == "RestrictSUIDSGID" && v == "yes"));
    assert!(!e.iter().any(|(k, v)| k == "PrivateDevices" && v == "yes"));
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    if skip::skip_unless(&["systemd-analyze"], false) {
        return;
    }
    // verify checks that ExecStart's binary exists: point it at the one cargo built.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("shoald.service");
    let text = std::fs::read_to_string(repo_file("systemd/shoald.service")).unwrap();
    std::fs::write(
        &unit,
        text.replace("/usr/local/bin/shoald", env!("CARGO_BIN_EXE_shoald")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    // Unknown keys and bad values are only warnings: fail on any about our unit.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("shoald.service"))
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze verify warnings: {ours:#?}"
    );
}

/// `shoald containerd-config` as an operator runs it: writes, then leaves alone, prints
/// without writing, and on bad input fails with the file untouched.
#[test]
fn containerd_config_command() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("etc/containerd/config.toml");
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_shoald"))
            .args([
                "containerd-config",
                "--containerd-version",
                "2.1.9",
                "--file",
            ])
            .arg(&file)
            .args(extra)
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let (ok, stdout, stderr) = run(&[]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("written"), "{stdout}");
    assert!(stdout.contains("shoald doctor"), "{stdout}");
    let written = std::fs::read_to_string(&file).unwrap();
    let (ok, stdout, _) = run(&[]);
    assert!(ok && stdout.contains("unchanged"), "{stdout}");
    // --print: the file on stdout, notes on stderr, nothing written.
    let (ok, stdout, stderr) = run(&["--local-pull", "--print"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("use_local_image_pull = true"), "{stdout}");
    assert!(stderr.contains("note:"), "{stderr}");
    assert!(stdout.parse::<toml::Table>().is_ok(), "{stdout}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), written);
    // Bad input: non-zero exit, file untouched.
    std::fs::write(&file, "version = 3\n[plugins\n").unwrap();
    let (ok, _, stderr) = run(&[]);
    assert!(!ok);
    assert!(stderr.contains("line 2"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "version = 3\n[plugins\n"
    );
    // No version and no containerd to ask: says to pass --containerd-version.
    let out = Command::new(env!("CARGO_BIN_EXE_shoald"))
        .args([
            "containerd-config",
            "--containerd",
            "/nonexistent/containerd",
        ])
        .arg("--file")
        .arg(dir.path().join("other.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--containerd-version"));
    assert!(!dir.path().join("other.toml").exists());
}
