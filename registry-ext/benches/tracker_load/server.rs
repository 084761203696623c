//! The server under test as a child process: pinned, prioritised, its CPU time read; and
//! what TLS adds.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shoal_p2p::peer::test_pki::TestCa;
use shoal_p2p::tls::{Expect, TlsFiles, Transport};
use shoal_p2p::Digest;

use crate::env;

/// The server child, pinned, with its CPU time readable.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub _dir: tempfile::TempDir,
}

impl Server {
    /// Starts `binary` pinned to `core`: plaintext, or mutual TLS with the registry-side
    /// certificate `tls` (`dir` holds its files).
    pub fn start(binary: &Path, core: usize) -> Server {
        Self::start_with(binary, core, tempfile::tempdir().expect("tempdir"), None)
    }

    pub fn start_with(
        binary: &Path,
        core: usize,
        dir: tempfile::TempDir,
        tls: Option<&TlsFiles>,
    ) -> Server {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let config = dir.path().join("registry-ext.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"{addr}\"\nmetrics_listen = \"\"\ninsecure_plaintext = {plain}\n\
                 registry_host = \"127.0.0.1:9\"\n[manifests]\ndir = \"{m}\"\n[seed]\ndir = \"{s}\"\n\
                 [hot_cache]\nmax_bytes = 0\n{tls}",
                plain = tls.is_none(),
                m = dir.path().join("manifests").display(),
                s = dir.path().join("seed").display(),
                tls = match tls {
                    Some(f) => format!(
                        "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                        f.ca.display(),
                        f.cert.display(),
                        f.key.display()
                    ),
                    None => String::new(),
                },
            ),
        )
        .expect("config");
        // Its own session, so that its scheduling group (autogroup) can be given priority.
        let child = Command::new("setsid")
            .arg("nice")
            .arg("-n")
            .arg(nice().to_string())
            .arg("taskset")
            .arg("-c")
            .arg(core.to_string())
            .arg(binary)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("SHOAL_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start shoal-registry-ext under taskset");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "the server did not listen in 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Listening: `setsid` has made its session (and autogroup) by now.
        prioritise(child.id());
        Server {
            child,
            addr,
            _dir: dir,
        }
    }

    /// The child's CPU seconds (user + system). `nice` and `taskset` exec the server, so the
    /// pid is the server's.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&format!("/proc/{}/stat", self.child.id()))
    }

    /// The child's resident memory (bytes) and open file descriptors.
    pub fn rss_and_fds(&self) -> (u64, usize) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server's /proc status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc status");
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .expect("the server's /proc fd")
            .count();
        (kib * 1024, fds)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

pub fn cpu_seconds(stat: &str) -> f64 {
    let text = std::fs::read_to_string(stat).expect("stat");
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &text[text.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / clock_ticks()
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The niceness of the server and the generator (`SHOAL_BENCH_NICE`, default -15): on a
/// machine busy with other work, a server at the default priority gets a fraction of its
/// core and its latency measures the other work.
pub fn nice() -> i32 {
    env("SHOAL_BENCH_NICE", -15)
}

/// Gives `pid`'s scheduling group (its session's autogroup, when the kernel groups by
/// session) the bench's niceness: without it, the niceness of a task counts only against
/// its own session's tasks.
pub fn prioritise(pid: u32) {
    let path = format!("/proc/{pid}/autogroup");
    if Path::new(&path).exists() {
        if let Err(e) = std::fs::write(&path, nice().to_string()) {
            eprintln!("{path}: {e} (the figures include waiting for other work's CPU)");
        }
        eprintln!(
            "{path}: {}",
            std::fs::read_to_string(&path).unwrap_or_default().trim()
        );
    }
}

/// What TLS adds, measured with the node's own client (`Transport::http_client_for`, as
/// `HttpTrackers`): the server's CPU per new connection (full mutual-TLS handshake, ECDSA
/// P-256, plus one small request), and per request on a kept-alive connection, over TLS and
/// plaintext; then its resident memory per connection kept open (`connections` of them).
pub fn measure_tls(
    binary: &Path,
    core: usize,
    handshakes: usize,
    requests: usize,
    connections: usize,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("bench-ca");
    let server_files = ca.registry_side_files(dir.path(), "registry-ext");
    let node = ca.transport(dir.path(), "node-1");
    let tls = Server::start_with(binary, core, dir, Some(&server_files));
    let plain = Server::start(binary, core);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let timeout = Duration::from_secs(10);
    let path = format!("/v1/peers/{}?peer=node-1", Digest::of(b"none"));
    let mut rows = Vec::new();
    rt.block_on(async {
        // New connections: a new client each (no session to resume from).
        let url = format!("https://{}{path}", tls.addr);
        let cpu0 = tls.cpu_seconds();
        let start = Instant::now();
        for _ in 0..handshakes {
            let client = node
                .http_client_for(Expect::RegistrySide, timeout, timeout)
                .expect("client");
            let r = client.get(&url).send().await.expect("TLS request");
            assert!(r.status().is_success(), "{}", r.status());
        }
        let cpu = tls.cpu_seconds() - cpu0;
        rows.push(("TLS, new connection each", handshakes, cpu, start.elapsed()));
        for (label, server, scheme, transport) in [
            ("TLS, kept alive", &tls, "https", node.clone()),
            (
                "plaintext, kept alive",
                &plain,
                "http",
                Transport::Plaintext,
            ),
        ] {
            let client = transport
                .http_client_for(Expect::RegistrySide, timeout, timeout)
                .expect("client");
            let url = format!("{scheme}://{}{path}", server.addr);
            client.get(&url).send().await.expect("first request");
            let cpu0 = server.cpu_seconds();
            let start = Instant::now();
            for _ in 0..requests {
                let r = client.get(&url).send().await.expect("request");
                assert!(r.status().is_success());
            }
            rows.push((
                label,
                requests,
                server.cpu_seconds() - cpu0,
                start.elapsed(),
            ));
        }
    });
    let memory = rt.block_on(memory_per_connection(
        &tls,
        &plain,
        &node,
        &path,
        connections,
    ));
    println!();
    println!("TLS: the server's CPU per request (a small peer list), the node's client");
    println!(
        "{:<26} {:>9} {:>12} {:>12}",
        "", "requests", "cpu us/req", "wall us/req"
    );
    for (label, n, cpu, wall) in rows {
        println!(
            "{label:<26} {n:>9} {:>12.1} {:>12.1}",
            cpu / n as f64 * 1e6,
            wall.as_secs_f64() / n as f64 * 1e6
        );
    }
    println!();
    println!(
        "Memory: the server's resident memory per connection kept open (one small peer list each)"
    );
    println!(
        "{:<26} {:>11} {:>12} {:>12}",
        "", "connections", "RSS MB", "KB/conn"
    );
    for (label, n, rss) in memory {
        println!(
            "{label:<26} {n:>11} {:>12.1} {:>12.1}",
            rss as f64 / 1e6,
            rss as f64 / n.max(1) as f64 / 1e3
        );
    }
}

/// The server's resident memory per open connection, over TLS and in plaintext: `connections`
/// clients (each its own pool) make one small request each and keep their connection, and
/// the growth of the server's RSS is divided by the connections it then holds (counted
/// from its open file descriptors).
async fn memory_per_connection(
    tls: &Server,
    plain: &Server,
    node: &Transport,
    path: &str,
    connections: usize,
) -> Vec<(&'static str, usize, u64)> {
    let timeout = Duration::from_secs(30);
    let mut rows = Vec::new();
    for (label, server, scheme, transport) in [
        ("TLS", tls, "https", node.clone()),
        ("plaintext", plain, "http", Transport::Plaintext),
    ] {
        let (rss0, fds0) = server.rss_and_fds();
        let url = format!("{scheme}://{}{path}", server.addr);
        let mut clients = Vec::with_capacity(connections);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..connections {
            let client = transport
                .http_client_for(Expect::RegistrySide, timeout, timeout)
                .expect("client");
            clients.push(client.clone());
            let url = url.clone();
            tasks.spawn(async move {
                let r = client.get(&url).send().await.expect("request");
                assert!(r.status().is_success(), "{}", r.status());
                r.bytes().await.expect("body");
            });
            // A few hundred handshakes in flight at most.
            while tasks.len() >= 256 {
                tasks
                    .join_next()
                    .await
                    .expect("a task")
                    .expect("request task");
            }
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("request task");
        }
        let (rss1, fds1) = server.rss_and_fds();
        let held = fds1.saturating_sub(fds0);
        assert!(
            held >= connections * 9 / 10,
            "{label}: the server holds {held} more descriptors for {connections} clients"
        );
        rows.push((label, held, rss1.saturating_sub(rss0)));
        drop(clients);
    }
    rows
}
