//! Request framing checks that run before anything is forwarded.
//!
//! Ambiguous framing is how request smuggling starts: a request whose
//! length two parsers could read differently is refused with 400 and the
//! connection closed, never passed to a node.

use pingora_http::RequestHeader;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub reason: &'static str,
}

const fn bad(reason: &'static str) -> Reject {
    Reject {
        status: 400,
        reason,
    }
}

/// Whether a raw HTTP/1 request head has a Content-Length line. Pingora
/// drops Content-Length when Transfer-Encoding is present (RFC 9112 6.3);
/// shardcast refuses such requests outright, so it looks at the raw head.
pub fn raw_has_content_length(raw: &[u8]) -> bool {
    raw.split(|&b| b == b'\n')
        .skip(1)
        .any(|line| line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:"))
}

/// Check one request head. `h2` requests carry no Host header (they use
/// `:authority`) and no Transfer-Encoding. `raw_cl` says whether the raw
/// head had a Content-Length line (see [`raw_has_content_length`]); it is
/// asked only for an HTTP/1 request with Transfer-Encoding, the one case
/// where Pingora has dropped the parsed Content-Length.
///
/// One pass over the fields: the size bound and every field the framing
/// rules name are read together (standard names compare as one integer),
/// instead of a hashed lookup per rule.
pub fn check(
    req: &RequestHeader,
    h2: bool,
    max_header_bytes: usize,
    raw_cl: impl FnOnce() -> bool,
) -> Result<(), Reject> {
    use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
    let mut size = req.uri.path().len() + req.uri.query().map_or(0, |q| q.len() + 1) + 16;
    // (first value, how many) of each
    let mut cl: (Option<&http::HeaderValue>, u32) = (None, 0);
    let mut te: (Option<&http::HeaderValue>, u32) = (None, 0);
    let mut host: (Option<&http::HeaderValue>, u32) = (None, 0);
    for (k, v) in req.headers.iter() {
        size += k.as_str().len() + v.len() + 4;
        let slot = if *k == CONTENT_LENGTH {
            &mut cl
        } else if *k == TRANSFER_ENCODING {
            &mut te
        } else if *k == HOST {
            &mut host
        } else {
            continue;
        };
        slot.0.get_or_insert(v);
        slot.1 += 1;
    }
    if size > max_header_bytes {
        return Err(Reject {
            status: 431,
            reason: "request header fields too large",
        });
    }
    if cl.1 > 1 {
        return Err(bad("more than one Content-Length"));
    }
    if let Some(v) = cl.0 {
        let b = v.as_bytes();
        if b.is_empty() || b.len() > 18 || !b.iter().all(u8::is_ascii_digit) {
            return Err(bad("malformed Content-Length"));
        }
    }
    if let Some(v) = te.0 {
        if h2 {
            return Err(bad("Transfer-Encoding is not allowed in HTTP/2"));
        }
        if cl.0.is_some() || raw_cl() {
            return Err(bad("both Content-Length and Transfer-Encoding"));
        }
        if te.1 > 1 || !v.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err(bad(
                "unsupported Transfer-Encoding (only a single `chunked`)",
            ));
        }
        if req.version < http::Version::HTTP_11 {
            return Err(bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
    }
    if !h2 && req.version == http::Version::HTTP_11 {
        match host {
            (None, _) => return Err(bad("missing Host header")),
            (Some(_), n) if n > 1 => return Err(bad("more than one Host header")),
            (Some(h), _) if h.is_empty() => return Err(bad("empty Host header")),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/inventory/1", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn framing_rules() {
        assert!(check(&req(&[("host", "x")]), false, 16384, || false).is_ok());
        assert_eq!(
            check(&req(&[]), false, 16384, || false).unwrap_err().reason,
            "missing Host header"
        );
        assert!(check(&req(&[]), true, 16384, || false).is_ok());
        let both = req(&[
            ("host", "x"),
            ("content-length", "3"),
            ("transfer-encoding", "chunked"),
        ]);
        assert_eq!(
            check(&both, false, 16384, || false).unwrap_err().status,
            400
        );
        let dup = req(&[
            ("host", "x"),
            ("content-length", "3"),
            ("content-length", "3"),
        ]);
        assert!(check(&dup, false, 16384, || false).is_err());
        let neg = req(&[("host", "x"), ("content-length", "-1")]);
        assert!(check(&neg, false, 16384, || false).is_err());
        let te = req(&[("host", "x"), ("transfer-encoding", "gzip, chunked")]);
        assert!(check(&te, false, 16384, || false).is_err());
        let te = req(&[("host", "x"), ("transfer-encoding", "chunked")]);
        assert!(check(&te, false, 16384, || true).is_err());
        assert!(raw_has_content_length(
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-length: 5\r\n\r\n"
        ));
        assert!(!raw_has_content_length(
            b"GET /content-length: HTTP/1.1\r\nHost: x\r\n\r\n"
        ));
        let hosts = req(&[("host", "x"), ("accept", "*/*"), ("Host", "y")]);
        assert_eq!(
            check(&hosts, false, 16384, || false).unwrap_err().reason,
            "more than one Host header"
        );
        assert_eq!(
            check(&req(&[("host", "")]), false, 16384, || false)
                .unwrap_err()
                .reason,
            "empty Host header"
        );
        let te2 = req(&[
            ("host", "x"),
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "chunked"),
        ]);
        assert!(check(&te2, false, 16384, || false).is_err());
        let h2_te = req(&[("transfer-encoding", "chunked")]);
        assert!(check(&h2_te, true, 16384, || false).is_err());
        // the raw head is read only when Transfer-Encoding is there
        let plain = req(&[("host", "x"), ("content-length", "3")]);
        assert!(check(&plain, false, 16384, || panic!("raw head read")).is_ok());
        let big = req(&[("host", "x"), ("x-big", &"a".repeat(20_000))]);
        assert_eq!(check(&big, false, 16384, || false).unwrap_err().status, 431);
    }
}
