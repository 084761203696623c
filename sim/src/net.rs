//! The simulated network: fluid flows over per-endpoint upload and download links.
//!
//! Every endpoint (a node, or the registry side) has an upload cap and a download cap
//! (bytes/s). A flow moves bytes from one endpoint's upload link to another's download link
//! at `min(up / flows up, down / flows down)`: each link is shared equally among its flows,
//! and a flow goes at the slower of its two shares. The rates of the flows at the two ends
//! are recomputed whenever a flow starts or ends there, so the cost of an event is the number
//! of flows at those two endpoints, never the whole network. Capacity a flow cannot use
//! because its other end is slower is not given to the others (the model errs on the slow
//! side; see docs/simulator.md). Two what-ifs for small runs ([`Sharing`]) recompute every
//! flow's rate at every event: max-min fair sharing, and uploaders that send to their
//! oldest flow first.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A flow's id (its slot, reused after it ends).
pub type FlowId = usize;

#[derive(Clone, Debug)]
struct Flow {
    src: usize,
    dst: usize,
    size: f64,
    /// Bytes left at `updated`.
    left: f64,
    rate: f64,
    updated: f64,
    /// Bumped at every rate change: completions of an older version are stale.
    version: u64,
    live: bool,
}

impl Flow {
    /// Bytes moved since `updated`, by `now` (at most what is left).
    fn moved_by(&self, now: f64) -> f64 {
        (self.rate * (now - self.updated).max(0.0)).min(self.left)
    }
}

/// How links are shared among their flows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sharing {
    /// Each link equally among its flows, a flow at the smaller of its two shares (the
    /// model of the module documentation).
    #[default]
    Equal,
    /// A what-if, for small runs (every flow's rate recomputed at every event): max-min
    /// fair, capacity a flow cannot use at one end given to the others there.
    MaxMin,
    /// A what-if, for small runs: uploaders send to their oldest flow first and give what
    /// it cannot take to the next oldest (work-conserving priority by start); downloads
    /// max-min fair.
    OldestFirst,
}

impl Sharing {
    /// `equal`, `maxmin` or `oldest`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "equal" => Some(Sharing::Equal),
            "maxmin" => Some(Sharing::MaxMin),
            "oldest" => Some(Sharing::OldestFirst),
            _ => None,
        }
    }
}

/// Water-filling of `cap` among `demands`: the level each demand is cut to (infinite when
/// all fit).
fn level(cap: f64, demands: &mut [f64]) -> f64 {
    demands.sort_unstable_by(f64::total_cmp);
    let mut left = cap;
    let n = demands.len();
    for (k, &d) in demands.iter().enumerate() {
        let fair = left / (n - k) as f64;
        if d >= fair {
            return fair;
        }
        left -= d;
    }
    f64::INFINITY
}

/// The network (see the module documentation). Times are seconds from the simulation's
/// start.
pub struct Net {
    sharing: Sharing,
    up: Vec<f64>,
    down: Vec<f64>,
    ups: Vec<Vec<FlowId>>,
    downs: Vec<Vec<FlowId>>,
    flows: Vec<Flow>,
    free: Vec<FlowId>,
    /// (completion time in ns, flow, version), earliest first.
    done: BinaryHeap<Reverse<(u64, FlowId, u64)>>,
    sent: Vec<f64>,
}

fn ns(t: f64) -> u64 {
    (t * 1e9).ceil().max(0.0) as u64
}

impl Net {
    /// Endpoints with the upload and download caps (bytes/s, > 0) given.
    pub fn new(up: Vec<f64>, down: Vec<f64>) -> Self {
        assert_eq!(
            up.len(),
            down.len(),
            "one upload and one download cap per endpoint"
        );
        let n = up.len();
        Self {
            sharing: Sharing::Equal,
            up,
            down,
            ups: vec![Vec::new(); n],
            downs: vec![Vec::new(); n],
            flows: Vec::new(),
            free: Vec::new(),
            done: BinaryHeap::new(),
            sent: vec![0.0; n],
        }
    }

    /// Shares links as `sharing` says (before any flow starts).
    pub fn with_sharing(mut self, sharing: Sharing) -> Self {
        self.sharing = sharing;
        self
    }

    /// Starts a flow of `bytes` from `src` to `dst` at `now`.
    pub fn start(&mut self, now: f64, src: usize, dst: usize, bytes: u64) -> FlowId {
        let flow = Flow {
            src,
            dst,
            size: bytes as f64,
            left: bytes as f64,
            rate: 0.0,
            updated: now,
            version: 0,
            live: true,
        };
        let id = match self.free.pop() {
            Some(id) => {
                let version = self.flows[id].version + 1;
                self.flows[id] = Flow { version, ..flow };
                id
            }
            None => {
                self.flows.push(flow);
                self.flows.len() - 1
            }
        };
        self.ups[src].push(id);
        self.downs[dst].push(id);
        self.reshare(now, src, dst);
        id
    }

    /// Ends flow `id` at `now` (completed or cancelled); its bytes so far count as sent.
    /// Returns them.
    pub fn end(&mut self, now: f64, id: FlowId) -> f64 {
        if !self.flows.get(id).is_some_and(|f| f.live) {
            return 0.0;
        }
        self.advance(now, id);
        let moved = self.flows[id].size - self.flows[id].left;
        let (src, dst) = (self.flows[id].src, self.flows[id].dst);
        let f = &mut self.flows[id];
        f.live = false;
        f.version += 1;
        self.ups[src].retain(|&x| x != id);
        self.downs[dst].retain(|&x| x != id);
        self.free.push(id);
        self.reshare(now, src, dst);
        moved
    }

    /// Flow `id`'s bytes moved by `now`, of its size (0 of 0 when it is not live).
    pub fn progress(&self, now: f64, id: FlowId) -> (u64, u64) {
        match self.flows.get(id) {
            Some(f) if f.live => {
                let left = f.left - f.moved_by(now);
                ((f.size - left) as u64, f.size as u64)
            }
            _ => (0, 0),
        }
    }

    /// The earliest flow completion, if any: (time, flow).
    pub fn next_done(&mut self) -> Option<(f64, FlowId)> {
        while let Some(&Reverse((t, id, version))) = self.done.peek() {
            let f = &self.flows[id];
            if f.live && f.version == version {
                return Some((t as f64 / 1e9, id));
            }
            self.done.pop();
        }
        None
    }

    /// The flows at `endpoint`, up and down.
    pub fn flows_at(&self, endpoint: usize) -> Vec<FlowId> {
        let mut all = self.ups[endpoint].clone();
        all.extend_from_slice(&self.downs[endpoint]);
        all
    }

    /// The endpoints of flow `id`: (source, destination).
    pub fn ends(&self, id: FlowId) -> (usize, usize) {
        (self.flows[id].src, self.flows[id].dst)
    }

    /// Flows uploading from `endpoint`.
    pub fn uploads(&self, endpoint: usize) -> usize {
        self.ups[endpoint].len()
    }

    /// What `endpoint` uploads now (bytes/s).
    pub fn upload_rate(&self, endpoint: usize) -> f64 {
        self.ups[endpoint].iter().map(|&f| self.flows[f].rate).sum()
    }

    /// What `endpoint` downloads now (bytes/s).
    pub fn download_rate(&self, endpoint: usize) -> f64 {
        self.downs[endpoint]
            .iter()
            .map(|&f| self.flows[f].rate)
            .sum()
    }

    /// Bytes `endpoint` sent by `now` (flows in progress counted so far).
    pub fn sent(&self, endpoint: usize, now: f64) -> f64 {
        let running: f64 = self.ups[endpoint]
            .iter()
            .map(|&f| {
                let f = &self.flows[f];
                f.rate * (now - f.updated).max(0.0)
            })
            .sum();
        self.sent[endpoint] + running
    }

    fn advance(&mut self, now: f64, id: FlowId) {
        let f = &mut self.flows[id];
        let moved = f.moved_by(now);
        f.left -= moved;
        f.updated = now;
        self.sent[f.src] += moved;
    }

    /// New rates for every flow at `src`'s upload and `dst`'s download: only these links'
    /// flow counts changed.
    fn reshare(&mut self, now: f64, src: usize, dst: usize) {
        if self.sharing != Sharing::Equal {
            return self.reshare_all(now);
        }
        let mut touched: Vec<FlowId> =
            Vec::with_capacity(self.ups[src].len() + self.downs[dst].len());
        touched.extend_from_slice(&self.ups[src]);
        touched.extend_from_slice(&self.downs[dst]);
        for id in touched {
            let f = &self.flows[id];
            let rate = (self.up[f.src] / self.ups[f.src].len() as f64)
                .min(self.down[f.dst] / self.downs[f.dst].len() as f64);
            if rate == f.rate {
                // Its other end sets its rate: its completion stands (no new heap entry,
                // which would leave a stale one behind).
                continue;
            }
            self.set_rate(now, id, rate);
        }
    }

    fn set_rate(&mut self, now: f64, id: FlowId, rate: f64) {
        self.advance(now, id);
        let f = &mut self.flows[id];
        f.rate = rate;
        f.version += 1;
        // A flow given nothing (behind older ones under `OldestFirst`) waits for a rate.
        if rate > 0.0 {
            let at = now + f.left / rate;
            self.done.push(Reverse((ns(at), id, f.version)));
        }
    }

    /// Every flow's rate under [`Sharing::MaxMin`] or [`Sharing::OldestFirst`], by rounds
    /// until nothing moves: each upload link offers its flows what it would give them
    /// (`offer`: the water level, or by age what the older flows leave) given what their
    /// download links allow (`allow`), and each download link water-fills its capacity
    /// among those offers. A flow goes at the smaller of the two.
    fn reshare_all(&mut self, now: f64) {
        let n = self.flows.len();
        let mut allow = vec![f64::INFINITY; n];
        let mut offer = vec![0.0; n];
        let mut rate = vec![0.0; n];
        let mut scratch = Vec::new();
        for _ in 0..50 {
            for u in 0..self.up.len() {
                let flows = &self.ups[u];
                match self.sharing {
                    Sharing::OldestFirst => {
                        let mut left = self.up[u];
                        for &f in flows {
                            offer[f] = left;
                            let r = left.min(allow[f]);
                            rate[f] = r;
                            left = (left - r).max(0.0);
                        }
                    }
                    _ => {
                        scratch.clear();
                        scratch.extend(flows.iter().map(|&f| allow[f]));
                        let l = level(self.up[u], &mut scratch);
                        for &f in flows {
                            offer[f] = l;
                            rate[f] = l.min(allow[f]);
                        }
                    }
                }
            }
            let mut moved = false;
            for d in 0..self.down.len() {
                let flows = &self.downs[d];
                scratch.clear();
                scratch.extend(flows.iter().map(|&f| offer[f]));
                let l = level(self.down[d], &mut scratch);
                for &f in flows {
                    if (allow[f] - l).abs() > 1e-6 * self.down[d]
                        && !(allow[f].is_infinite() && l.is_infinite())
                    {
                        moved = true;
                    }
                    allow[f] = l;
                }
            }
            if !moved {
                break;
            }
        }
        for id in 0..n {
            if !self.flows[id].live {
                continue;
            }
            let r = rate[id].min(allow[id]);
            if (r - self.flows[id].rate).abs() > 1e-9 * r.max(1.0) {
                self.set_rate(now, id, r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: f64 = 1e6;

    fn run_to_end(net: &mut Net) -> Vec<(f64, FlowId)> {
        let mut out = Vec::new();
        while let Some((t, id)) = net.next_done() {
            net.end(t, id);
            out.push((t, id));
        }
        out
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn one_transfer_at_a_cap_takes_size_over_cap() {
        let mut net = Net::new(vec![10.0 * MB, 100.0 * MB], vec![100.0 * MB, 100.0 * MB]);
        net.start(0.0, 0, 1, 50_000_000);
        let done = run_to_end(&mut net);
        assert_eq!(done.len(), 1);
        assert!(close(done[0].0, 5.0), "{done:?}");
        assert!(close(net.sent(0, 5.0), 50.0 * MB));
    }

    #[test]
    fn the_slower_end_sets_the_rate() {
        let mut net = Net::new(vec![100.0 * MB, 100.0 * MB], vec![100.0 * MB, 20.0 * MB]);
        net.start(0.0, 0, 1, 40_000_000);
        assert!(close(run_to_end(&mut net)[0].0, 2.0));
    }

    #[test]
    fn two_transfers_sharing_an_upload_take_twice_as_long() {
        let mut net = Net::new(vec![10.0 * MB; 3], vec![100.0 * MB; 3]);
        net.start(0.0, 0, 1, 10_000_000);
        net.start(0.0, 0, 2, 10_000_000);
        let done = run_to_end(&mut net);
        assert!(close(done[0].0, 2.0) && close(done[1].0, 2.0), "{done:?}");
    }

    #[test]
    fn two_transfers_sharing_a_download_take_twice_as_long() {
        let mut net = Net::new(vec![100.0 * MB; 3], vec![10.0 * MB; 3]);
        net.start(0.0, 1, 0, 10_000_000);
        net.start(0.0, 2, 0, 10_000_000);
        let done = run_to_end(&mut net);
        assert!(close(done[0].0, 2.0) && close(done[1].0, 2.0), "{done:?}");
    }

    #[test]
    fn a_flow_speeds_up_when_the_other_ends() {
        // 10 MB/s shared: the 5 MB flow ends at 1 s (5 MB each), then the other has 5 MB
        // left alone at 10 MB/s: 1.5 s.
        let mut net = Net::new(vec![10.0 * MB; 3], vec![100.0 * MB; 3]);
        net.start(0.0, 0, 1, 5_000_000);
        net.start(0.0, 0, 2, 10_000_000);
        let done = run_to_end(&mut net);
        assert!(close(done[0].0, 1.0), "{done:?}");
        assert!(close(done[1].0, 1.5), "{done:?}");
        assert!(close(net.sent(0, 2.0), 15.0 * MB));
    }

    #[test]
    fn max_min_gives_what_a_slow_receiver_cannot_take_to_the_other_flow() {
        // An uploader of 10 MB/s to a receiver of 2 MB/s and one of 100 MB/s.
        let caps = || {
            (
                vec![10.0 * MB, 100.0 * MB, 100.0 * MB],
                vec![100.0 * MB, 2.0 * MB, 100.0 * MB],
            )
        };
        let (up, down) = caps();
        let mut equal = Net::new(up, down);
        equal.start(0.0, 0, 1, 2_000_000);
        equal.start(0.0, 0, 2, 10_000_000);
        assert!(
            close(equal.upload_rate(0), 7.0 * MB),
            "{}",
            equal.upload_rate(0)
        );
        let (up, down) = caps();
        let mut fair = Net::new(up, down).with_sharing(Sharing::MaxMin);
        fair.start(0.0, 0, 1, 2_000_000);
        let fast = fair.start(0.0, 0, 2, 10_000_000);
        assert!(close(fair.upload_rate(0), 10.0 * MB));
        // 2 MB at 2 MB/s and 8 MB/s beside it: both end at 1 s (8 MB), then 2 MB alone at 10.
        let done = run_to_end(&mut fair);
        assert!(close(done[0].0, 1.0), "{done:?}");
        assert_eq!(done[1].1, fast);
        assert!(close(done[1].0, 1.2), "{done:?}");
    }

    #[test]
    fn oldest_first_sends_one_flow_at_the_full_rate_then_the_next() {
        let mut net =
            Net::new(vec![10.0 * MB; 3], vec![100.0 * MB; 3]).with_sharing(Sharing::OldestFirst);
        let first = net.start(0.0, 0, 1, 10_000_000);
        let second = net.start(0.0, 0, 2, 10_000_000);
        let done = run_to_end(&mut net);
        assert_eq!(
            done.iter().map(|d| d.1).collect::<Vec<_>>(),
            vec![first, second]
        );
        assert!(close(done[0].0, 1.0) && close(done[1].0, 2.0), "{done:?}");
        // Work-conserving: what the oldest flow's receiver cannot take goes to the next.
        let mut net = Net::new(vec![10.0 * MB; 3], vec![100.0 * MB, 4.0 * MB, 100.0 * MB])
            .with_sharing(Sharing::OldestFirst);
        net.start(0.0, 0, 1, 4_000_000);
        net.start(0.0, 0, 2, 6_000_000);
        assert!(close(net.upload_rate(0), 10.0 * MB));
        let done = run_to_end(&mut net);
        assert!(close(done[0].0, 1.0) && close(done[1].0, 1.0), "{done:?}");
    }

    #[test]
    fn a_cancelled_flow_counts_what_it_sent_and_frees_the_link() {
        let mut net = Net::new(vec![10.0 * MB; 3], vec![100.0 * MB; 3]);
        let a = net.start(0.0, 0, 1, 100_000_000);
        net.start(0.0, 0, 2, 10_000_000);
        net.end(1.0, a);
        assert!(close(net.sent(0, 1.0), 10.0 * MB));
        // 5 MB left at 10 MB/s.
        let done = run_to_end(&mut net);
        assert_eq!(done.len(), 1);
        assert!(close(done[0].0, 1.5), "{done:?}");
        assert_eq!(net.uploads(0), 0);
    }
}
