//! Percent decoding and query parsing for the control APIs, from the
//! `percent-encoding` and `form_urlencoded` crates. (The proxy's request
//! path has its own fuzzed decoder, `shardmap::key`.)
//!
//! Shard ids hold `/`, so they travel as one path segment with `%2F`.

use std::borrow::Cow;

pub use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// What [`encode_segment`] leaves as it is: RFC 3986's unreserved set.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encode `s` as one path segment (every `/` becomes `%2F`).
pub fn encode_segment(s: &str) -> Cow<'_, str> {
    utf8_percent_encode(s, SEGMENT).into()
}

/// Decode the `%XX` escapes of one path segment (`+` stays itself).
/// `None` when an escape is malformed (`%` not followed by two hex digits)
/// or the result is not UTF-8: a client that sent that made a mistake,
/// and guessing what it meant would route to the wrong shard.
pub fn decode_segment(s: &str) -> Option<String> {
    if !well_formed(s) {
        return None;
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(Cow::into_owned)
}

fn well_formed(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while let Some(off) = b[i..].iter().position(|&c| c == b'%') {
        let at = i + off;
        match b.get(at + 1..at + 3) {
            Some([h, l]) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => i = at + 3,
            _ => return false,
        }
    }
    true
}

/// The decoded value of the first `name=` parameter of a query string
/// (`application/x-www-form-urlencoded`: `+` is a space).
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_round_trip_and_bad_escapes_are_refused() {
        assert_eq!(encode_segment("UK/SEASONAL"), "UK%2FSEASONAL");
        assert_eq!(encode_segment("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(encode_segment("é x"), "%C3%A9%20x");
        for s in ["UK/SEASONAL", "a+b", "é x", "100%"] {
            assert_eq!(decode_segment(&encode_segment(s)).as_deref(), Some(s));
        }
        assert_eq!(decode_segment("UK%2fX").as_deref(), Some("UK/X"));
        assert_eq!(decode_segment("a+b").as_deref(), Some("a+b"));
        for bad in ["%zz", "%", "ab%2", "%C3"] {
            assert_eq!(decode_segment(bad), None, "{bad}");
        }
    }

    #[test]
    fn query_params_are_form_decoded() {
        let q = Some("state=queued&x=a+b%2Fc&state=done");
        assert_eq!(query_param(q, "state").as_deref(), Some("queued"));
        assert_eq!(query_param(q, "x").as_deref(), Some("a b/c"));
        assert_eq!(query_param(q, "y"), None);
        assert_eq!(query_param(None, "x"), None);
        assert_eq!(query_param(Some("hours="), "hours").as_deref(), Some(""));
        assert_eq!(query_param(Some("flag"), "flag").as_deref(), Some(""));
    }
}
