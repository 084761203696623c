//! Have streams: `GET /v1/blobs/<digest>/have` on a node's chunk server answers `200`
//! (`application/x-ndjson`) with one JSON line of the node's state of the blob at once, then
//! one line each time it changes, so that subscribed peers learn of a chunk a few
//! milliseconds after it arrived instead of at their next peer list (docs/swarm.md, "Have
//! streams").
//!
//! A line is [`HaveLine`]: `{"chunks": N, "have": <set>, "fetching": <set> | null, "done":
//! bool}`, the sets in [`ChunkSet::encode`]'s form (as in the trackers' peer lists). Lines are
//! coalesced: at most one per [`HAVE_COALESCE`], a change inside that window goes out at its
//! end, and the last line always gives the latest state. A blob held whole gives one line
//! with `have: "all"`, `done: true`, and the body ends; a download that fails or is
//! abandoned ends the body without `done`.
//!
//! This module is the codec ([`HaveLine`], [`HaveDecoder`]), the server's feed of one blob
//! ([`HaveFeed`], turned into lines by [`HaveFeed::lines`]) and the server's stream slots
//! ([`HaveSlots`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::tracker::proto::ProtoError;
use crate::tracker::ChunkSet;

/// At most one line per this long per stream.
pub const HAVE_COALESCE: Duration = Duration::from_millis(10);
/// Have streams a chunk server serves at once by default (`swarm.max_have_streams`).
pub const DEFAULT_MAX_HAVE_STREAMS: usize = 256;
/// The content type of a have stream.
pub const HAVE_CONTENT_TYPE: &str = "application/x-ndjson";

/// One line of a have stream (without its `\n`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaveLine {
    /// Chunks of the blob (as in its chunk manifest).
    pub chunks: u32,
    /// The chunks held and verified ([`ChunkSet::encode`]).
    pub have: String,
    /// The chunks being fetched (`None`: none).
    #[serde(default)]
    pub fetching: Option<String>,
    /// The blob is held whole: the last line.
    #[serde(default)]
    pub done: bool,
}

/// A have line decoded for a blob of a known chunk count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaveUpdate {
    pub have: ChunkSet,
    pub fetching: ChunkSet,
    pub done: bool,
}

/// Why a have stream's body is unusable (the subscriber ends that subscription).
#[derive(Debug, thiserror::Error)]
pub enum HaveLineError {
    #[error("have line longer than {max} bytes")]
    TooLong { max: usize },
    #[error("malformed have line: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("have line for {got} chunks, the blob has {want}")]
    Chunks { got: u32, want: u32 },
    #[error("have line: {0}")]
    Set(#[from] ProtoError),
    #[error("have line says done without every chunk")]
    DoneNotFull,
}

impl HaveLine {
    /// The state of a blob being downloaded.
    pub fn progress(have: &ChunkSet, fetching: &ChunkSet) -> Self {
        Self {
            chunks: have.len(),
            have: have.encode(),
            fetching: (fetching.count() > 0).then(|| fetching.encode()),
            done: false,
        }
    }

    /// A blob of `chunks` chunks held whole.
    pub fn done(chunks: u32) -> Self {
        Self {
            chunks,
            have: ChunkSet::full(chunks).encode(),
            fetching: None,
            done: true,
        }
    }

    /// The line on the wire: compact JSON and `\n`.
    pub fn encode(&self) -> Bytes {
        let mut out = serde_json::to_vec(self).expect("a have line serializes");
        out.push(b'\n');
        Bytes::from(out)
    }

    /// Decodes this line for a blob of `chunks` chunks.
    pub fn update(&self, chunks: u32) -> Result<HaveUpdate, HaveLineError> {
        if self.chunks != chunks {
            return Err(HaveLineError::Chunks {
                got: self.chunks,
                want: chunks,
            });
        }
        let have = ChunkSet::decode(&self.have, chunks)?;
        let fetching = match &self.fetching {
            Some(text) => ChunkSet::decode(text, chunks)?,
            None => ChunkSet::empty(chunks),
        };
        if self.done && !have.is_full() {
            return Err(HaveLineError::DoneNotFull);
        }
        Ok(HaveUpdate {
            have,
            fetching,
            done: self.done,
        })
    }
}

/// The longest line a blob of `chunks` chunks can give: both sets in full plus room for the
/// rest (a longer one is an error).
pub fn max_line_len(chunks: u32) -> usize {
    let set = (chunks as usize).div_ceil(8).div_ceil(3) * 4;
    1024 + 2 * set
}

/// Splits a have stream's body into decoded lines for a blob of `chunks` chunks, whatever
/// pieces the body arrives in.
pub struct HaveDecoder {
    chunks: u32,
    max: usize,
    buf: BytesMut,
}

impl HaveDecoder {
    pub fn new(chunks: u32) -> Self {
        Self {
            chunks,
            max: max_line_len(chunks),
            buf: BytesMut::new(),
        }
    }

    /// Takes the next piece of the body.
    pub fn push(&mut self, piece: &[u8]) {
        self.buf.extend_from_slice(piece);
    }

    /// The next complete line, decoded (`None`: more of the body is needed).
    pub fn next_line(&mut self) -> Result<Option<HaveUpdate>, HaveLineError> {
        let Some(end) = self.buf.iter().position(|&b| b == b'\n') else {
            if self.buf.len() > self.max {
                return Err(HaveLineError::TooLong { max: self.max });
            }
            return Ok(None);
        };
        let line = self.buf.split_to(end + 1);
        if end > self.max {
            return Err(HaveLineError::TooLong { max: self.max });
        }
        let line: HaveLine = serde_json::from_slice(&line[..end])?;
        line.update(self.chunks).map(Some)
    }

    /// [`Self::push`], then every line completed.
    #[cfg(test)]
    fn push_lines(&mut self, piece: &[u8]) -> Result<Vec<HaveUpdate>, HaveLineError> {
        self.push(piece);
        let mut out = Vec::new();
        while let Some(update) = self.next_line()? {
            out.push(update);
        }
        Ok(out)
    }

    /// Bytes of an unfinished line (the body ended in the middle of one when not 0).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// A node's state of one blob, as its have stream reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HaveState {
    /// Downloading: the chunks held and those being fetched.
    Progress { have: ChunkSet, fetching: ChunkSet },
    /// Held whole.
    Done,
    /// The download failed or was abandoned.
    Ended,
}

/// Reads a blob's [`HaveState`] now.
pub type ReadHave = Box<dyn Fn() -> HaveState + Send + Sync>;

/// What a have stream serves for one blob: its chunk count, its state now, and a channel
/// that changes whenever the state may have.
pub struct HaveFeed {
    chunks: u32,
    changes: Option<watch::Receiver<u64>>,
    read: ReadHave,
}

impl HaveFeed {
    /// A blob of `chunks` chunks held whole (one `done` line).
    pub fn complete(chunks: u32) -> Self {
        Self {
            chunks,
            changes: None,
            read: Box::new(|| HaveState::Done),
        }
    }

    /// A blob of `chunks` chunks being downloaded: `read` gives its state, `changes` changes
    /// after every change of it.
    pub fn live(chunks: u32, changes: watch::Receiver<u64>, read: ReadHave) -> Self {
        Self {
            chunks,
            changes: Some(changes),
            read,
        }
    }

    /// The stream's lines: the state at once, then each change, at most one line per
    /// `coalesce`; ends after a `done` line, or when the download ends otherwise.
    pub fn lines(self, coalesce: Duration) -> impl Stream<Item = Bytes> + Send + 'static {
        let start = Lines {
            feed: self,
            coalesce,
            last: None,
            sent_at: None,
            finished: false,
        };
        futures::stream::unfold(start, Lines::next)
    }
}

/// [`HaveFeed::lines`]'s state.
struct Lines {
    feed: HaveFeed,
    coalesce: Duration,
    /// The last line sent.
    last: Option<HaveLine>,
    sent_at: Option<tokio::time::Instant>,
    /// The last line was sent (a `done`, or the feed cannot change any more).
    finished: bool,
}

impl Lines {
    async fn next(mut self) -> Option<(Bytes, Self)> {
        loop {
            if self.finished {
                return None;
            }
            if self.last.is_some() {
                if let Some(at) = self.sent_at {
                    tokio::time::sleep_until(at + self.coalesce).await;
                }
                match &mut self.feed.changes {
                    Some(changes) => {
                        if changes.changed().await.is_err() {
                            // Nothing can change any more: the state now is the last line.
                            self.finished = true;
                        }
                    }
                    None => return None,
                }
            }
            if let Some(changes) = &mut self.feed.changes {
                changes.borrow_and_update();
            }
            let line = match (self.feed.read)() {
                HaveState::Done => {
                    self.finished = true;
                    HaveLine::done(self.feed.chunks)
                }
                HaveState::Ended => return None,
                HaveState::Progress { have, fetching } => HaveLine::progress(&have, &fetching),
            };
            if self.last.as_ref() == Some(&line) {
                continue;
            }
            self.sent_at = Some(tokio::time::Instant::now());
            let bytes = line.encode();
            self.last = Some(line);
            return Some((bytes, self));
        }
    }
}

/// The chunk server's have-stream slots: at most `max` streams at once (more get `503`).
#[derive(Clone)]
pub struct HaveSlots {
    open: Arc<AtomicUsize>,
    max: usize,
    gauge: Gauge,
}

/// One stream's slot; given back when dropped.
pub struct HaveSlot {
    open: Arc<AtomicUsize>,
    gauge: Gauge,
}

impl HaveSlots {
    /// `max` slots, counted in `gauge` (`shoal_upload_have_streams`).
    pub fn new(max: usize, gauge: Gauge) -> Self {
        Self {
            open: Arc::new(AtomicUsize::new(0)),
            max,
            gauge,
        }
    }

    /// A slot, if one is free.
    pub fn try_acquire(&self) -> Option<HaveSlot> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            });
        taken.ok().map(|_| {
            self.gauge.inc();
            HaveSlot {
                open: self.open.clone(),
                gauge: self.gauge.clone(),
            }
        })
    }
}

impl Drop for HaveSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn set(n: u32, held: &[u32]) -> ChunkSet {
        let mut s = ChunkSet::empty(n);
        for &i in held {
            s.insert(i);
        }
        s
    }

    #[test]
    fn lines_encode_as_the_spec_says_and_decode_back() {
        let line = HaveLine::progress(&set(10, &[0, 9]), &set(10, &[3]));
        let text = line.encode();
        assert_eq!(
            std::str::from_utf8(&text).unwrap(),
            format!(
                "{{\"chunks\":10,\"have\":\"{}\",\"fetching\":\"{}\",\"done\":false}}\n",
                set(10, &[0, 9]).encode(),
                set(10, &[3]).encode()
            )
        );
        let idle = HaveLine::progress(&set(10, &[1]), &ChunkSet::empty(10)).encode();
        assert!(std::str::from_utf8(&idle)
            .unwrap()
            .contains("\"fetching\":null"));
        assert_eq!(
            &HaveLine::done(10).encode()[..],
            b"{\"chunks\":10,\"have\":\"all\",\"fetching\":null,\"done\":true}\n"
        );
        let mut d = HaveDecoder::new(10);
        let mut all = Vec::new();
        // In pieces, split anywhere.
        let both = [text.clone(), HaveLine::done(10).encode()].concat();
        for piece in both.chunks(7) {
            all.extend(d.push_lines(piece).unwrap());
        }
        assert_eq!(d.pending(), 0);
        assert_eq!(
            all,
            vec![
                HaveUpdate {
                    have: set(10, &[0, 9]),
                    fetching: set(10, &[3]),
                    done: false
                },
                HaveUpdate {
                    have: ChunkSet::full(10),
                    fetching: ChunkSet::empty(10),
                    done: true
                }
            ]
        );
        // Truncated: nothing yet, the rest is pending.
        let mut d = HaveDecoder::new(10);
        assert!(d.push_lines(&text[..text.len() - 3]).unwrap().is_empty());
        assert!(d.pending() > 0);
    }

    #[test]
    fn bad_lines_are_errors() {
        let mut d = HaveDecoder::new(10);
        assert!(matches!(
            d.push_lines(b"{\"chunks\":10,\"have\n"),
            Err(HaveLineError::Malformed(_))
        ));
        let mut d = HaveDecoder::new(10);
        let other = HaveLine::progress(&set(11, &[0]), &ChunkSet::empty(11)).encode();
        assert!(matches!(
            d.push_lines(&other),
            Err(HaveLineError::Chunks { got: 11, want: 10 })
        ));
        let mut d = HaveDecoder::new(10);
        assert!(matches!(
            d.push_lines(b"{\"chunks\":10,\"have\":\"!!\"}\n"),
            Err(HaveLineError::Set(_))
        ));
        let mut d = HaveDecoder::new(10);
        let lying = HaveLine {
            done: true,
            ..HaveLine::progress(&set(10, &[1]), &ChunkSet::empty(10))
        };
        assert!(matches!(
            d.push_lines(&lying.encode()),
            Err(HaveLineError::DoneNotFull)
        ));
        // A line that never ends is refused once past the limit, newline or not.
        let mut d = HaveDecoder::new(10);
        let max = max_line_len(10);
        assert!(max < 4096);
        assert!(d.push_lines(&vec![b' '; max]).unwrap().is_empty());
        assert!(matches!(
            d.push_lines(b"  "),
            Err(HaveLineError::TooLong { .. })
        ));
        let mut d = HaveDecoder::new(10);
        let mut long = vec![b' '; max + 1];
        long.push(b'\n');
        assert!(matches!(
            d.push_lines(&long),
            Err(HaveLineError::TooLong { .. })
        ));
        // Room for the largest real line.
        let n = 100_000;
        let mut d = HaveDecoder::new(n);
        let mut odd = ChunkSet::empty(n);
        let mut even = ChunkSet::empty(n);
        for i in 0..n {
            if i % 2 == 0 { &mut even } else { &mut odd }.insert(i);
        }
        let line = HaveLine::progress(&odd, &even);
        assert_eq!(d.push_lines(&line.encode()).unwrap().len(), 1);
    }

    /// A feed whose state the test sets.
    fn feed(
        n: u32,
    ) -> (
        HaveFeed,
        Arc<std::sync::Mutex<HaveState>>,
        watch::Sender<u64>,
    ) {
        let state = Arc::new(std::sync::Mutex::new(HaveState::Progress {
            have: ChunkSet::empty(n),
            fetching: ChunkSet::empty(n),
        }));
        let (tx, rx) = watch::channel(0);
        let reading = state.clone();
        let read: ReadHave = Box::new(move || reading.lock().unwrap().clone());
        (HaveFeed::live(n, rx, read), state, tx)
    }

    fn decode(line: &Bytes, n: u32) -> HaveUpdate {
        let mut d = HaveDecoder::new(n);
        d.push_lines(line).unwrap().remove(0)
    }

    #[tokio::test(start_paused = true)]
    async fn changes_are_coalesced_and_the_last_one_always_goes_out() {
        let (feed, state, tx) = feed(8);
        let lines = feed.lines(HAVE_COALESCE);
        futures::pin_mut!(lines);
        let start = tokio::time::Instant::now();
        // The state at once.
        let first = lines.next().await.unwrap();
        assert_eq!(decode(&first, 8).have, ChunkSet::empty(8));
        assert_eq!(start.elapsed(), Duration::ZERO);
        // Three changes within 1 ms: one line, with the last of them, at the window's end.
        for held in [&[0][..], &[0, 1], &[0, 1, 2]] {
            *state.lock().unwrap() = HaveState::Progress {
                have: set(8, held),
                fetching: set(8, &[5]),
            };
            tx.send_modify(|v| *v += 1);
        }
        let second = lines.next().await.unwrap();
        assert_eq!(start.elapsed(), HAVE_COALESCE);
        let update = decode(&second, 8);
        assert_eq!(update.have, set(8, &[0, 1, 2]));
        assert_eq!(update.fetching, set(8, &[5]));
        // A wake-up without a change sends nothing; a change long after goes out at once.
        tx.send_modify(|v| *v += 1);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let at = tokio::time::Instant::now();
        *state.lock().unwrap() = HaveState::Progress {
            have: set(8, &[0, 1, 2, 3]),
            fetching: ChunkSet::empty(8),
        };
        tx.send_modify(|v| *v += 1);
        let third = lines.next().await.unwrap();
        assert_eq!(at.elapsed(), Duration::ZERO);
        assert_eq!(decode(&third, 8).have, set(8, &[0, 1, 2, 3]));
        // Done: one last line, then the end.
        *state.lock().unwrap() = HaveState::Done;
        tx.send_modify(|v| *v += 1);
        let last = lines.next().await.unwrap();
        assert!(decode(&last, 8).done);
        assert!(lines.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_download_ends_the_stream_without_done() {
        let (feed, state, tx) = feed(4);
        let lines = feed.lines(HAVE_COALESCE);
        futures::pin_mut!(lines);
        assert!(!decode(&lines.next().await.unwrap(), 4).done);
        *state.lock().unwrap() = HaveState::Ended;
        tx.send_modify(|v| *v += 1);
        assert!(lines.next().await.is_none());
        // A complete blob: one done line.
        let lines: Vec<Bytes> = HaveFeed::complete(4).lines(HAVE_COALESCE).collect().await;
        assert_eq!(lines, vec![HaveLine::done(4).encode()]);
    }

    #[test]
    fn slots_are_limited_and_given_back() {
        let gauge = Gauge::default();
        let slots = HaveSlots::new(2, gauge.clone());
        let a = slots.try_acquire().unwrap();
        let _b = slots.try_acquire().unwrap();
        assert!(slots.try_acquire().is_none());
        assert_eq!(gauge.get(), 2);
        drop(a);
        assert_eq!(gauge.get(), 1);
        assert!(slots.try_acquire().is_some());
    }
}
