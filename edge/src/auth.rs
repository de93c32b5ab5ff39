//! Bearer tokens on the admin and control APIs of every process.
//!
//! RFC 6750: the scheme is case-insensitive, a refusal is 401 with
//! `WWW-Authenticate: Bearer`, and the comparison takes the same time
//! wherever the first differing byte is.

use http::header::{HeaderMap, AUTHORIZATION};
use subtle::ConstantTimeEq;

/// The `WWW-Authenticate` value of a refusal.
pub const CHALLENGE: &str = "Bearer realm=\"shardcast\"";

/// Does `headers` carry `Authorization: Bearer <token>`?
pub fn bearer_ok(headers: &HeaderMap, token: &str) -> bool {
    let Some(v) = headers.get(AUTHORIZATION) else {
        return false;
    };
    let v = v.as_bytes();
    let Some(space) = v.iter().position(|&b| b == b' ') else {
        return false;
    };
    let (scheme, rest) = v.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return false;
    }
    let given = trim(&rest[1..]);
    token_eq(given, token.as_bytes())
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| *c != b' ').unwrap_or(b.len());
    let end = b.iter().rposition(|c| *c != b' ').map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

/// Constant-time equality (the length is not secret).
pub fn token_eq(given: &[u8], want: &[u8]) -> bool {
    given.len() == want.len() && bool::from(given.ct_eq(want))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(AUTHORIZATION, v.parse().unwrap());
        m
    }

    #[test]
    fn the_scheme_is_case_insensitive_and_the_token_exact() {
        assert!(bearer_ok(&h("Bearer s3cret"), "s3cret"));
        assert!(bearer_ok(&h("bearer s3cret"), "s3cret"));
        assert!(bearer_ok(&h("BEARER  s3cret "), "s3cret"));
        assert!(!bearer_ok(&h("Bearer s3cre"), "s3cret"));
        assert!(!bearer_ok(&h("Bearer s3cretX"), "s3cret"));
        assert!(!bearer_ok(&h("Basic s3cret"), "s3cret"));
        assert!(!bearer_ok(&h("Bearers3cret"), "s3cret"));
        assert!(!bearer_ok(&HeaderMap::new(), "s3cret"));
        assert!(!bearer_ok(&h("Bearer "), "s3cret"));
    }
}
