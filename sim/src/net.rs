//! The simulated network: fluid flows over per-endpoint upload and download links.
//!
//! Every endpoint (a node, or the registry side) has an upload cap and a download cap
//! (bytes/s). A flow moves bytes from one endpoint's upload link to another's download link
//! at `min(up / flows up, down / flows down)`: each link is shared equally among its flows,
//! and a flow goes at the slower of its two shares. The rates of the flows at the two ends
//! are recomputed whenever a flow starts or ends there, so the cost of an event is the number
//! of flows at those two endpoints, never the whole network. Capacity a flow cannot use
//! because its other end is slower is not given to the others (the model errs on the slow
//! side; see docs/simulator.md). Two what-ifs ([`Sharing`]): max-min fair sharing, and
//! uploaders that send to their oldest flow first. Their rates are a fixed point over the
//! whole network, kept from event to event: an event recomputes the links it touches and
//! then only the links whose flows' shares changed, until nothing changes.

use std::collections::BTreeSet;

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
    /// Its completion's entry in `Net::done` (none while it has no rate).
    due: Option<u64>,
    live: bool,
    /// The what-ifs (every [`Sharing`] but `Equal`): what its upload link offers it and
    /// what its download link allows it; its rate is the smaller.
    offer: f64,
    allow: f64,
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
    /// A what-if: max-min fair, capacity a flow cannot use at one end given to the others
    /// there.
    MaxMin,
    /// A what-if: uploaders send to their oldest flow first and give what it cannot take
    /// to the next oldest (work-conserving priority by start); downloads max-min fair.
    OldestFirst,
    /// A what-if: [`Sharing::MaxMin`], but the registry side's uploads go oldest first (the
    /// seeder alone pacing its uploads: `[seed] upload_bytes_per_sec`).
    SeederOldest,
}

impl Sharing {
    /// `equal`, `maxmin` or `oldest`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "equal" => Some(Sharing::Equal),
            "maxmin" => Some(Sharing::MaxMin),
            "oldest" => Some(Sharing::OldestFirst),
            "seeder-oldest" => Some(Sharing::SeederOldest),
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
#[derive(Clone)]
pub struct Net {
    sharing: Sharing,
    up: Vec<f64>,
    down: Vec<f64>,
    ups: Vec<Vec<FlowId>>,
    downs: Vec<Vec<FlowId>>,
    flows: Vec<Flow>,
    free: Vec<FlowId>,
    /// (completion time in ns, flow) of every flow with a rate, earliest first: one entry
    /// per flow, moved when its rate changes.
    done: BTreeSet<(u64, FlowId)>,
    sent: Vec<f64>,
    /// [`Self::reshare_from`]'s links to recompute: empty between events (kept for its
    /// buffers).
    work: Work,
    /// Upload links that send to their oldest flow first (every one under
    /// [`Sharing::OldestFirst`]).
    oldest_up: Vec<bool>,
    /// The what-ifs' shares are settled to this fraction of a link's cap (a link whose
    /// inputs shrank by less is not recomputed). 1%: the figures of N = 16-100 runs within
    /// 1.3% of those recomputed at every event, N = 100 oldest first 2.4 times faster than
    /// at a ten-thousandth.
    tolerance: f64,
}

/// [`Net::reshare_from`]'s links to recompute, each at most once at a time: upload links
/// (`0..n`) before download links (`n..2n`), since a download link shares what the uploads
/// offer now.
#[derive(Clone, Default)]
struct Work {
    ups: std::collections::VecDeque<usize>,
    downs: std::collections::VecDeque<usize>,
    /// Whether each link is waiting.
    queued: Vec<bool>,
}

impl Work {
    fn new(n: usize) -> Self {
        Self {
            queued: vec![false; 2 * n],
            ..Self::default()
        }
    }

    /// Queues `link` unless it is waiting already.
    fn push(&mut self, link: usize) {
        if std::mem::replace(&mut self.queued[link], true) {
            return;
        }
        if link < self.queued.len() / 2 {
            self.ups.push_back(link);
        } else {
            self.downs.push_back(link);
        }
    }

    fn pop(&mut self) -> Option<usize> {
        let link = self.ups.pop_front().or_else(|| self.downs.pop_front())?;
        self.queued[link] = false;
        Some(link)
    }
}

/// Whether a share that went from `old` to `new` must be passed on to the link at its
/// flow's other end: when it grew at all (by more than rounding: that link may give the
/// flow more than it counted on, and would then send more than its cap), or shrank by
/// more than `eps` (a smaller drop only leaves that link's others a little it could have
/// given them).
fn moved(old: f64, new: f64, eps: f64) -> bool {
    if old.is_infinite() && new.is_infinite() {
        return false;
    }
    new - old > eps * 1e-7 || old - new > eps
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
            done: BTreeSet::new(),
            sent: vec![0.0; n],
            work: Work::new(n),
            oldest_up: vec![false; n],
            tolerance: 1e-2,
        }
    }

    /// Shares links as `sharing` says (before any flow starts).
    pub fn with_sharing(mut self, sharing: Sharing) -> Self {
        self.sharing = sharing;
        if sharing == Sharing::OldestFirst {
            self.oldest_up.fill(true);
        }
        self
    }

    /// Shares settled to `tolerance` of a link's cap (tests: closer than the default).
    #[cfg(test)]
    fn with_tolerance(mut self, tolerance: f64) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// Under [`Sharing::SeederOldest`], `endpoint` (the registry side) is the uploader that
    /// sends to its oldest flow first.
    pub fn with_oldest_uploader(mut self, endpoint: usize) -> Self {
        if self.sharing == Sharing::SeederOldest {
            self.oldest_up[endpoint] = true;
        }
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
            due: None,
            live: true,
            offer: 0.0,
            allow: f64::INFINITY,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.flows[id] = flow;
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
        if let Some(t) = f.due.take() {
            self.done.remove(&(t, id));
        }
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
        self.done.first().map(|&(t, id)| (t as f64 / 1e9, id))
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
            return self.reshare_from(now, src, dst);
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
                // Its other end sets its rate: its completion stands.
                continue;
            }
            self.set_rate(now, id, rate);
        }
    }

    fn set_rate(&mut self, now: f64, id: FlowId, rate: f64) {
        self.advance(now, id);
        let f = &mut self.flows[id];
        f.rate = rate;
        if let Some(t) = f.due.take() {
            self.done.remove(&(t, id));
        }
        // A flow given nothing (behind older ones under `OldestFirst`) waits for a rate.
        if rate > 0.0 {
            let t = ns(now + f.left / rate);
            f.due = Some(t);
            self.done.insert((t, id));
        }
    }

    /// The flows' rates under the what-ifs (every [`Sharing`] but `Equal`) after `src`'s
    /// upload and `dst`'s download changed: the fixed point of the rules of
    /// [`Self::reshare_all`], reached from the last one. Each upload link offers its flows
    /// what it would give them given what their download links allow, each download link
    /// water-fills its capacity among the offers, and a link is recomputed only when
    /// something it reads grew, or shrank by more than `tolerance` of its cap ([`moved`]).
    fn reshare_from(&mut self, now: f64, src: usize, dst: usize) {
        let n = self.up.len();
        let mut work = std::mem::take(&mut self.work);
        work.push(src);
        work.push(n + dst);
        if self.sharing != Sharing::MaxMin {
            // Priorities can hold more than one fixed point (two flows from one uploader
            // to one receiver splitting it, the older one held by the younger's share):
            // the flows at the two links start again from no limit at their receivers, as
            // every flow does when it starts, so that the older flows take first.
            for (flows, far) in [(&self.ups[src], true), (&self.downs[dst], false)] {
                for &f in flows {
                    self.flows[f].allow = f64::INFINITY;
                    work.push(if far {
                        n + self.flows[f].dst
                    } else {
                        self.flows[f].src
                    });
                }
            }
        }
        let mut touched = Vec::new();
        let mut scratch = Vec::new();
        while let Some(link) = work.pop() {
            if link < n {
                let u = link;
                let eps = self.tolerance * self.up[u];
                let mut left = self.up[u];
                let oldest = self.oldest_up[u];
                let water = if oldest {
                    f64::INFINITY
                } else {
                    scratch.clear();
                    scratch.extend(self.ups[u].iter().map(|&f| self.flows[f].allow));
                    level(self.up[u], &mut scratch)
                };
                for &f in &self.ups[u] {
                    let offer = if oldest {
                        let o = left;
                        left = (left - o.min(self.flows[f].allow)).max(0.0);
                        o
                    } else {
                        water
                    };
                    touched.push(f);
                    let old = std::mem::replace(&mut self.flows[f].offer, offer);
                    if moved(old, offer, eps) {
                        work.push(n + self.flows[f].dst);
                    }
                }
            } else {
                let d = link - n;
                let eps = self.tolerance * self.down[d];
                scratch.clear();
                scratch.extend(self.downs[d].iter().map(|&f| self.flows[f].offer));
                let l = level(self.down[d], &mut scratch);
                for &f in &self.downs[d] {
                    touched.push(f);
                    let old = std::mem::replace(&mut self.flows[f].allow, l);
                    if moved(old, l, eps) {
                        work.push(self.flows[f].src);
                    }
                }
            }
        }
        self.work = work;
        touched.sort_unstable();
        touched.dedup();
        for id in touched {
            if !self.flows[id].live {
                continue;
            }
            // A rate that moves by less than a ten-thousandth keeps its completion (a link
            // may then carry up to that much over its cap).
            let r = self.flows[id].offer.min(self.flows[id].allow);
            if (r - self.flows[id].rate).abs() > 1e-4 * r.max(self.flows[id].rate).max(1.0) {
                self.set_rate(now, id, r);
            }
        }
    }

    /// Every flow's rate under the what-ifs, by rounds
    /// until nothing moves: each upload link offers its flows what it would give them
    /// (`offer`: the water level, or by age what the older flows leave) given what their
    /// download links allow (`allow`), and each download link water-fills its capacity
    /// among those offers. A flow goes at the smaller of the two. It recomputes every flow
    /// at every event, from no limits (`from_kept`: from what the download links allow
    /// now): the reference [`Self::reshare_from`] is tested against.
    #[cfg(test)]
    fn reshare_all(&mut self, now: f64, from_kept: bool) {
        let n = self.flows.len();
        let mut allow = if from_kept {
            self.flows.iter().map(|f| f.allow).collect()
        } else {
            vec![f64::INFINITY; n]
        };
        let mut offer = vec![0.0; n];
        let mut rate = vec![0.0; n];
        let mut scratch = Vec::new();
        for _ in 0..50 {
            for u in 0..self.up.len() {
                let flows = &self.ups[u];
                if self.oldest_up[u] {
                    let mut left = self.up[u];
                    for &f in flows {
                        offer[f] = left;
                        let r = left.min(allow[f]);
                        rate[f] = r;
                        left = (left - r).max(0.0);
                    }
                } else {
                    scratch.clear();
                    scratch.extend(flows.iter().map(|&f| allow[f]));
                    let l = level(self.up[u], &mut scratch);
                    for &f in flows {
                        offer[f] = l;
                        rate[f] = l.min(allow[f]);
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

    /// Flows started (at most one per pair, as a node asks a peer for one chunk at a time)
    /// and ended at random on `n` endpoints of several caps, under each what-if, 300 seeds
    /// of 60 events; `check(sharing, seed, net, live flows, now)` after each event. Shares
    /// settled to `tolerance` of a cap (`None`: the default).
    fn random_events(
        n: usize,
        tolerance: Option<f64>,
        mut check: impl FnMut(Sharing, u64, &Net, &[FlowId], f64),
    ) {
        for sharing in [Sharing::MaxMin, Sharing::SeederOldest, Sharing::OldestFirst] {
            for seed in 0..300u64 {
                let mut rng = fastrand::Rng::with_seed(seed);
                let caps = [2.0 * MB, 5.0 * MB, 10.0 * MB, 40.0 * MB];
                let up: Vec<f64> = (0..n).map(|_| caps[rng.usize(0..4)]).collect();
                let down: Vec<f64> = (0..n).map(|_| caps[rng.usize(0..4)]).collect();
                let mut net = Net::new(up, down)
                    .with_sharing(sharing)
                    .with_oldest_uploader(0);
                if let Some(t) = tolerance {
                    net = net.with_tolerance(t);
                }
                let mut live: Vec<FlowId> = Vec::new();
                for step in 1..=60 {
                    let now = step as f64 * 0.01;
                    if live.is_empty() || rng.f64() < 0.6 {
                        let src = rng.usize(0..n);
                        let dst = (src + rng.usize(1..n)) % n;
                        if live.iter().any(|&f| net.ends(f) == (src, dst)) {
                            continue;
                        }
                        live.push(net.start(now, src, dst, 1_000_000_000));
                    } else {
                        let k = rng.usize(0..live.len());
                        net.end(now, live.swap_remove(k));
                    }
                    check(sharing, seed, &net, &live, now);
                }
            }
        }
    }

    /// The rates kept from event to event are those of recomputing every flow. Max-min
    /// fair shares are unique; with every uploader sending oldest first there can be
    /// several fixed points (two uploaders each sending oldest to a receiver the other
    /// sends its younger flow to: both receivers may split their link, or each take its
    /// older flow whole), so there the kept rates are checked to be one: a round of the
    /// rules from them moves nothing.
    #[test]
    fn rates_kept_between_events_match_recomputing_every_flow() {
        random_events(6, Some(1e-6), |sharing, seed, net, live, now| {
            let mut reference = net.clone();
            reference.reshare_all(now, sharing == Sharing::OldestFirst);
            for &id in live {
                let (kept, all) = (net.flows[id].rate, reference.flows[id].rate);
                assert!(
                    (kept - all).abs() <= 1e-4 * MB,
                    "{sharing:?} seed {seed}: flow {id} at {kept} against {all}"
                );
            }
        });
    }

    /// At the default tolerance (shares settled to 1% of a cap, drops under it not passed
    /// on) no link ever carries more than its cap.
    #[test]
    fn settled_to_the_tolerance_no_link_exceeds_its_cap() {
        random_events(8, None, |sharing, seed, net, _, _| {
            for e in 0..net.up.len() {
                let (sent, got) = (net.upload_rate(e), net.download_rate(e));
                assert!(
                    sent <= net.up[e] * (1.0 + 1e-6) && got <= net.down[e] * (1.0 + 1e-6),
                    "{sharing:?} seed {seed}: endpoint {e} sends {sent} of {}, receives {got} of {}",
                    net.up[e],
                    net.down[e]
                );
            }
        });
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
