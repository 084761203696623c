use super::*;

#[test]
fn empty_config_is_all_defaults() {
    let c = Config::parse("", Path::new("x.toml")).unwrap();
    assert_eq!(c.unpack.concurrency, 4);
    assert!(c.registry.hosts.is_empty());
    assert_eq!(c.cache.dir, Path::new("/var/lib/shoal/blobs"));
    assert_eq!(c.cache.max_bytes, 10 << 30);
}

#[test]
fn reads_registry_hosts_and_unpack() {
    let c = Config::parse(
        "[registry.hosts.\"127.0.0.1:5000\"]\nplain_http = true\n[unpack]\nconcurrency = 2\n",
        Path::new("x.toml"),
    )
    .unwrap();
    assert!(c.registry.hosts["127.0.0.1:5000"].plain_http);
    assert_eq!(c.unpack.concurrency, 2);
}

#[test]
fn the_shipped_example_parses_to_the_defaults() {
    let c = Config::parse(
        include_str!("../../../shoald.toml.example"),
        Path::new("shoald.toml.example"),
    )
    .unwrap();
    let d = Config::default();
    assert_eq!(c.unpack.concurrency, d.unpack.concurrency);
    assert_eq!(c.cache.dir, d.cache.dir);
    assert_eq!(c.cache.max_bytes, d.cache.max_bytes);
    assert_eq!(c.registry.retries, d.registry.retries);
    assert_eq!(
        c.registry.request_timeout_secs,
        d.registry.request_timeout_secs
    );
    assert_eq!(
        c.registry.connect_timeout_secs,
        d.registry.connect_timeout_secs
    );
    assert_eq!(c.swarm.enabled, d.swarm.enabled);
    assert_eq!(c.swarm.listen, d.swarm.listen);
    assert_eq!(c.swarm.max_uploads, d.swarm.max_uploads);
    assert_eq!(c.swarm.upload_bytes_per_sec, d.swarm.upload_bytes_per_sec);
    assert_eq!(c.swarm.chunks_in_flight, d.swarm.chunks_in_flight);
    assert_eq!(c.swarm.chunks_per_peer, d.swarm.chunks_per_peer);
    assert_eq!(c.swarm.have_peers, d.swarm.have_peers);
    assert_eq!(c.swarm.max_have_streams, d.swarm.max_have_streams);
    assert_eq!(c.metrics.listen, d.metrics.listen);
    assert_eq!(c.preheat.coordinator, d.preheat.coordinator);
    assert_eq!(c.preheat.containerd, d.preheat.containerd);
    assert_eq!(c.preheat.labels, d.preheat.labels);
    assert_eq!(c.preheat.pull_timeout_secs, d.preheat.pull_timeout_secs);
    assert_eq!(c.mirror.enabled, d.mirror.enabled);
    assert_eq!(c.mirror.listen, d.mirror.listen);
    assert_eq!(c.mirror.default_upstream, d.mirror.default_upstream);
    assert_eq!(c.mirror.access_ttl_secs, d.mirror.access_ttl_secs);
    assert_eq!(c.mirror.registries, d.mirror.registries);
    assert_eq!(c.mirror.hosts_dir, d.mirror.hosts_dir);
    assert_eq!(
        c.mirror.serve_other_registries,
        d.mirror.serve_other_registries
    );
}

#[test]
fn reads_and_checks_the_mirror_section() {
    let c = Config::parse("", Path::new("x.toml")).unwrap();
    assert!(!c.mirror.enabled);
    assert!(!c.mirror.serve_other_registries);
    assert_eq!(c.mirror.listen, "127.0.0.1:7075".parse().unwrap());
    let c = Config::parse(
        "[mirror]\nenabled = true\nlisten = \"127.0.0.1:9000\"\n\
         default_upstream = \"docker.io\"\naccess_ttl_secs = 5\n\
         registries = [\"10.0.0.1:5000\"]\nserve_other_registries = true\n",
        Path::new("x.toml"),
    )
    .unwrap();
    assert!(c.mirror.enabled);
    assert_eq!(c.mirror.listen.port(), 9000);
    assert_eq!(c.mirror.default_upstream, "docker.io");
    assert_eq!(c.mirror.access_ttl_secs, 5);
    assert!(c.mirror.serve_other_registries);
    let e = Config::parse("[mirror]\naccess_ttl_secs = 7200\n", Path::new("x.toml")).unwrap_err();
    assert!(e.to_string().contains("access_ttl_secs"), "{e}");
    let e = Config::parse("[mirror]\nregistries = [\"a b\"]\n", Path::new("x.toml")).unwrap_err();
    assert!(e.to_string().contains("mirror"), "{e}");
    let e = Config::parse("[mirror]\nlisten = \"nope\"\n", Path::new("x.toml")).unwrap_err();
    assert!(e.to_string().contains("x.toml"), "{e}");
}

#[test]
fn rejects_unknown_fields_and_zero_concurrency() {
    let e = Config::parse("[unpak]\n", Path::new("x.toml")).unwrap_err();
    assert!(e.to_string().contains("x.toml"), "{e}");
    let e = Config::parse("[unpack]\nconcurrency = 0\n", Path::new("x.toml")).unwrap_err();
    assert!(e.to_string().contains("at least 1"), "{e}");
}

#[test]
fn reads_and_checks_the_swarm_section() {
    let c = Config::parse("", Path::new("x.toml")).unwrap();
    assert!(!c.swarm.enabled);
    assert_eq!(c.metrics.listen, "127.0.0.1:9464");
    let ok = "[swarm]\nenabled = true\ntrackers = [\"https://10.0.0.1:7080\"]\n\
              [swarm.tls]\nca = \"/c\"\ncert = \"/n\"\nkey = \"/k\"\n";
    let c = Config::parse(ok, Path::new("x.toml")).unwrap();
    assert_eq!(c.swarm.listen.port(), 7070);
    assert_eq!(c.swarm.tls.unwrap().ca, Path::new("/c"));
    let e = Config::parse("[swarm]\nenabled = true\n", Path::new("x.toml")).unwrap_err();
    assert!(e.to_string().contains("swarm.trackers"), "{e}");
    let e = Config::parse(
        "[swarm]\nenabled = true\ntrackers = [\"https://t:1\"]\n",
        Path::new("x.toml"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("swarm.tls"), "{e}");
    let e = Config::parse(
        "[swarm]\nenabled = true\ninsecure_plaintext = true\ntrackers = [\"https://t:1\"]\n",
        Path::new("x.toml"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("http://"), "{e}");
    let e = Config::parse(
        &format!("{ok}[metrics]\nlisten = \"nope\"\n"),
        Path::new("x.toml"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("metrics.listen"), "{e}");
    assert_eq!(c.swarm.have_peers, 16);
    assert_eq!(c.swarm.max_have_streams, 256);
    let off = ok.replace("enabled = true", "enabled = true\nhave_peers = 0");
    assert_eq!(
        Config::parse(&off, Path::new("x.toml"))
            .unwrap()
            .swarm
            .have_peers,
        0
    );
    // The peer refresh: 500 ms, 200 ms once uploads are paced, or as set (50 ms-10 s).
    let c = Config::parse(ok, Path::new("x.toml")).unwrap();
    assert_eq!(c.swarm.peer_refresh_ms, None);
    assert_eq!(c.swarm.peer_refresh(), Duration::from_millis(500));
    let paced = ok.replace(
        "enabled = true",
        "enabled = true\nupload_bytes_per_sec = 12500000",
    );
    let paced = Config::parse(&paced, Path::new("x.toml")).unwrap();
    assert_eq!(paced.swarm.peer_refresh(), Duration::from_millis(200));
    let set = ok.replace(
        "enabled = true",
        "enabled = true\nupload_bytes_per_sec = 12500000\npeer_refresh_ms = 300",
    );
    let set = Config::parse(&set, Path::new("x.toml")).unwrap();
    assert_eq!(set.swarm.peer_refresh(), Duration::from_millis(300));
    for ms in [0, 49, 10_001] {
        let bad = ok.replace(
            "enabled = true",
            &format!("enabled = true\npeer_refresh_ms = {ms}"),
        );
        let e = Config::parse(&bad, Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("swarm.peer_refresh_ms"), "{e}");
    }
    let none = ok.replace("enabled = true", "enabled = true\nmax_have_streams = 0");
    let e = Config::parse(&none, Path::new("x.toml")).unwrap_err();
    assert!(e.to_string().contains("max_have_streams"), "{e}");
    let bad_adv = ok.replace("enabled = true", "enabled = true\nadvertise = \"host\"");
    let e = Config::parse(&bad_adv, Path::new("x.toml")).unwrap_err();
    assert!(e.to_string().contains("advertise"), "{e}");
}

#[test]
fn reads_and_checks_the_preheat_section() {
    let c = Config::parse("", Path::new("x.toml")).unwrap();
    assert!(c.preheat.coordinator.is_empty());
    assert_eq!(c.preheat.pull_timeout_secs, 3600);
    let ok = "[preheat]\ncoordinator = \"http://10.0.0.1:7080\"\nlabels = { group = \"a\" }\n\
              [swarm]\ninsecure_plaintext = true\n";
    let c = Config::parse(ok, Path::new("x.toml")).unwrap();
    assert_eq!(c.preheat.labels["group"], "a");
    for (bad, needle) in [
        ("[preheat]\ncoordinator = \"https://t:1\"\n", "swarm.tls"),
        (
            "[preheat]\ncoordinator = \"https://t:1\"\n[swarm]\ninsecure_plaintext = true\n",
            "http://",
        ),
        (
            "[preheat]\ncoordinator = \"http://t:1\"\ncontainerd = \"rel\"\n[swarm]\ninsecure_plaintext = true\n",
            "absolute",
        ),
        (
            "[preheat]\ncoordinator = \"http://t:1\"\nlabels = { \"a b\" = \"c\" }\n[swarm]\ninsecure_plaintext = true\n",
            "labels",
        ),
    ] {
        let e = Config::parse(bad, Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains(needle), "{bad}: {e}");
    }
}

#[test]
fn reads_and_checks_the_cache_section() {
    let c = Config::parse(
        "[cache]\ndir = \"/srv/blobs\"\nmax_bytes = 1048576\n",
        Path::new("x.toml"),
    )
    .unwrap();
    assert_eq!(c.cache.dir, Path::new("/srv/blobs"));
    assert_eq!(c.cache.max_bytes, 1 << 20);
    let e = Config::parse("[cache]\ndir = \"blobs\"\n", Path::new("x.toml")).unwrap_err();
    assert!(e.to_string().contains("absolute"), "{e}");
    let e = Config::parse("[cache]\nmax_bytes = 0\n", Path::new("x.toml")).unwrap_err();
    assert!(e.to_string().contains("cache.max_bytes"), "{e}");
    let e = Config::parse("[cache]\nmax_bytes = -1\n", Path::new("x.toml")).unwrap_err();
    assert!(e.to_string().contains("x.toml"), "{e}");
}
