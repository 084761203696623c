//! An HTTP proxy in front of a registry that corrupts one byte in the middle of every blob
//! body it serves to clients whose User-Agent starts with a given prefix, and passes
//! everything else through unchanged. With the prefix `shoal/`, shoald receives bad bytes
//! (same length, so only the digest check can tell) while containerd pulls the genuine
//! blobs through the same address: the digest-mismatch fallback, end to end.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use tokio::sync::oneshot;

struct Shared {
    upstream: String,
    corrupt_prefix: String,
    client: reqwest::Client,
    corrupted: AtomicU64,
}

/// The running proxy; stopped on drop.
pub struct TamperProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TamperProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream` ("HOST:PORT", plain
    /// HTTP), corrupting blob bodies for User-Agents starting with `corrupt_prefix`.
    pub fn start(upstream: &str, corrupt_prefix: &str) -> Result<Self> {
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            corrupt_prefix: corrupt_prefix.to_string(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            corrupted: AtomicU64::new(0),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let state = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("listener into tokio");
                let app = axum::Router::new().fallback(forward).with_state(state);
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Ok(Self {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// "127.0.0.1:PORT".
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// How many blob bodies were corrupted so far.
    pub fn corrupted(&self) -> u64 {
        self.shared.corrupted.load(Ordering::Relaxed)
    }
}

impl Drop for TamperProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn forward(State(st): State<Arc<Shared>>, req: Request) -> Response {
    match try_forward(&st, req).await {
        Ok(r) => r,
        Err(e) => Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(Body::from(format!("tamper proxy: {e:#}")))
            .expect("static response"),
    }
}

async fn try_forward(st: &Shared, req: Request) -> Result<Response> {
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    let agent = parts
        .headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = axum::body::to_bytes(body, 64 << 20).await?;
    let mut upstream = st
        .client
        .request(
            parts.method.clone(),
            format!("http://{}{path}", st.upstream),
        )
        .body(body);
    for (name, value) in &parts.headers {
        if name != header::HOST {
            upstream = upstream.header(name, value);
        }
    }
    let resp = upstream.send().await.context("upstream request")?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let mut bytes = resp.bytes().await.context("upstream body")?.to_vec();
    if parts.method == axum::http::Method::GET
        && status.is_success()
        && path.contains("/blobs/sha256:")
        && agent.starts_with(&st.corrupt_prefix)
        && !bytes.is_empty()
    {
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x20;
        st.corrupted.fetch_add(1, Ordering::Relaxed);
    }
    let mut out = Response::builder().status(status);
    for (name, value) in &headers {
        if name != header::TRANSFER_ENCODING && name != header::CONNECTION {
            out = out.header(name, value);
        }
    }
    Ok(out.body(Body::from(bytes))?)
}
