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
/// `:authority`) and no Transfer-Encoding. `raw_cl` says the raw head had a
/// Content-Length line (see [`raw_has_content_length`]).
pub fn check(
    req: &RequestHeader,
    h2: bool,
    max_header_bytes: usize,
    raw_cl: bool,
) -> Result<(), Reject> {
    let mut size = req.uri.path().len() + req.uri.query().map_or(0, |q| q.len() + 1) + 16;
    for (k, v) in req.headers.iter() {
        size += k.as_str().len() + v.len() + 4;
    }
    if size > max_header_bytes {
        return Err(Reject {
            status: 431,
            reason: "request header fields too large",
        });
    }
    let mut cl = req.headers.get_all(http::header::CONTENT_LENGTH).iter();
    let first_cl = cl.next();
    if cl.next().is_some() {
        return Err(bad("more than one Content-Length"));
    }
    if let Some(v) = first_cl {
        let b = v.as_bytes();
        if b.is_empty() || b.len() > 18 || !b.iter().all(u8::is_ascii_digit) {
            return Err(bad("malformed Content-Length"));
        }
    }
    let mut te = req.headers.get_all(http::header::TRANSFER_ENCODING).iter();
    if let Some(v) = te.next() {
        if h2 {
            return Err(bad("Transfer-Encoding is not allowed in HTTP/2"));
        }
        if first_cl.is_some() || raw_cl {
            return Err(bad("both Content-Length and Transfer-Encoding"));
        }
        if te.next().is_some() || !v.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err(bad(
                "unsupported Transfer-Encoding (only a single `chunked`)",
            ));
        }
        if req.version < http::Version::HTTP_11 {
            return Err(bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
    }
    if !h2 && req.version == http::Version::HTTP_11 {
        let mut hosts = req.headers.get_all(http::header::HOST).iter();
        match (hosts.next(), hosts.next()) {
            (None, _) => return Err(bad("missing Host header")),
            (Some(_), Some(_)) => return Err(bad("more than one Host header")),
            (Some(h), None) if h.is_empty() => return Err(bad("empty Host header")),
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
        assert!(check(&req(&[("host", "x")]), false, 16384, false).is_ok());
        assert_eq!(
            check(&req(&[]), false, 16384, false).unwrap_err().reason,
            "missing Host header"
        );
        assert!(check(&req(&[]), true, 16384, false).is_ok());
        let both = req(&[
            ("host", "x"),
            ("content-length", "3"),
            ("transfer-encoding", "chunked"),
        ]);
        assert_eq!(check(&both, false, 16384, false).unwrap_err().status, 400);
        let dup = req(&[
            ("host", "x"),
            ("content-length", "3"),
            ("content-length", "3"),
        ]);
        assert!(check(&dup, false, 16384, false).is_err());
        let neg = req(&[("host", "x"), ("content-length", "-1")]);
        assert!(check(&neg, false, 16384, false).is_err());
        let te = req(&[("host", "x"), ("transfer-encoding", "gzip, chunked")]);
        assert!(check(&te, false, 16384, false).is_err());
        let te = req(&[("host", "x"), ("transfer-encoding", "chunked")]);
        assert!(check(&te, false, 16384, true).is_err());
        assert!(raw_has_content_length(
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-length: 5\r\n\r\n"
        ));
        assert!(!raw_has_content_length(
            b"GET /content-length: HTTP/1.1\r\nHost: x\r\n\r\n"
        ));
        let big = req(&[("host", "x"), ("x-big", &"a".repeat(20_000))]);
        assert_eq!(check(&big, false, 16384, false).unwrap_err().status, 431);
    }
}
