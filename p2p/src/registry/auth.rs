//! Registry authentication: `WWW-Authenticate` challenges, bearer tokens and their cache.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lowercased scheme: `basic`, `bearer`, ...
    pub scheme: String,
    /// Parameters with lowercased names (`realm`, `service`, `scope`, ...), values unquoted.
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// Parse a `WWW-Authenticate` header value into its challenges (RFC 7235): schemes followed
/// by `name=value` / `name="quoted, value"` parameters separated by commas. Malformed parts
/// are skipped; this never fails.
pub fn parse_www_authenticate(header: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let s = header.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < s.len() && (s[*i] == b' ' || s[*i] == b'\t' || s[*i] == b',') {
            *i += 1;
        }
    };
    let is_token = |b: u8| !matches!(b, b' ' | b'\t' | b',' | b'=' | b'"');
    loop {
        skip_ws(&mut i);
        if i >= s.len() {
            break;
        }
        // A token: a scheme, or a parameter name when '=' follows.
        let start = i;
        while i < s.len() && is_token(s[i]) {
            i += 1;
        }
        let token = &header[start..i];
        if token.is_empty() {
            // Stray '=' or '"': skip one byte to make progress.
            i += 1;
            continue;
        }
        let mut j = i;
        while j < s.len() && (s[j] == b' ' || s[j] == b'\t') {
            j += 1;
        }
        let is_param = j < s.len() && s[j] == b'=' && !(j + 1 < s.len() && s[j + 1] == b'=');
        if !is_param {
            out.push(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: BTreeMap::new(),
            });
            continue;
        }
        // Parameter value.
        i = j + 1;
        while i < s.len() && (s[i] == b' ' || s[i] == b'\t') {
            i += 1;
        }
        let value = if i < s.len() && s[i] == b'"' {
            i += 1;
            let mut v = Vec::new();
            while i < s.len() && s[i] != b'"' {
                if s[i] == b'\\' && i + 1 < s.len() {
                    i += 1;
                }
                v.push(s[i]);
                i += 1;
            }
            i += 1; // closing quote (or end)
            String::from_utf8_lossy(&v).into_owned()
        } else {
            let vs = i;
            while i < s.len() && s[i] != b',' && s[i] != b' ' && s[i] != b'\t' {
                i += 1;
            }
            header[vs..i].to_string()
        };
        if let Some(ch) = out.last_mut() {
            ch.params.insert(token.to_ascii_lowercase(), value);
        }
        // A parameter before any scheme is dropped.
    }
    out
}

/// A token as the realm returned it, with when to stop using it.
#[derive(Clone)]
pub(crate) struct CachedToken {
    pub token: String,
    pub refresh_at: Instant,
}

impl CachedToken {
    /// Keep using a token until a tenth of its lifetime (at most 30 s) before it expires.
    pub fn new(token: String, expires_in: Duration) -> Self {
        let margin = (expires_in / 10).min(Duration::from_secs(30));
        Self {
            token,
            refresh_at: Instant::now() + expires_in - margin,
        }
    }

    pub fn fresh(&self) -> bool {
        Instant::now() < self.refresh_at
    }
}

/// One cache entry; its async lock is held while the token is being fetched.
pub(crate) type TokenSlot = Arc<tokio::sync::Mutex<Option<CachedToken>>>;

/// Tokens per (registry, scope). Each key has its own async lock so concurrent requests
/// for the same scope fetch one token, not one each.
#[derive(Default)]
pub(crate) struct TokenCache {
    slots: Mutex<HashMap<(String, String), TokenSlot>>,
}

impl TokenCache {
    pub fn slot(
        &self,
        registry: &str,
        scope: &str,
    ) -> Arc<tokio::sync::Mutex<Option<CachedToken>>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .entry((registry.to_string(), scope.to_string()))
            .or_default()
            .clone()
    }

    /// A fresh token for the key, if one is cached (does not wait for a fetch in progress).
    pub fn peek(&self, registry: &str, scope: &str) -> Option<String> {
        let slot = self.slot(registry, scope);
        let guard = slot.try_lock().ok()?;
        guard
            .as_ref()
            .filter(|t| t.fresh())
            .map(|t| t.token.clone())
    }
}

/// The realm's answer (Docker token spec): `token` or `access_token`, optional `expires_in`.
#[derive(serde::Deserialize)]
pub(crate) struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<i64>,
}

/// Default token lifetime when the realm does not say (Docker token spec).
pub(crate) const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Longest lifetime believed, whatever the realm says.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

impl TokenResponse {
    /// The token and its lifetime, or why the answer is unusable.
    pub fn into_token(self) -> Result<(String, Duration), &'static str> {
        let token = self
            .token
            .filter(|t| !t.is_empty())
            .or(self.access_token.filter(|t| !t.is_empty()))
            .ok_or("answer has neither `token` nor `access_token`")?;
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("token contains characters not allowed in an HTTP header");
        }
        let lifetime = match self.expires_in {
            Some(s) if s > 0 => Duration::from_secs(s as u64).min(MAX_TOKEN_LIFETIME),
            _ => DEFAULT_TOKEN_LIFETIME,
        };
        Ok((token, lifetime))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge() {
        let h = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull,push""#;
        let c = parse_www_authenticate(h);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("service"), Some("registry.docker.io"));
        assert_eq!(
            c[0].param("scope"),
            Some("repository:library/ubuntu:pull,push")
        );
    }

    #[test]
    fn parses_basic_and_multiple_challenges() {
        let c = parse_www_authenticate(r#"Basic realm="basic-realm""#);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some("basic-realm"));

        let c = parse_www_authenticate(
            r#"Basic realm="a, b", Bearer Realm=http://x/t , service = "s \"q\"",error="insufficient_scope""#,
        );
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0].param("realm"), Some("a, b"));
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].param("realm"), Some("http://x/t"));
        assert_eq!(c[1].param("service"), Some("s \"q\""));
        assert_eq!(c[1].param("error"), Some("insufficient_scope"));
    }

    #[test]
    fn survives_garbage() {
        for h in [
            "",
            ",,,",
            "=",
            "\"",
            "realm=x",
            "Bearer realm=\"unterminated",
            "Bearer ===",
            "Negotiate abc==",
            "\u{fffd}\u{0}Bearer \"",
        ] {
            let _ = parse_www_authenticate(h);
        }
        let c = parse_www_authenticate("Bearer realm=\"unterminated");
        assert_eq!(c[0].param("realm"), Some("unterminated"));
        let c = parse_www_authenticate("Negotiate abc==");
        assert_eq!(c[0].scheme, "negotiate");
    }

    #[test]
    fn token_response_variants() {
        let t: TokenResponse = serde_json::from_str(r#"{"access_token":"abc"}"#).unwrap();
        assert_eq!(
            t.into_token().unwrap(),
            ("abc".into(), DEFAULT_TOKEN_LIFETIME)
        );
        let t: TokenResponse =
            serde_json::from_str(r#"{"token":"t","access_token":"a","expires_in":300}"#).unwrap();
        assert_eq!(
            t.into_token().unwrap(),
            ("t".into(), Duration::from_secs(300))
        );
        let t: TokenResponse = serde_json::from_str(r#"{"token":"","expires_in":-5}"#).unwrap();
        assert!(t.into_token().is_err());
        let t: TokenResponse = serde_json::from_str(r#"{"token":"a\nb"}"#).unwrap();
        assert!(t.into_token().is_err());
    }

    #[test]
    fn cached_token_freshness() {
        let t = CachedToken::new("x".into(), Duration::from_secs(60));
        assert!(t.fresh());
        let t = CachedToken::new("x".into(), Duration::ZERO);
        assert!(!t.fresh());
    }
}
