//! The decompressed byte stream as the extraction thread sees it: chunks handed over a
//! bounded channel by the decompression thread, read in place (no copy for file data) and
//! handed back for reuse.

use std::io;
use std::sync::mpsc::{Receiver, SyncSender};

use shoal_p2p::{Digest, Hasher};

/// Size of one decompressed chunk.
pub(crate) const CHUNK: usize = 256 * 1024;

pub(crate) struct Chunk {
    pub buf: Vec<u8>,
    pub len: usize,
}

pub(crate) struct Input {
    rx: Receiver<io::Result<Chunk>>,
    recycle: SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    len: usize,
    done: bool,
    /// The diff ID, hashed here to balance the work between the two threads.
    hasher: Hasher,
    total: u64,
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "layer data ended early")
}

impl Input {
    pub fn new(rx: Receiver<io::Result<Chunk>>, recycle: SyncSender<Vec<u8>>) -> Self {
        Self {
            rx,
            recycle,
            cur: Vec::new(),
            pos: 0,
            len: 0,
            done: false,
            hasher: Hasher::new(),
            total: 0,
        }
    }

    /// Makes unread bytes available; false at the end of the stream.
    fn fill(&mut self) -> io::Result<bool> {
        if self.pos < self.len {
            return Ok(true);
        }
        loop {
            if self.done {
                return Ok(false);
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    let old = std::mem::replace(&mut self.cur, chunk.buf);
                    if !old.is_empty() {
                        let _ = self.recycle.try_send(old);
                    }
                    self.pos = 0;
                    self.len = chunk.len;
                    self.hasher.update(&self.cur[..self.len]);
                    self.total += self.len as u64;
                    if self.len > 0 {
                        return Ok(true);
                    }
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => self.done = true,
            }
        }
    }

    /// Up to `max` (> 0) unread bytes; an error at the end of the stream.
    pub fn take(&mut self, max: usize) -> io::Result<&[u8]> {
        if !self.fill()? {
            return Err(eof());
        }
        let n = max.min(self.len - self.pos);
        let s = &self.cur[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn read_exact(&mut self, mut buf: &mut [u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let s = self.take(buf.len())?;
            let n = s.len();
            buf[..n].copy_from_slice(s);
            buf = &mut buf[n..];
        }
        Ok(())
    }

    /// Reads a whole block; `false` if the stream ended before its first byte.
    pub fn read_block_or_eof(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if !self.fill()? {
            return Ok(false);
        }
        self.read_exact(buf)?;
        Ok(true)
    }

    pub fn skip(&mut self, mut n: u64) -> io::Result<()> {
        while n > 0 {
            let s = self.take(n.min(usize::MAX as u64) as usize)?;
            n -= s.len() as u64;
        }
        Ok(())
    }

    /// sha256 and length of everything received so far.
    pub fn finish(&mut self) -> (Digest, u64) {
        (std::mem::take(&mut self.hasher).finish(), self.total)
    }

    /// Reads (and discards) everything up to the end of the stream.
    pub fn drain(&mut self) -> io::Result<()> {
        while self.fill()? {
            self.pos = self.len;
        }
        Ok(())
    }
}
