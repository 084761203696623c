//! Unit tests of [`apply`](super::apply): each version on an empty and on a lived-in file,
//! reruns, the transfer service's unpack list, contradictions, and bad input.

use super::*;

const CRI2: &str = "io.containerd.grpc.v1.cri";
const IMAGES3: &str = "io.containerd.cri.v1.images";

fn opts(v: &str, pull_path: PullPath) -> Options {
    Options {
        version: v.parse().unwrap(),
        shoald_socket: "/run/shoal/shoald.sock".into(),
        pull_path,
        platform: "linux/amd64".into(),
    }
}

/// `apply`, checked to give TOML and to be a fixed point (a rerun changes nothing).
fn run(existing: &str, o: &Options) -> (toml::Table, Applied) {
    let a = apply(existing, o).unwrap_or_else(|e| panic!("{e}\n{existing}"));
    let parsed: toml::Table = a.text.parse().unwrap_or_else(|e| panic!("{e}\n{}", a.text));
    let again = apply(&a.text, o).unwrap();
    assert!(!again.changed, "second run changed:\n{}", again.text);
    assert_eq!(again.text, a.text);
    (parsed, a)
}

fn get<'a>(t: &'a toml::Table, path: &[&str]) -> Option<&'a toml::Value> {
    let (last, parents) = path.split_last()?;
    let mut cur = t;
    for k in parents {
        cur = cur.get(*k)?.as_table()?;
    }
    cur.get(*last)
}

fn s<'a>(t: &'a toml::Table, path: &[&str]) -> Option<&'a str> {
    get(t, path).and_then(|v| v.as_str())
}

fn b(t: &toml::Table, path: &[&str]) -> Option<bool> {
    get(t, path).and_then(|v| v.as_bool())
}

/// (platform, snapshotter) of each transfer unpack entry.
fn unpack_list(t: &toml::Table) -> Vec<(String, String)> {
    get(t, &["plugins", TRANSFER_PLUGIN, "unpack_config"])
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .map(|e| {
                    let f = |k| e.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
                    (f("platform"), f("snapshotter"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn amd64(snapshotter: &str) -> (String, String) {
    ("linux/amd64".into(), snapshotter.into())
}

/// What every version needs, and the pull path's own settings.
fn check(t: &toml::Table, v: &str, path: PullPath) {
    let o = opts(v, path);
    let schema = o.version.schema();
    assert_eq!(
        get(t, &["version"]).and_then(|v| v.as_integer()),
        Some(schema.number())
    );
    assert_eq!(s(t, &["proxy_plugins", "shoal", "type"]), Some("snapshot"));
    assert_eq!(
        s(t, &["proxy_plugins", "shoal", "address"]),
        Some("/run/shoal/shoald.sock")
    );
    let images = schema.cri_images_table();
    let key = |k: &'static str| [images, &[k]].concat();
    assert_eq!(s(t, &key("snapshotter")), Some("shoal"));
    let registry = schema.cri_registry_table();
    let config_path = s(t, &[registry, &["config_path"]].concat());
    let legacy = LEGACY_REGISTRY
        .iter()
        .any(|k| get(t, &[registry, &[k]].concat()).is_some());
    if default_hosts_config_path(o.version).is_none() && !legacy {
        assert_eq!(config_path, Some(HOSTS_DIR));
    }
    let transfer = o.version.cri_pulls_via_transfer() && path == PullPath::Transfer;
    let exports = s(
        t,
        &[
            "proxy_plugins",
            "shoal",
            "exports",
            REMOTE_ANNOTATIONS_EXPORT,
        ],
    );
    if transfer {
        assert_eq!(b(t, &key("disable_snapshot_annotations")), Some(true));
        assert_ne!(b(t, &key("use_local_image_pull")), Some(true));
        assert_eq!(exports, Some("true"));
        let list = unpack_list(t);
        assert!(list.contains(&amd64("shoal")), "{list:?}");
        assert!(list.contains(&amd64("overlayfs")), "{list:?}");
    } else {
        assert_eq!(b(t, &key("disable_snapshot_annotations")), Some(false));
        let local_flag = b(t, &key("use_local_image_pull"));
        match o.version.cri_pulls_via_transfer() {
            true => assert_eq!(local_flag, Some(true)),
            false => assert_eq!(local_flag, None, "2.0 and 1.x have no such key"),
        }
    }
    let rebase = get(t, &["proxy_plugins", "shoal", "capabilities"])
        .and_then(|c| c.as_array())
        .is_some_and(|c| c.iter().any(|x| x.as_str() == Some(REBASE)));
    assert!(!rebase);
}

const CASES: [(&str, PullPath); 7] = [
    ("1.6.20", PullPath::Transfer),
    ("1.7.24", PullPath::Local),
    ("2.0.0", PullPath::Transfer),
    ("2.1.9", PullPath::Transfer),
    ("2.1.9", PullPath::Local),
    ("2.2.0", PullPath::Transfer),
    ("2.2.0", PullPath::Local),
];

#[test]
fn every_version_on_an_empty_file() {
    for (v, path) in CASES {
        for empty in ["", "\n", "# only a comment\n\n# and another\n"] {
            let (t, a) = run(empty, &opts(v, path));
            check(&t, v, path);
            assert!(a.changed);
            assert!(a.notes.is_empty(), "{v}: {:?}", a.notes);
            assert!(a.text.starts_with(empty.trim_end()), "{}", a.text);
            // Keys added say what they are for.
            assert!(
                a.text.contains("# Unpack the images CRI pulls"),
                "{}",
                a.text
            );
        }
    }
    let (t, _) = run("", &opts("2.2.0", PullPath::Transfer));
    assert_eq!(
        get(&t, &["plugins", IMAGES3, "registry"]),
        None,
        "2.2 has a default config_path"
    );
    let (t, _) = run("", &opts("2.0.0", PullPath::Transfer));
    assert!(
        unpack_list(&t).is_empty(),
        "2.0's CRI does not pull through the transfer service"
    );
}

const LIVED_IN_V2: &str = r#"# Managed by the node image. Local changes below.
version = 2
root = "/var/lib/containerd"
oom_score = -999

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.9"  # pinned

    [plugins."io.containerd.grpc.v1.cri".containerd]
      # runc with systemd cgroups
      default_runtime_name = "runc"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"

        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = true

    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/opt/cni/bin"

[metrics]
  address = "127.0.0.1:1338"
"#;

const LIVED_IN_V3: &str = r#"# containerd 2 on this node
version = 3
root = "/var/lib/containerd"

[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "registry.k8s.io/pause:3.10"

[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
    SystemdCgroup = true   # cgroup v2 nodes

[plugins."io.containerd.transfer.v1.local"]
  max_concurrent_downloads = 5

[proxy_plugins.stargz]
  type = "snapshot"
  address = "/run/containerd-stargz-grpc/containerd-stargz-grpc.sock"

# Kept at the end.
[metrics]
  address = "127.0.0.1:1338"
"#;

/// Every line of `old` is in `new`, in the same order.
fn keeps_lines(old: &str, new: &str) {
    let mut rest = new;
    for line in old.lines().filter(|l| !l.trim().is_empty()) {
        let at = rest
            .find(line)
            .unwrap_or_else(|| panic!("{line:?} lost or moved:\n{new}"));
        rest = &rest[at + line.len()..];
    }
}

#[test]
fn lived_in_files_keep_everything_else() {
    for (v, path) in CASES {
        let existing = match opts(v, path).version.schema() {
            Schema::V2 => LIVED_IN_V2,
            Schema::V3 => LIVED_IN_V3,
        };
        let (t, a) = run(existing, &opts(v, path));
        check(&t, v, path);
        keeps_lines(existing, &a.text);
        assert!(a.notes.is_empty(), "{v}: {:?}", a.notes);
        assert_eq!(s(&t, &["metrics", "address"]), Some("127.0.0.1:1338"));
    }
    // Keys added to an existing table are indented like its keys.
    let (_, a) = run(LIVED_IN_V2, &opts("1.7.24", PullPath::Local));
    assert!(
        a.text.contains("\n      snapshotter = \"shoal\"\n"),
        "{}",
        a.text
    );
    assert!(
        a.text.contains("      # Unpack the images CRI pulls"),
        "{}",
        a.text
    );
    // The stargz proxy plugin stays as it was.
    let (t, _) = run(LIVED_IN_V3, &opts("2.1.9", PullPath::Transfer));
    assert_eq!(
        s(&t, &["proxy_plugins", "stargz", "type"]),
        Some("snapshot")
    );
}

#[test]
fn unpack_config_keeps_entries_and_adds_ours_once() {
    let o = opts("2.1.9", PullPath::Transfer);
    // overlayfs for this platform and another platform: only shoal is added.
    let existing = r#"version = 3
[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = "linux/amd64"
  snapshotter = "overlayfs"
  differ = "walking"

[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = "linux/arm64/v8"
  snapshotter = "overlayfs"
"#;
    let (t, a) = run(existing, &o);
    let list = unpack_list(&t);
    assert_eq!(
        list,
        vec![
            amd64("overlayfs"),
            ("linux/arm64/v8".into(), "overlayfs".into()),
            amd64("shoal")
        ]
    );
    assert!(a.notes.is_empty(), "{:?}", a.notes);
    // A list without overlayfs for this platform: it is added back, with a note.
    let existing = r#"version = 3
[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = "linux/amd64"
  snapshotter = "devmapper"
"#;
    let (t, a) = run(existing, &o);
    assert_eq!(
        unpack_list(&t),
        vec![amd64("devmapper"), amd64("overlayfs"), amd64("shoal")]
    );
    assert!(
        a.notes
            .iter()
            .any(|n| n.contains("overlayfs") && n.contains("replaces")),
        "{:?}",
        a.notes
    );
    // shoal already there under another spelling of the platform: not added twice.
    let existing = "version = 3\n\
        [[plugins.\"io.containerd.transfer.v1.local\".unpack_config]]\n\
        platform = \"Linux/x86_64\"\nsnapshotter = \"shoal\"\n\
        [[plugins.\"io.containerd.transfer.v1.local\".unpack_config]]\n\
        platform = \"linux/amd64\"\nsnapshotter = \"overlayfs\"\n";
    let (t, a) = run(existing, &o);
    assert_eq!(unpack_list(&t).len(), 2, "{}", a.text);
    assert!(!a.changed || !a.text.contains("differ"), "{}", a.text);
    // An inline list (and an empty one, which means "unpack nothing") is extended inline.
    for list in [
        "[{ platform = \"linux/amd64\", snapshotter = \"overlayfs\" }]",
        "[]",
    ] {
        let existing = format!(
            "version = 3\n[plugins.\"io.containerd.transfer.v1.local\"]\nunpack_config = {list}\n"
        );
        let (t, _) = run(&existing, &o);
        assert_eq!(unpack_list(&t), vec![amd64("overlayfs"), amd64("shoal")]);
    }
}

fn one_note_with(a: &Applied, words: &[&str]) {
    assert!(
        a.notes.iter().any(|n| words.iter().all(|w| n.contains(w))),
        "no note with {words:?}: {:?}",
        a.notes
    );
}

#[test]
fn contradictions_are_changed_with_a_note() {
    // Another snapshotter, annotations off, another address and type, rebase.
    let existing = r#"version = 2
[proxy_plugins.shoal]
  type = "content"
  address = "/run/old.sock"
  capabilities = ["rebase"]
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs" # was the default
  disable_snapshot_annotations = true
"#;
    let (t, a) = run(existing, &opts("1.7.24", PullPath::Transfer));
    check(&t, "1.7.24", PullPath::Transfer);
    one_note_with(&a, &["snapshotter", "\"overlayfs\"", "shoal"]);
    one_note_with(&a, &["disable_snapshot_annotations", "true", "false"]);
    one_note_with(&a, &["address", "/run/old.sock"]);
    one_note_with(&a, &["type", "\"content\""]);
    one_note_with(&a, &["rebase", "removed"]);
    assert!(!a.text.contains("capabilities"), "{}", a.text);
    assert!(
        a.text.contains("snapshotter = \"shoal\" # was the default"),
        "{}",
        a.text
    );

    // 2.2: rebase goes, other capabilities stay.
    let existing = "version = 3\n[proxy_plugins.shoal]\ntype = \"snapshot\"\n\
                    address = \"/run/shoal/shoald.sock\"\ncapabilities = [\"rebase\", \"other\"]\n";
    let (t, a) = run(existing, &opts("2.2.0", PullPath::Transfer));
    check(&t, "2.2.0", PullPath::Transfer);
    one_note_with(&a, &["rebase", "parallel"]);
    assert_eq!(
        get(&t, &["proxy_plugins", "shoal", "capabilities"]),
        Some(&toml::Value::Array(vec!["other".into()]))
    );

    // Transfer path: annotations on and use_local_image_pull go back.
    let existing = "version = 3\n[plugins.\"io.containerd.cri.v1.images\"]\n\
                    disable_snapshot_annotations = false\nuse_local_image_pull = true\n";
    let (t, a) = run(existing, &opts("2.1.9", PullPath::Transfer));
    check(&t, "2.1.9", PullPath::Transfer);
    one_note_with(&a, &["disable_snapshot_annotations", "local path"]);
    one_note_with(&a, &["use_local_image_pull", "--local-pull"]);
    assert_eq!(
        b(&t, &["plugins", IMAGES3, "use_local_image_pull"]),
        Some(false)
    );

    // Local path asked for on a file set up for the transfer path.
    let (t2, a2) = run(&a.text, &opts("2.1.9", PullPath::Local));
    check(&t2, "2.1.9", PullPath::Local);
    one_note_with(&a2, &["disable_snapshot_annotations", "false"]);
    one_note_with(&a2, &["use_local_image_pull", "true"]);
}

#[test]
fn settings_that_force_the_local_path_give_local_settings() {
    for (setting, words) in [
        ("discard_unpacked_layers = true", "discard_unpacked_layers"),
        ("max_concurrent_downloads = 10", "max_concurrent_downloads = 10"),
        ("image_pull_with_sync_fs = true", "image_pull_with_sync_fs"),
        (
            "[plugins.\"io.containerd.cri.v1.images\".registry.configs.\"r.example\".auth]\nusername = \"u\"",
            "registry.configs",
        ),
    ] {
        let existing = format!("version = 3\n[plugins.\"io.containerd.cri.v1.images\"]\n{setting}\n");
        let (t, a) = run(&existing, &opts("2.1.9", PullPath::Transfer));
        check(&t, "2.1.9", PullPath::Local);
        one_note_with(&a, &[words, "local path"]);
    }
    // max_concurrent_downloads = 3 is containerd's default: the transfer path stays.
    let existing =
        "version = 3\n[plugins.\"io.containerd.cri.v1.images\"]\nmax_concurrent_downloads = 3\n";
    let (t, _) = run(existing, &opts("2.1.9", PullPath::Transfer));
    check(&t, "2.1.9", PullPath::Transfer);
}

#[test]
fn registry_config_path() {
    // An existing config_path is kept as it is.
    let existing = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n\
                    config_path = \"/etc/containerd/certs.d:/etc/docker/certs.d\"\n";
    let (t, a) = run(existing, &opts("1.6.20", PullPath::Local));
    assert_eq!(
        s(&t, &["plugins", CRI2, "registry", "config_path"]),
        Some("/etc/containerd/certs.d:/etc/docker/certs.d")
    );
    assert!(a.notes.is_empty());
    // The deprecated mirrors: containerd refuses config_path with them.
    let existing = "version = 2\n\
        [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n\
        endpoint = [\"https://mirror.example\"]\n";
    let (t, a) = run(existing, &opts("1.7.24", PullPath::Local));
    assert_eq!(s(&t, &["plugins", CRI2, "registry", "config_path"]), None);
    one_note_with(&a, &["config_path not set", "mirrors"]);
}

#[test]
fn dotted_and_inline_tables_are_extended_in_their_own_form() {
    let existing = "version = 2\n\
        proxy_plugins = { shoal = { type = \"snapshot\", address = \"/elsewhere.sock\" } }\n\
        [plugins.\"io.containerd.grpc.v1.cri\"]\n\
        containerd.snapshotter = \"overlayfs\"\n";
    let (t, a) = run(existing, &opts("1.7.24", PullPath::Local));
    check(&t, "1.7.24", PullPath::Local);
    assert!(
        a.text
            .contains("containerd.disable_snapshot_annotations = false"),
        "{}",
        a.text
    );
    assert!(a.text.contains("proxy_plugins = { shoal = {"), "{}", a.text);
    let existing = "version = 3\nproxy_plugins.shoal.type = \"snapshot\"\n\
                    plugins.\"io.containerd.cri.v1.images\".snapshotter = \"shoal\"\n";
    let (t, _) = run(existing, &opts("2.1.9", PullPath::Transfer));
    check(&t, "2.1.9", PullPath::Transfer);
}

#[test]
fn bad_input_is_a_clear_error() {
    let o = opts("2.1.9", PullPath::Transfer);
    let err = |text: &str, o: &Options| apply(text, o).unwrap_err();
    match err("version = 3\n[plugins\nx = 1\n", &o) {
        ContainerdConfigError::Parse { line, column, .. } => assert_eq!((line, column), (2, 9)),
        e => panic!("{e}"),
    }
    let e = err("version = 3\nfoo = = 1\n", &o);
    assert!(e.to_string().contains("line 2"), "{e}");

    let e = err("root = \"/var/lib/containerd\"\n", &o);
    assert!(matches!(e, ContainerdConfigError::Schema1 { .. }), "{e}");
    assert!(e.to_string().contains("containerd config migrate"), "{e}");
    let e = err("version = 1\n", &opts("1.6.20", PullPath::Local));
    assert!(matches!(e, ContainerdConfigError::Schema1 { .. }), "{e}");
    assert!(e.to_string().contains("version = 2"), "{e}");
    let e = err("version = 7\n", &o);
    assert!(
        matches!(e, ContainerdConfigError::UnknownSchema { found: 7 }),
        "{e}"
    );
    let e = err("version = \"3\"\n", &o);
    assert!(
        e.to_string()
            .contains("version is string, expected an integer"),
        "{e}"
    );
    let e = err("version = 2\n", &o);
    assert!(
        matches!(e, ContainerdConfigError::NeedsMigration { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("containerd config migrate"), "{e}");
    let e = err("version = 3\n", &opts("1.7.24", PullPath::Local));
    assert!(
        matches!(e, ContainerdConfigError::SchemaTooNew { .. }),
        "{e}"
    );
    let e = err("", &opts("1.5.9", PullPath::Local));
    assert!(
        matches!(e, ContainerdConfigError::UnsupportedContainerd { .. }),
        "{e}"
    );

    for (text, key) in [
        ("version = 3\nproxy_plugins = 3\n", "proxy_plugins is integer"),
        ("version = 3\nproxy_plugins.shoal = \"x\"\n", "proxy_plugins.shoal is string"),
        (
            "version = 3\n[proxy_plugins.shoal]\ncapabilities = \"rebase\"\n",
            "proxy_plugins.shoal.capabilities is string",
        ),
        (
            "version = 3\nplugins = []\n",
            "plugins is array",
        ),
        (
            "version = 3\n[plugins.\"io.containerd.cri.v1.images\"]\nsnapshotter.x = 1\n",
            "plugins.\"io.containerd.cri.v1.images\".snapshotter is table",
        ),
        (
            "version = 3\n[plugins.\"io.containerd.transfer.v1.local\"]\nunpack_config = 3\n",
            "unpack_config is integer, expected an array of tables",
        ),
        (
            "version = 3\n[plugins.\"io.containerd.transfer.v1.local\"]\nunpack_config = [\"linux/amd64\"]\n",
            "unpack_config is string, expected an array of tables",
        ),
    ] {
        let e = err(text, &o);
        assert!(
            matches!(e, ContainerdConfigError::WrongType { .. }),
            "{text}: {e}"
        );
        assert!(e.to_string().contains(key), "{text}: {e}");
    }
}

#[test]
fn platforms_compare_as_containerd_normalises_them() {
    assert_eq!(platform_key("linux/amd64"), platform_key("Linux/x86_64"));
    assert_eq!(
        platform_key("linux/arm64/v8"),
        platform_key("linux/aarch64")
    );
    assert_ne!(platform_key("linux/arm64"), platform_key("linux/amd64"));
    assert!(host_platform().starts_with("linux/"));
}
