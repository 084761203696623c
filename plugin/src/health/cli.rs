//! `shoald status`: reads `GET /status` from a running shoald (its `[metrics] listen`
//! endpoint) and prints it for a person, or as JSON. Exit status 0 when every enabled
//! component is up, 1 when one is degraded or down, 2 when shoald cannot be reached.

use std::time::Duration;

use super::report::{render, StatusReport};

/// Exit status when shoald cannot be reached (or answers something else than a status).
pub const UNREACHABLE: i32 = 2;

/// Why the status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// No address: the config's `[metrics] listen` is empty.
    #[error(
        "no address to ask: [metrics] listen is empty in shoald's configuration (shoald then \
         serves no status); give --address IP:PORT"
    )]
    NoAddress,
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// Nothing answered at the address (or the answer could not be read).
    #[error(
        "shoald is not reachable at {url}: {} (is shoald running, and is this its \
         [metrics] listen address?)",
        crate::containerd::doctor::causes(.source)
    )]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// Something answered, but not with a status.
    #[error("{url} answered {what}: not a shoald status endpoint (an older shoald, or another program on that port?)")]
    NotStatus { url: String, what: String },
}

/// The `http://ADDRESS/status` URL of `address` (`IP:PORT`, or a URL).
pub fn status_url(address: &str) -> String {
    let base = match address.contains("://") {
        true => address.trim_end_matches('/').to_owned(),
        false => format!("http://{address}"),
    };
    format!("{base}/status")
}

/// Reads the status from shoald at `address`.
pub async fn fetch(address: &str) -> Result<StatusReport, StatusError> {
    if address.is_empty() {
        return Err(StatusError::NoAddress);
    }
    let url = status_url(address);
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .map_err(StatusError::Client)?;
    let unreachable = |source| StatusError::Unreachable {
        url: url.clone(),
        source,
    };
    let response = client.get(&url).send().await.map_err(unreachable)?;
    let status = response.status();
    if !status.is_success() {
        return Err(StatusError::NotStatus {
            url,
            what: format!("status {status}"),
        });
    }
    let body = response.bytes().await.map_err(unreachable)?;
    serde_json::from_slice(&body).map_err(|e| StatusError::NotStatus {
        url: url.clone(),
        what: format!("a body that is not a status ({e})"),
    })
}

/// `shoald status`: prints the status of shoald at `address` (as JSON with `json`) and
/// returns the exit status.
pub async fn run(address: &str, json: bool) -> i32 {
    match fetch(address).await {
        Ok(report) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => eprintln!("shoald status: {e}"),
                }
            } else {
                print!("{}", render(&report, address));
            }
            report.exit_code()
        }
        Err(e) => {
            eprintln!("shoald status: {e}");
            UNREACHABLE
        }
    }
}
