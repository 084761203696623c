//! The tracker under 5,000 nodes (reported, not asserted): a load generator against the real
//! `shoal-registry-ext` binary on loopback.
//!
//! ```sh
//! cargo bench -p shoal-registry-ext --bench tracker_load
//! # SHOAL_BENCH_NODES=5000 SHOAL_BENCH_SECS=15 SHOAL_BENCH_PROTOCOLS=full,delta
//! # SHOAL_BENCH_SERVER_CORE=0 SHOAL_BENCH_LOAD_CORE=1 SHOAL_BENCH_PEERS=1 SHOAL_BENCH_FRESH=0
//! # SHOAL_BENCH_BASELINE=/path/to/an/older/shoal-registry-ext (run "full" against it too)
//! ```
//!
//! The server runs as a child process (plaintext, `[tracker]` defaults) pinned to core
//! `SHOAL_BENCH_SERVER_CORE` with `taskset`; this generator pins itself to
//! `SHOAL_BENCH_LOAD_CORE`. Each simulated node is a task with its own keep-alive connections
//! (one for announces, one for peer lists), speaking HTTP/1.1 directly (cheaper than a full
//! client, so the generator keeps up), at shoald's cadence (`Swarm::run_announcer`: an
//! announce, 200 ms, then the rest of the 1 s interval unless a chunk arrived; while
//! downloading, a peer list of each blob in progress every 500 ms), paced as `HttpTrackers`
//! paces by a delta tracker's `min_interval_ms` and `peer_list_interval_ms`, with two of its
//! three exceptions: an announce naming a blob the tracker was not told of (a layer's
//! download starting) goes at once, and a short list (`proto::reusable_list`) is not reused.
//! The third, a fresh list for a starved download (`Planner::starved`, at most one per
//! 500 ms, `PeerRefresh::fresh`, once the kept list is half the pacing old,
//! `proto::reuse_kept_list`), is not modelled by default: these nodes take chunks at a fixed
//! rate and never starve (docs/tracker.md counts what it adds in the simulator).
//! `SHOAL_BENCH_FRESH` (0 to 1, default 0) plays it as a share: that share of a downloading
//! blob's 500 ms refreshes are a starved download's (so 1 is every download starved all the
//! time), to load the tracker with the lists the simulator counted.
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
//! against plaintext, with the node's own HTTP client; and the server's resident memory per
//! connection kept open, over TLS and in plaintext (`SHOAL_BENCH_TLS_CONNECTIONS` clients,
//! default 2000, each with its own connection and one small request).
//!
//! Reported per protocol and phase: announces/s and peer lists/s served, request bytes/s
//! (headers and bodies), p50/p99 latency of each, the server's CPU (utime + stime of the
//! child from `/proc/PID/stat`) per second and per request, and the load average (other work
//! on the machine shares the cores; CPU per request is the steadier figure).

mod conn;
mod node;
mod server;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_p2p::tracker::proto::{
    reusable_list_of, reuse_kept_list, Announce, DeltaAnnounce, DeltaReply,
};
use shoal_p2p::Digest;

use conn::{get, post, Conn};
use node::Node;
use server::{cpu_seconds, load_average, measure_tls, nice, prioritise, Server};

const WARMUP: Duration = Duration::from_secs(3);
pub(crate) const MIB: u64 = 1 << 20;

pub(crate) fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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
    /// The share of refreshes that are a starved download's (`SHOAL_BENCH_FRESH`).
    fresh: f64,
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
            // Paced as `HttpTrackers` paces: a round within the pacing is skipped unless it
            // names a blob the tracker was not told of (a layer's download starting).
            let paced = state.next_announce.is_some_and(|t| Instant::now() < t);
            if let (Some((_, taken)), true) = (&state.acked, paced) {
                if !announce.names_new_blob(taken) {
                    return Ok(None);
                }
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

/// A peer list's ids (the rest of [`shoal_p2p::tracker::proto::PeerList`] skipped).
#[derive(serde::Deserialize)]
struct ListIds<'a> {
    #[serde(borrow)]
    peers: Vec<ListId<'a>>,
}

#[derive(serde::Deserialize)]
struct ListId<'a> {
    peer_id: &'a str,
}

async fn run_peer_lists(
    plan: Arc<Plan>,
    node: Arc<std::sync::Mutex<Node>>,
    peers_every: Arc<std::sync::Mutex<Duration>>,
    offset: Duration,
    mut conn: Conn,
) -> (Tally, Conn) {
    // When each blob's last list kept for reuse was asked (`HttpTrackers` keeps only those
    // `reusable_list` allows).
    let mut kept: std::collections::HashMap<Digest, Instant> = Default::default();
    let mut tally = Tally::default();
    tokio::time::sleep(offset).await;
    let id = node.lock().expect("lock").id.clone();
    let seed = id.bytes().fold(offset.as_nanos() as u64, |h, b| {
        h.wrapping_mul(31).wrapping_add(u64::from(b))
    });
    let mut rng = fastrand::Rng::with_seed(seed);
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
            let fresh = plan.fresh > 0.0 && rng.f64() < plan.fresh;
            if kept
                .get(&digest)
                .is_some_and(|&at| reuse_kept_list(round - at, every, fresh))
            {
                continue;
            }
            let req = get(&format!("/v1/peers/{digest}?peer={id}"));
            let start = Instant::now();
            let result = conn.request(&req).await;
            let took = start.elapsed();
            if let Ok(a) = &result {
                // Only the ids are read: parsing whole lists took the generator's core.
                let list = serde_json::from_slice::<ListIds>(&a.body);
                if list.is_ok_and(|l| reusable_list_of(l.peers.iter().map(|p| p.peer_id), &id)) {
                    kept.insert(digest.clone(), round);
                }
            }
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

fn print_rows(nodes: usize, fresh: f64, rows: &mut [Row]) {
    println!();
    println!(
        "tracker load: {nodes} nodes, server pinned to one core, server and generator at nice {}, \
         {fresh} of the refreshes a starved download's",
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
    /// `SHOAL_BENCH_FRESH`.
    fresh: f64,
}

/// Runs both phases against `binary` with `protocol`.
fn run(binary: &Path, label: &str, protocol: Protocol, settings: Settings, rows: &mut Vec<Row>) {
    let Settings {
        nodes,
        secs,
        core,
        peers,
        fresh,
    } = settings;
    let server = Server::start(binary, core);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut rng = fastrand::Rng::with_seed(42);
    let (catalog, rollout_image) = node::catalog(&mut rng);
    let node_list: Vec<Arc<std::sync::Mutex<Node>>> = (0..nodes)
        .map(|i| {
            let mut held = Vec::new();
            let mut picks: Vec<usize> = (0..catalog.len()).collect();
            rng.shuffle(&mut picks);
            for &p in &picks[..3] {
                held.extend(catalog[p].iter().cloned());
            }
            Arc::new(std::sync::Mutex::new(Node::new(
                format!("node-{i:05}.cluster.example"),
                SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 7070)),
                held,
                fastrand::Rng::with_seed(i as u64),
            )))
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
            fresh,
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
    let fresh: f64 = env("SHOAL_BENCH_FRESH", 0.0);
    assert!(
        (0.0..=1.0).contains(&fresh),
        "SHOAL_BENCH_FRESH is a share, 0 to 1: {fresh}"
    );
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
        fresh,
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
    print_rows(nodes, fresh, &mut rows);
    let handshakes: usize = env("SHOAL_BENCH_TLS_HANDSHAKES", 2000);
    if handshakes > 0 {
        let connections: usize = env("SHOAL_BENCH_TLS_CONNECTIONS", 2000);
        measure_tls(
            &binary,
            server_core,
            handshakes.min(20_000),
            10_000,
            connections.clamp(1, 20_000),
        );
    }
}
