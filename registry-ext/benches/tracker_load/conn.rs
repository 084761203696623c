//! A minimal HTTP/1.1 client over one keep-alive connection (cheaper than a full client, so
//! one core of load generator keeps up with thousands of nodes).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A keep-alive HTTP/1.1 connection, reconnected when the server closes it.
pub struct Conn {
    pub server: SocketAddr,
    pub stream: Option<TcpStream>,
    pub buf: Vec<u8>,
}

pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Conn {
    pub fn new(server: SocketAddr) -> Self {
        Self {
            server,
            stream: None,
            buf: Vec::with_capacity(16 << 10),
        }
    }

    pub async fn request(&mut self, request: &[u8]) -> std::io::Result<Answer> {
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

    pub async fn try_request(&mut self, request: &[u8]) -> std::io::Result<Answer> {
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

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nhost: tracker\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: tracker\r\n\r\n").into_bytes()
}
