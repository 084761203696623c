//! Bearer tokens from the config (`notifications.token`, `preheat.tokens`): the one check of
//! an `Authorization: Bearer TOKEN` header, used by every token-authenticated listener.

use axum::http::{header, HeaderMap};

/// What a request's `Authorization` header presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented {
    /// No `Authorization: Bearer ...` header (or one that is not text).
    Missing,
    /// A bearer token that is none of the accepted ones.
    Wrong,
    /// One of the accepted tokens.
    Accepted,
}

/// Checks `headers` against `tokens`. The scheme is case-insensitive (RFC 9110); tokens are
/// compared without stopping at the first difference, and an empty token never matches.
pub fn check<T: AsRef<str>>(headers: &HeaderMap, tokens: &[T]) -> Presented {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Presented::Missing;
    };
    let Some((scheme, given)) = value.split_once(' ') else {
        return Presented::Missing;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Presented::Missing;
    }
    let given = given.trim().as_bytes();
    // Every token is compared, so the time does not tell which one (or how much) matched.
    let matched = tokens
        .iter()
        .map(|t| t.as_ref().as_bytes())
        .fold(false, |hit, t| same(t, given) | hit);
    if matched {
        Presented::Accepted
    } else {
        Presented::Wrong
    }
}

/// Compares without stopping at the first difference; empty never matches.
fn same(a: &[u8], b: &[u8]) -> bool {
    !a.is_empty()
        && a.len() == b.len()
        && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn only_an_accepted_token_passes() {
        let tokens = ["0123456789abcdef", "fedcba9876543210"];
        assert_eq!(
            check(&with("Bearer 0123456789abcdef"), &tokens),
            Presented::Accepted
        );
        assert_eq!(
            check(&with("bearer fedcba9876543210"), &tokens),
            Presented::Accepted
        );
        assert_eq!(
            check(&with("Bearer 0123456789abcdeF"), &tokens),
            Presented::Wrong
        );
        assert_eq!(
            check(&with("Bearer 0123456789abcde"), &tokens),
            Presented::Wrong
        );
        assert_eq!(check(&with("Bearer "), &tokens), Presented::Wrong);
        assert_eq!(
            check(&with("Basic 0123456789abcdef"), &tokens),
            Presented::Missing
        );
        assert_eq!(
            check(&with("0123456789abcdef"), &tokens),
            Presented::Missing
        );
        assert_eq!(check(&HeaderMap::new(), &tokens), Presented::Missing);
        // An empty configured token never authorises anyone.
        assert_eq!(check(&with("Bearer "), &[""]), Presented::Wrong);
        let none: [&str; 0] = [];
        assert_eq!(check(&with("Bearer x"), &none), Presented::Wrong);
    }
}
