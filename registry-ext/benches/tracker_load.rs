//! The tracker under 5,000 nodes (reported, not asserted): a load generator against the real
//! `shoal-registry-ext` binary on loopback.
//!
//! ```sh
//! cargo bench -p shoal-registry-ext --bench tracker_load
//! # SHOAL_BENCH_NODES=5000 SHOAL_BENCH_SECS=15 SHOAL_BENCH_PROTOCOLS=full,delta
//! # SHOAL_BENCH_SERVER_CORE=0 SHOAL_BENCH_LOAD_CORE=1 SHOAL_BENCH_PEERS=1
//! # SHOAL_BENCH_BASELINE=/path/to/an/older/shoal-registry-ext (run "full" against it too)
//! ```
//!
//! The server runs as a child process (plaintext, `[tracker]` defaults) pinned to core
//! `SHOAL_BENCH_SERVER_CORE` with `taskset`; this generator pins itself to
//! `SHOAL_BENCH_LOAD_CORE`. Each simulated node is a task with its own keep-alive connections
//! (one for announces, one for peer lists), speaking HTTP/1.1 directly (cheaper than a full
//! client, so the generator keeps up), at shoald's cadence (`Swarm::run_announcer`: an
//! announce, 200 ms, then the rest of the 1 s interval unless a chunk arrived; while
//! downloading, a peer list of each blob in progress every 500 ms).
//!
//! Node state: every node holds 3 of 12 images (4-10 layers each, 256 MiB to 2 GiB, half in
//! 1 MiB chunks and half in 4 MiB chunks). Two phases, each `SHOAL_BENCH_SECS` long after a
//! 3 s warm-up:
//! - `steady`: every node idle (announces once a second);
//! - `rollout`: every node pulls one new 1 GiB image of 8 layers in 1 MiB chunks, starting
//!   within the first 5 s, at 40 MiB/s, three layers at a time, chunks in random order, 8 in
//!   flight per layer; its chunk sets grow at every announce.
//!
//! Protocols (`SHOAL_BENCH_PROTOCOLS`): `full` is what a node before delta announces sends
//! (`POST /v1/announce`, its whole state every time); `delta` is today's node
//! (`POST /v1/announce/delta` with the changes since the last acknowledged announce, a full
//! state when the tracker asks for one), using the same pure diff as the node
//! (`shoal_p2p::tracker::proto::DeltaAnnounce::between`).
//!
//! Then what TLS adds (`SHOAL_BENCH_TLS_HANDSHAKES`, default 2000; 0 skips it): the
//! server's CPU per new mutual-TLS connection and per request on a kept-alive connection,
//! against plaintext, with the node's own HTTP client.
//!
//! Reported per protocol and phase: announces/s and peer lists/s served, request bytes/s
//! (headers and bodies), p50/p99 latency of each, the server's CPU (utime + stime of the
//! child from `/proc/PID/stat`) per second and per request, and the load average (other work
//! on the machine shares the cores; CPU per request is the steadier figure).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_p2p::peer::test_pki::TestCa;
use shoal_p2p::tls::{Expect, TlsFiles, Transport};
use shoal_p2p::tracker::proto::{
    Announce, BlobHave, ChunkSet, DeltaAnnounce, DeltaReply, UploadStats,
};
use shoal_p2p::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WARMUP: Duration = Duration::from_secs(3);
const MIB: u64 = 1 << 20;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One blob of an image.
#[derive(Clone)]
struct Layer {
    digest: Digest,
    chunks: u32,
}

fn image(rng: &mut fastrand::Rng, name: &str, bytes: u64, chunk: u64, layers: usize) -> Vec<Layer> {
    // Layer sizes: random shares of the image.
    let weights: Vec<u64> = (0..layers).map(|_| rng.u64(1..=10)).collect();
    let total: u64 = weights.iter().sum();
    weights
        .iter()
        .enumerate()
        .map(|(i, w)| Layer {
            digest: Digest::of(format!("{name}/layer-{i}").as_bytes()),
            chunks: (bytes * w / total).div_ceil(chunk).max(1) as u32,
        })
        .collect()
}

/// A layer being pulled: chunks arrive in a random order.
struct Pulling {
    layer: Layer,
    order: Vec<u32>,
    done: usize,
}

/// A simulated node.
struct Node {
    id: String,
    addr: SocketAddr,
    held: Vec<Layer>,
    pull: Vec<Pulling>,
    pull_started: Option<Instant>,
    /// Chunks pulled so far.
    pulled: usize,
    rng: fastrand::Rng,
}

/// 40 MiB/s in 1 MiB chunks.
const PULL_CHUNKS_PER_SEC: f64 = 40.0;
const PULL_PARALLEL: usize = 3;
const IN_FLIGHT: usize = 8;

impl Node {
    /// Advances the pull to `now`: `PULL_CHUNKS_PER_SEC` shared by the first three layers
    /// not done, one chunk each in turn; a finished pull becomes held.
    fn advance(&mut self, now: Instant) {
        let Some(start) = self.pull_started else {
            return;
        };
        let due =
            (now.saturating_duration_since(start).as_secs_f64() * PULL_CHUNKS_PER_SEC) as usize;
        while self.pulled < due {
            let mut gave = 0;
            for p in self.pull.iter_mut().filter(|p| p.done < p.order.len()) {
                if gave == PULL_PARALLEL || self.pulled == due {
                    break;
                }
                p.done += 1;
                self.pulled += 1;
                gave += 1;
            }
            if gave == 0 {
                break;
            }
        }
        if self.pull.iter().all(|p| p.done == p.order.len()) {
            for p in self.pull.drain(..) {
                self.held.push(p.layer);
            }
            self.pull_started = None;
        }
    }

    fn downloading(&self, now: Instant) -> bool {
        self.pull_started.is_some_and(|s| s <= now)
    }

    /// The layers being fetched now.
    fn active_layers(&self, now: Instant) -> Vec<Digest> {
        if !self.downloading(now) {
            return Vec::new();
        }
        self.pull
            .iter()
            .filter(|p| p.done < p.order.len())
            .take(PULL_PARALLEL)
            .map(|p| p.layer.digest.clone())
            .collect()
    }

    /// What shoald's `Swarm::announcement` would say now.
    fn announcement(&mut self, now: Instant) -> Announce {
        self.advance(now);
        let mut blobs: BTreeMap<String, BlobHave> = BTreeMap::new();
        for l in &self.held {
            blobs.insert(
                l.digest.hex().to_string(),
                BlobHave::new(l.digest.clone(), &ChunkSet::full(l.chunks)),
            );
        }
        let active = self.active_layers(now);
        for p in &self.pull {
            let mut held = ChunkSet::empty(p.layer.chunks);
            for &c in &p.order[..p.done] {
                held.insert(c);
            }
            let mut fetching = ChunkSet::empty(p.layer.chunks);
            if active.contains(&p.layer.digest) {
                let end = (p.done + IN_FLIGHT).min(p.order.len());
                for &c in &p.order[p.done..end] {
                    fetching.insert(c);
                }
            }
            if held.count() > 0 || fetching.count() > 0 {
                blobs.insert(
                    p.layer.digest.hex().to_string(),
                    BlobHave::new(p.layer.digest.clone(), &held).with_fetching(&fetching),
                );
            }
        }
        let rate = if self.downloading(now) {
            self.rng.u64(0..50 * MIB)
        } else {
            0
        };
        Announce {
            peer_id: self.id.clone(),
            addr: self.addr,
            upload: UploadStats {
                capacity_bytes_per_sec: 100 * MIB,
                rate_bytes_per_sec: rate,
                active: (rate / (10 * MIB)) as u32,
                max: 8,
            },
            blobs: blobs.into_values().collect(),
        }
    }

    fn start_pull(&mut self, image: &[Layer], now: Instant) {
        self.pull = image
            .iter()
            .map(|l| {
                let mut order: Vec<u32> = (0..l.chunks).collect();
                self.rng.shuffle(&mut order);
                Pulling {
                    layer: l.clone(),
                    order,
                    done: 0,
                }
            })
            .collect();
        self.pull_started = Some(now);
        self.pulled = 0;
    }
}

/// A keep-alive HTTP/1.1 connection, reconnected when the server closes it.
struct Conn {
    server: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Conn {
    fn new(server: SocketAddr) -> Self {
        Self {
            server,
            stream: None,
            buf: Vec::with_capacity(16 << 10),
        }
    }

    async fn request(&mut self, request: &[u8]) -> std::io::Result<Answer> {
        match self.try_request(request).await {
            Ok(a) => Ok(a),
            Err(e) => {
                // Closed keep-alive connection: once more on a new one.
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| eprintln!("reconnecting after: {e}"));
                self.stream = None;
                self.try_request(request).await
            }
        }
    }

    async fn try_request(&mut self, request: &[u8]) -> std::io::Result<Answer> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.server).await?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
        }
        let stream = self.stream.as_mut().expect("connected");
        stream.write_all(request).await?;
        self.buf.clear();
        let (head_end, status, length) = loop {
            let mut chunk = [0u8; 16 << 10];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).map_err(std::io::Error::other)?;
                let status: u16 = head
                    .get(9..12)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| std::io::Error::other(format!("bad status line {head:?}")))?;
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .ok_or_else(|| std::io::Error::other("no content-length"))?;
                break (end + 4, status, length);
            }
        };
        while self.buf.len() < head_end + length {
            let mut chunk = [0u8; 16 << 10];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok(Answer {
            status,
            body: self.buf[head_end..head_end + length].to_vec(),
        })
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nhost: tracker\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: tracker\r\n\r\n").into_bytes()
}

/// What one task measured in the window.
#[derive(Default)]
struct Tally {
    announces: u64,
    full_resends: u64,
    peer_lists: u64,
    errors: u64,
    bytes: u64,
    announce_us: Vec<u32>,
    peers_us: Vec<u32>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.announces += other.announces;
        self.full_resends += other.full_resends;
        self.peer_lists += other.peer_lists;
        self.errors += other.errors;
        self.bytes += other.bytes;
        self.announce_us.extend(other.announce_us);
        self.peers_us.extend(other.peers_us);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Protocol {
    Full,
    Delta,
}

/// Shared by the tasks of one run.
struct Plan {
    protocol: Protocol,
    /// Measurement window.
    from: Instant,
    until: Instant,
    peers: bool,
}

impl Plan {
    fn measuring(&self, at: Instant) -> bool {
        at >= self.from && at < self.until
    }
}

/// The node's delta client state (what `HttpTrackers` keeps per tracker).
#[derive(Default)]
struct DeltaState {
    seq: u64,
    acked: Option<(u64, Announce)>,
    /// The tracker's pacing: no announce before then.
    next_announce: Option<Instant>,
}

/// Sends one announce round as the node would; returns request bytes, the status and
/// whether a full resend was asked for; `None` when the tracker's pacing skips the round.
async fn announce_once(
    conn: &mut Conn,
    protocol: Protocol,
    state: &mut DeltaState,
    announce: Announce,
    peers_every: &std::sync::Mutex<Duration>,
) -> std::io::Result<Option<(u64, u16, bool)>> {
    match protocol {
        Protocol::Full => {
            let req = post("/v1/announce", &serde_json::to_vec(&announce)?);
            let a = conn.request(&req).await?;
            Ok(Some((req.len() as u64, a.status, false)))
        }
        Protocol::Delta => {
            if state.acked.is_some() && state.next_announce.is_some_and(|t| Instant::now() < t) {
                return Ok(None);
            }
            state.seq += 1;
            let seq = state.seq;
            let sent = Instant::now();
            let delta = DeltaAnnounce::between(state.acked.as_ref(), &announce, seq);
            let req = post("/v1/announce/delta", &serde_json::to_vec(&delta)?);
            let a = conn.request(&req).await?;
            let mut bytes = req.len() as u64;
            if a.status != 200 {
                state.acked = None;
                return Ok(Some((bytes, a.status, false)));
            }
            let reply: DeltaReply = serde_json::from_slice(&a.body)?;
            state.next_announce = Some(sent + Duration::from_millis(reply.min_interval_ms));
            *peers_every.lock().expect("lock") = Duration::from_millis(reply.peer_list_interval_ms);
            if !reply.full_state_needed {
                state.acked = Some((seq, announce));
                return Ok(Some((bytes, a.status, false)));
            }
            state.seq += 1;
            let seq = state.seq;
            let full = DeltaAnnounce::between(None, &announce, seq);
            let req = post("/v1/announce/delta", &serde_json::to_vec(&full)?);
            let a = conn.request(&req).await?;
            bytes += req.len() as u64;
            state.acked = (a.status == 200).then_some((seq, announce));
            Ok(Some((bytes, a.status, true)))
        }
    }
}

/// What a node keeps from one phase to the next: its connections and its delta state.
struct Client {
    announces: Conn,
    peer_lists: Conn,
    state: DeltaState,
}

async fn run_node(
    plan: Arc<Plan>,
    node: Arc<std::sync::Mutex<Node>>,
    peers_every: Arc<std::sync::Mutex<Duration>>,
    offset: Duration,
    mut conn: Conn,
    mut state: DeltaState,
) -> (Tally, Conn, DeltaState) {
    let mut tally = Tally::default();
    tokio::time::sleep(offset).await;
    while Instant::now() < plan.until {
        let (announce, downloading) = {
            let mut n = node.lock().expect("lock");
            let now = Instant::now();
            (n.announcement(now), n.downloading(now))
        };
        let start = Instant::now();
        let result =
            announce_once(&mut conn, plan.protocol, &mut state, announce, &peers_every).await;
        let took = start.elapsed();
        if plan.measuring(start) {
            match result {
                Ok(None) => {}
                Ok(Some((bytes, 200, resent))) => {
                    tally.announces += 1;
                    tally.full_resends += u64::from(resent);
                    tally.bytes += bytes;
                    tally.announce_us.push(took.as_micros() as u32);
                }
                Ok(Some((bytes, _, _))) => {
                    tally.errors += 1;
                    tally.bytes += bytes;
                }
                Err(_) => tally.errors += 1,
            }
        }
        // run_announcer: 200 ms, then the rest of the interval unless a chunk arrived (one
        // always has while downloading).
        tokio::time::sleep(Duration::from_millis(200)).await;
        if !downloading {
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
    }
    (tally, conn, state)
}

async fn run_peer_lists(
    plan: Arc<Plan>,
    node: Arc<std::sync::Mutex<Node>>,
    peers_every: Arc<std::sync::Mutex<Duration>>,
    offset: Duration,
    mut conn: Conn,
) -> (Tally, Conn) {
    let mut asked: std::collections::HashMap<Digest, Instant> = Default::default();
    let mut tally = Tally::default();
    tokio::time::sleep(offset).await;
    let id = node.lock().expect("lock").id.clone();
    while Instant::now() < plan.until {
        let active = {
            let mut n = node.lock().expect("lock");
            let now = Instant::now();
            n.advance(now);
            n.active_layers(now)
        };
        let round = Instant::now();
        // The scheduler's refresh is every 500 ms; a paced client reuses a list for longer.
        let every = (*peers_every.lock().expect("lock")).max(Duration::from_millis(500));
        for digest in active {
            if asked.get(&digest).is_some_and(|&at| round < at + every) {
                continue;
            }
            asked.insert(digest.clone(), round);
            let req = get(&format!("/v1/peers/{digest}?peer={id}"));
            let start = Instant::now();
            let result = conn.request(&req).await;
            let took = start.elapsed();
            if plan.measuring(start) {
                tally.bytes += req.len() as u64;
                match result {
                    Ok(a) if a.status == 200 => {
                        tally.peer_lists += 1;
                        tally.peers_us.push(took.as_micros() as u32);
                    }
                    _ => tally.errors += 1,
                }
            }
        }
        let next = round + Duration::from_millis(500);
        tokio::time::sleep_until(next.into()).await;
    }
    (tally, conn)
}

/// The server child, pinned, with its CPU time readable.
struct Server {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts `binary` pinned to `core`: plaintext, or mutual TLS with the registry-side
    /// certificate `tls` (`dir` holds its files).
    fn start(binary: &Path, core: usize) -> Server {
        Self::start_with(binary, core, tempfile::tempdir().expect("tempdir"), None)
    }

    fn start_with(
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
    fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&format!("/proc/{}/stat", self.child.id()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn cpu_seconds(stat: &str) -> f64 {
    let text = std::fs::read_to_string(stat).expect("stat");
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &text[text.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / clock_ticks()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

struct Row {
    label: String,
    phase: &'static str,
    tally: Tally,
    secs: f64,
    cpu: f64,
    generator_cpu: f64,
    load: String,
}

fn print_rows(nodes: usize, rows: &mut [Row]) {
    println!();
    println!(
        "tracker load: {nodes} nodes, server pinned to one core, server and generator at nice {}",
        nice()
    );
    println!(
        "{:<16} {:<8} {:>9} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>6} {:>9} {:>9} {:>7}  load avg",
        "server/protocol", "phase", "announce/s", "full/s", "peers/s", "req MB/s", "ann p50", "ann p99",
        "peer p50", "peer p99", "errors", "cpu s/s", "cpu us/req", "gen s/s"
    );
    for r in rows.iter_mut() {
        r.tally.announce_us.sort_unstable();
        r.tally.peers_us.sort_unstable();
        let t = &r.tally;
        let requests = (t.announces + t.full_resends + t.peer_lists).max(1) as f64;
        println!(
            "{:<16} {:<8} {:>10.0} {:>8.0} {:>8.0} {:>9.2} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>6} {:>9.3} {:>9.1} {:>7.2}  {}",
            r.label,
            r.phase,
            t.announces as f64 / r.secs,
            t.full_resends as f64 / r.secs,
            t.peer_lists as f64 / r.secs,
            t.bytes as f64 / r.secs / 1e6,
            percentile(&t.announce_us, 0.5),
            percentile(&t.announce_us, 0.99),
            percentile(&t.peers_us, 0.5),
            percentile(&t.peers_us, 0.99),
            t.errors,
            r.cpu / r.secs,
            r.cpu / requests * 1e6,
            r.generator_cpu / r.secs,
            r.load,
        );
    }
    println!("(latencies in ms; cpu = the server's CPU, us/req over announces + full resends + peer lists; gen = this generator's CPU)");
}

/// The run's size, the same for every server and protocol.
#[derive(Clone, Copy)]
struct Settings {
    nodes: usize,
    secs: u64,
    /// The server's core.
    core: usize,
    /// Peer lists asked during the rollout.
    peers: bool,
}

/// Runs both phases against `binary` with `protocol`.
fn run(binary: &Path, label: &str, protocol: Protocol, settings: Settings, rows: &mut Vec<Row>) {
    let Settings {
        nodes,
        secs,
        core,
        peers,
    } = settings;
    let server = Server::start(binary, core);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut rng = fastrand::Rng::with_seed(42);
    let catalog: Vec<Vec<Layer>> = (0..12)
        .map(|i| {
            let bytes = rng.u64(256..=2048) * MIB;
            let chunk = if i % 2 == 0 { MIB } else { 4 * MIB };
            let layers = rng.usize(4..=10);
            image(&mut rng, &format!("image-{i}"), bytes, chunk, layers)
        })
        .collect();
    let rollout_image = image(&mut rng, "rollout", 1024 * MIB, MIB, 8);
    let node_list: Vec<Arc<std::sync::Mutex<Node>>> = (0..nodes)
        .map(|i| {
            let mut held = Vec::new();
            let mut picks: Vec<usize> = (0..catalog.len()).collect();
            rng.shuffle(&mut picks);
            for &p in &picks[..3] {
                held.extend(catalog[p].iter().cloned());
            }
            Arc::new(std::sync::Mutex::new(Node {
                id: format!("node-{i:05}.cluster.example"),
                addr: SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 7070)),
                held,
                pull: Vec::new(),
                pull_started: None,
                pulled: 0,
                rng: fastrand::Rng::with_seed(i as u64),
            }))
        })
        .collect();
    let mut clients: Vec<Option<Client>> = (0..nodes)
        .map(|_| {
            Some(Client {
                announces: Conn::new(server.addr),
                peer_lists: Conn::new(server.addr),
                state: DeltaState::default(),
            })
        })
        .collect();
    for phase in ["steady", "rollout"] {
        let begin = Instant::now();
        let plan = Arc::new(Plan {
            protocol,
            from: begin + WARMUP,
            until: begin + WARMUP + Duration::from_secs(secs),
            peers,
        });
        if phase == "rollout" {
            for n in &node_list {
                let at = begin + Duration::from_millis(rng.u64(0..5000));
                n.lock().expect("lock").start_pull(&rollout_image, at);
            }
        }
        let tally = rt.block_on(async {
            let mut tasks = Vec::new();
            for (n, client) in node_list.iter().zip(clients.iter_mut()) {
                let Client {
                    announces,
                    peer_lists,
                    state,
                } = client.take().expect("client back from the last phase");
                let every = Arc::new(std::sync::Mutex::new(Duration::ZERO));
                let offset = Duration::from_millis(rng.u64(0..1000));
                let announcing = tokio::spawn(run_node(
                    plan.clone(),
                    n.clone(),
                    every.clone(),
                    offset,
                    announces,
                    state,
                ));
                let listing = (phase == "rollout" && plan.peers).then(|| {
                    let offset = Duration::from_millis(rng.u64(0..500));
                    tokio::spawn(run_peer_lists(
                        plan.clone(),
                        n.clone(),
                        every,
                        offset,
                        peer_lists,
                    ))
                });
                tasks.push((announcing, listing));
            }
            tokio::time::sleep_until(plan.from.into()).await;
            let cpu0 = server.cpu_seconds();
            let gen0 = cpu_seconds("/proc/self/stat");
            tokio::time::sleep_until(plan.until.into()).await;
            let cpu1 = server.cpu_seconds();
            let gen1 = cpu_seconds("/proc/self/stat");
            let load = load_average();
            let mut tally = Tally::default();
            for (client, (announcing, listing)) in clients.iter_mut().zip(tasks) {
                let (t, announces, state) = announcing.await.expect("node task");
                tally.add(t);
                let peer_lists = match listing {
                    Some(l) => {
                        let (t, conn) = l.await.expect("peer list task");
                        tally.add(t);
                        conn
                    }
                    None => Conn::new(server.addr),
                };
                *client = Some(Client {
                    announces,
                    peer_lists,
                    state,
                });
            }
            (tally, cpu1 - cpu0, gen1 - gen0, load)
        });
        let (tally, cpu, generator_cpu, load) = tally;
        eprintln!(
            "{label} {phase}: {} announces, {} peer lists, {} errors",
            tally.announces, tally.peer_lists, tally.errors
        );
        rows.push(Row {
            label: label.to_string(),
            phase,
            tally,
            secs: secs as f64,
            cpu,
            generator_cpu,
            load,
        });
    }
}

/// The niceness of the server and the generator (`SHOAL_BENCH_NICE`, default -15): on a
/// machine busy with other work, a server at the default priority gets a fraction of its
/// core and its latency measures the other work.
fn nice() -> i32 {
    env("SHOAL_BENCH_NICE", -15)
}

/// Gives `pid`'s scheduling group (its session's autogroup, when the kernel groups by
/// session) the bench's niceness: without it, the niceness of a task counts only against
/// its own session's tasks.
fn prioritise(pid: u32) {
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
/// plaintext.
fn measure_tls(binary: &Path, core: usize, handshakes: usize, requests: usize) {
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
}

fn pin_self(core: usize) {
    let status = Command::new("renice")
        .arg("-n")
        .arg(nice().to_string())
        .arg("-p")
        .arg(std::process::id().to_string())
        .stdout(Stdio::null())
        .status()
        .expect("renice");
    assert!(
        status.success(),
        "renice of the generator failed (run as root, or SHOAL_BENCH_NICE=0)"
    );
    prioritise(std::process::id());
    let status = Command::new("taskset")
        .arg("-c")
        .arg("-p")
        .arg(core.to_string())
        .arg(std::process::id().to_string())
        .stdout(Stdio::null())
        .status()
        .expect("taskset");
    assert!(status.success(), "taskset -p of the generator failed");
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let nodes: usize = env("SHOAL_BENCH_NODES", 5000);
    let secs: u64 = env("SHOAL_BENCH_SECS", 15);
    let server_core: usize = env("SHOAL_BENCH_SERVER_CORE", 0);
    let load_core: usize = env("SHOAL_BENCH_LOAD_CORE", 1);
    let peers = env("SHOAL_BENCH_PEERS", 1u8) != 0;
    assert!(
        nodes <= 20_000 && secs <= 600,
        "bounded: at most 20,000 nodes and 600 s"
    );
    let protocols: String = env("SHOAL_BENCH_PROTOCOLS", "full,delta".to_string());
    pin_self(load_core);
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_shoal-registry-ext"));
    let mut rows = Vec::new();
    let settings = Settings {
        nodes,
        secs,
        core: server_core,
        peers,
    };
    if let Ok(baseline) = std::env::var("SHOAL_BENCH_BASELINE") {
        let baseline = Path::new(&baseline);
        run(
            baseline,
            "baseline/full",
            Protocol::Full,
            settings,
            &mut rows,
        );
    }
    for p in protocols.split(',').filter(|p| !p.trim().is_empty()) {
        let (label, protocol) = match p.trim() {
            "full" => ("this/full", Protocol::Full),
            "delta" => ("this/delta", Protocol::Delta),
            other => panic!("unknown protocol {other:?} (full, delta)"),
        };
        run(&binary, label, protocol, settings, &mut rows);
    }
    print_rows(nodes, &mut rows);
    let handshakes: usize = env("SHOAL_BENCH_TLS_HANDSHAKES", 2000);
    if handshakes > 0 {
        measure_tls(&binary, server_core, handshakes.min(20_000), 10_000);
    }
}
