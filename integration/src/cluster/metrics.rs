//! Reading a daemon's Prometheus `/metrics` (text exposition format) in tests: one plain
//! HTTP/1.0 GET, parsed into samples that can be summed by name and labels.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// One sample: `name{label="value",...} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Every sample of one scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// `GET http://ADDR/metrics`.
    pub fn scrape(addr: &str) -> Result<Self> {
        let text = http_get(addr, "/metrics")?;
        Ok(Self::parse(&text))
    }

    /// Parses the text format; comment lines and unparsable lines are skipped.
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(parse_line)
            .collect();
        Self { samples }
    }

    /// Sum of the samples named `name` whose labels include every `(key, value)` of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
            })
            .map(|s| s.value)
            .sum::<f64>()
            + 0.0 // an empty f64 sum is -0.0
    }

    /// Whether any sample is named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }

    /// `name`'s non-zero samples as `label=value` pairs, e.g. `hash=3 overdue=1` (for
    /// reports; the first label of each sample).
    pub fn by_label(&self, name: &str) -> String {
        self.samples
            .iter()
            .filter(|s| s.name == name && s.value != 0.0)
            .map(|s| {
                let label = s.labels.first().map(|(_, v)| v.as_str()).unwrap_or("");
                format!("{label}={}", s.value)
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The samples whose name starts with `prefix`, one per line (for reports).
    pub fn show(&self, prefix: &str) -> String {
        self.samples
            .iter()
            .filter(|s| s.name.starts_with(prefix) && !s.name.ends_with("_bucket"))
            .map(|s| {
                let labels: Vec<String> =
                    s.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
                format!("{}{{{}}} {}", s.name, labels.join(","), s.value)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    // `name{labels} value [timestamp]` or `name value [timestamp]`.
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            (
                &line[..open],
                parse_labels(&line[open + 1..close])?,
                &line[close + 1..],
            )
        }
        None => {
            let (name, rest) = line.split_once(char::is_whitespace)?;
            (name, Vec::new(), rest)
        }
    };
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.trim().to_string(),
        labels,
        value,
    })
}

fn parse_labels(text: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end?;
        out.push((key.trim().to_string(), value));
        rest = after[end + 1..].trim_start_matches(',').trim();
    }
    Some(out)
}

/// The body of `GET path` on `addr` (plain HTTP/1.0), failing unless the status is 200.
pub fn http_get(addr: &str, path: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(
        &addr.parse().with_context(|| format!("address {addr:?}"))?,
        Duration::from_secs(2),
    )
    .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("HTTP answer without a header end")?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        bail!(
            "GET http://{addr}{path}: {}",
            head.lines().next().unwrap_or("")
        );
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_sums_the_text_format() {
        let text = "# HELP shoal_swarm_received_bytes Verified bytes\n\
                    # TYPE shoal_swarm_received_bytes counter\n\
                    shoal_swarm_received_bytes_total{source=\"peer\"} 1048576\n\
                    shoal_swarm_received_bytes_total{source=\"registry\"} 10\n\
                    shoal_swarm_chunk_failures_total{reason=\"hash\"} 3\n\
                    shoal_upload_sent_bytes_total 5e3\n\
                    odd{a=\"x\\\"y\",b=\"2\"} 1 1700000000\n\
                    # EOF\n";
        let m = Metrics::parse(text);
        assert_eq!(m.sum("shoal_swarm_received_bytes_total", &[]), 1048586.0);
        assert_eq!(
            m.sum("shoal_swarm_received_bytes_total", &[("source", "peer")]),
            1048576.0
        );
        assert_eq!(
            m.sum("shoal_swarm_chunk_failures_total", &[("reason", "hash")]),
            3.0
        );
        assert_eq!(m.sum("shoal_upload_sent_bytes_total", &[]), 5000.0);
        assert_eq!(m.sum("odd", &[("a", "x\"y"), ("b", "2")]), 1.0);
        assert!(!m.has("missing"));
    }
}
