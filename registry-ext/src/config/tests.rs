use super::*;

const MINIMAL: &str = "registry_host = \"127.0.0.1:5000\"\nlisten = \"127.0.0.1:7080\"\n\
                       insecure_plaintext = true\n";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("x.toml"))
}

#[test]
fn minimal_config_gets_the_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.advertise, "127.0.0.1:7080".parse().unwrap());
    assert_eq!(c.metrics_listen, Some("127.0.0.1:9465".parse().unwrap()));
    assert_eq!(c.manifests, ManifestsConfig::default());
    assert_eq!(c.seed, SeedConfig::default());
    assert_eq!(c.tracker, TrackerConfig::default());
    assert_eq!(c.torrent, TorrentConfig::default());
    assert_eq!(c.notifications, NotificationsConfig::default());
    assert!(!c.notifications.enabled);
    assert_eq!(c.hot_cache, HotCacheConfig::default());
    assert_eq!(c.preheat, PreheatConfig::default());
    assert_eq!(c.manifests.chunk_size, 4 << 20);
    assert!(c.tls.is_none());
}

#[test]
fn the_shipped_example_parses() {
    let c = Config::parse(
        include_str!("../../../registry-ext.toml.example"),
        Path::new("registry-ext.toml.example"),
    )
    .unwrap();
    assert_eq!(c.listen, default_listen());
    assert_eq!(c.advertise, "10.0.0.10:7080".parse().unwrap());
    assert_eq!(c.metrics_listen, default_metrics_listen());
    assert_eq!(c.registry_host, "registry.example:5000");
    assert!(c.tls.is_some() && !c.insecure_plaintext);
    assert_eq!(c.manifests, ManifestsConfig::default());
    assert_eq!(c.seed, SeedConfig::default());
    assert_eq!(c.tracker, TrackerConfig::default());
    assert_eq!(c.torrent, TorrentConfig::default());
    assert_eq!(c.registry.retries, ClientConfig::default().retries);
    assert_eq!(c.preheat, PreheatConfig::default());
    assert_eq!(c.hot_cache, HotCacheConfig::default());
    assert_eq!(c.notifications, NotificationsConfig::default());
}

#[test]
fn torrent_section() {
    let enabled = format!("{MINIMAL}[torrent]\nenabled = true\n");
    if !cfg!(feature = "torrent") {
        let e = parse(&enabled).unwrap_err();
        assert!(
            e.to_string().contains("without the `torrent` feature"),
            "{e}"
        );
        // Disabled, the section is accepted as written (and not checked further).
        parse(&format!(
            "{MINIMAL}[torrent]\nenabled = false\npiece_length = 3\n"
        ))
        .unwrap();
        return;
    }
    let c = parse(&enabled).unwrap();
    // listen 0.0.0.0:6881 takes the top-level advertise IP.
    assert_eq!(c.torrent.advertise, Some("127.0.0.1:6881".parse().unwrap()));
    let c = parse(&format!(
        "{enabled}listen = \"127.0.0.2:7000\"\npiece_length = 16384\ndir = \"/t\"\n"
    ))
    .unwrap();
    assert_eq!(c.torrent.advertise, Some("127.0.0.2:7000".parse().unwrap()));
    assert_eq!(c.torrent.piece_length, 16384);
    for (extra, needle) in [
        ("piece_length = 3000000\n", "piece_length"),
        ("piece_length = 8192\n", "piece_length"),
        ("dir = \"rel\"\n", "absolute"),
        ("dir = \"/var/lib/shoal-registry-ext/blobs\"\n", "differ"),
        ("max_bytes = 0\n", "max_bytes"),
        ("listen = \"127.0.0.1:0\"\n", "torrent.advertise"),
        ("bogus = 1\n", "bogus"),
    ] {
        let e = parse(&format!("{enabled}{extra}")).unwrap_err();
        assert!(e.to_string().contains(needle), "{extra}: {e}");
    }
}

#[test]
fn advertise_is_required_with_an_unspecified_listen_ip() {
    let e = parse("registry_host = \"r.example\"\ninsecure_plaintext = true\n").unwrap_err();
    assert!(e.to_string().contains("advertise is required"), "{e}");
    let c = parse(
        "registry_host = \"r.example\"\ninsecure_plaintext = true\n\
         advertise = \"10.1.2.3:7080\"\nmetrics_listen = \"\"\n",
    )
    .unwrap();
    assert_eq!(c.advertise, "10.1.2.3:7080".parse().unwrap());
    assert_eq!(c.metrics_listen, None);
    for bad in ["0.0.0.0:7080", "10.1.2.3:0", "nonsense"] {
        let text = format!(
            "registry_host = \"r.example\"\ninsecure_plaintext = true\nadvertise = \"{bad}\"\n"
        );
        assert!(parse(&text).is_err(), "{bad}");
    }
}

#[test]
fn registry_host_and_tls_are_checked() {
    let e = parse("listen = \"127.0.0.1:1\"\ninsecure_plaintext = true\n").unwrap_err();
    assert!(e.to_string().contains("registry_host is required"), "{e}");
    for bad in ["nodots", "a/b", "sp ace.example", "r.example:99999x"] {
        let text = format!(
            "listen = \"127.0.0.1:1\"\ninsecure_plaintext = true\nregistry_host = \"{bad}\"\n"
        );
        assert!(parse(&text).is_err(), "{bad}");
    }
    let e = parse("listen = \"127.0.0.1:1\"\nregistry_host = \"r.example\"\n").unwrap_err();
    assert!(e.to_string().contains("[tls]"), "{e}");
    let both = format!("{MINIMAL}[tls]\nca = \"/a\"\ncert = \"/b\"\nkey = \"/c\"\n");
    assert!(parse(&both).unwrap_err().to_string().contains("choose one"));
}

#[test]
fn sections_are_validated() {
    for (section, needle) in [
        ("[manifests]\nchunk_size = 1\n", "chunk_size"),
        ("[manifests]\ndir = \"rel\"\n", "absolute"),
        ("[seed]\ndir = \"rel\"\n", "absolute"),
        ("[seed]\nmax_bytes = 0\n", "seed.max_bytes"),
        ("[seed]\nmax_uploads = 0\n", "seed.max_uploads"),
        ("[tracker]\npeer_ttl_ms = 1000\n", "peer_ttl_ms"),
        (
            "[tracker]\nannounce_interval_ms = 0\n",
            "announce_interval_ms",
        ),
        ("[tracker]\nmax_peers = 0\n", "max_peers"),
        ("[preheat]\nenabled = true\nstate = \"rel\"\n", "absolute"),
        (
            "[preheat]\nenabled = true\ndown_after_ms = 1000\n",
            "down_after_ms",
        ),
        (
            "[preheat]\nenabled = true\nadmin_listen = \"127.0.0.1:1\"\n",
            "token",
        ),
        ("[preheat]\nenabled = true\ntokens = [\"short\"]\n", "16"),
        ("[registry]\nretries = 99\n", "[registry]"),
        ("[notifications]\nenabled = true\n", "notifications.token"),
        (
            "[notifications]\nenabled = true\ntoken = \"short\"\n",
            "notifications.token",
        ),
        (
            "[notifications]\nenabled = true\ntoken = \"0123456789abcdef 0\"\n",
            "spaces",
        ),
        (
            "[notifications]\nenabled = true\ntoken = \"0123456789abcdef\"\n\
             listen = \"127.0.0.1:7080\"\n",
            "already used",
        ),
        ("[notifications]\nconcurrency = 0\n", "concurrency"),
        ("[notifications]\nqueue = 0\n", "queue"),
        ("[hot_cache]\nmax_bytes = 1000\n", "hot_cache.max_bytes"),
        ("[seed]\nbogus = 1\n", "bogus"),
        ("bogus = 1\n", "bogus"),
    ] {
        let e = parse(&format!("{MINIMAL}{section}")).unwrap_err();
        assert!(e.to_string().contains(needle), "{section}: {e}");
    }
    let c = parse(&format!(
        "{MINIMAL}[seed]\nmax_uploads = 4\nupload_bytes_per_sec = 1000\n\
         [tracker]\nmax_peers = 5\n[manifests]\nchunk_size = 65536\n"
    ))
    .unwrap();
    assert_eq!(c.seed.max_uploads, 4);
    assert_eq!(c.seed.upload_bytes_per_sec, 1000);
    assert_eq!(c.tracker.max_peers, 5);
    assert_eq!(c.manifests.chunk_size, 65536);
    let c = parse(&format!(
        "{MINIMAL}[hot_cache]\nmax_bytes = 0\n[notifications]\nenabled = true\n\
         token = \"0123456789abcdef\"\nlisten = \"127.0.0.1:9999\"\n"
    ))
    .unwrap();
    assert_eq!(c.hot_cache.max_bytes, 0);
    assert_eq!(c.notifications.listen, "127.0.0.1:9999".parse().unwrap());
    let shown = format!("{:?}", c.notifications);
    assert!(
        !shown.contains("0123456789abcdef"),
        "the token is printed: {shown}"
    );
    let c = parse(&format!(
        "{MINIMAL}[preheat]\nenabled = true\nconcurrency = 2\n\
         admin_listen = \"127.0.0.1:7081\"\ntokens = [\"0123456789abcdef\"]\n"
    ))
    .unwrap();
    assert!(c.preheat.enabled);
    assert_eq!(c.preheat.concurrency, 2);
    assert_eq!(
        c.preheat.admin_listen,
        Some("127.0.0.1:7081".parse().unwrap())
    );
}

#[test]
fn advertise_given_at_startup_replaces_the_files() {
    // A file shared by several replicas listens on 0.0.0.0 and names no advertise address:
    // refused alone, accepted with each replica's own (`serve --advertise`), which the
    // torrent listener's default follows too.
    let text = "registry_host = \"r:5000\"\nlisten = \"0.0.0.0:7080\"\ninsecure_plaintext = true\n";
    let err = parse(text).unwrap_err().to_string();
    assert!(err.contains("advertise is required"), "{err}");
    let pod: SocketAddr = "10.1.2.3:7080".parse().unwrap();
    let c = Config::parse_advertising(text, Path::new("x.toml"), Some(pod)).unwrap();
    assert_eq!(c.advertise, pod);
    let with_file = format!("{text}advertise = \"10.9.9.9:7080\"\n");
    let c = Config::parse_advertising(&with_file, Path::new("x.toml"), Some(pod)).unwrap();
    assert_eq!(c.advertise, pod);
    let c = Config::parse_advertising(&with_file, Path::new("x.toml"), None).unwrap();
    assert_eq!(c.advertise, "10.9.9.9:7080".parse().unwrap());
}
