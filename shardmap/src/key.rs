//! Key extraction: where a request's sku and region come from.
//!
//! Runs on the request path for every request, so it borrows from the
//! request (no allocation unless a segment is percent-encoded) and never
//! panics on any input: it is fuzzed (`fuzz/`).

use std::borrow::Cow;

/// Longest sku accepted; longer keys are rejected as malformed.
pub const MAX_SKU_LEN: usize = 128;
/// Longest region accepted.
pub const MAX_REGION_LEN: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The `{sku}` segment of the route's path pattern.
    Path,
    /// A query parameter.
    Query(String),
    /// A header (lower-case name).
    Header(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionSource {
    None,
    Path,
    Query(String),
    Header(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    Sku,
    Region,
    Any,
}

/// A path pattern such as `/inventory/{sku}` or `/r/{region}/p/{sku}/*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    raw: String,
    segs: Vec<Seg>,
    /// A trailing `*` accepts any further segments.
    rest: bool,
}

impl PathPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        if !s.starts_with('/') {
            return Err(format!("`{s}`: a path pattern starts with `/`"));
        }
        let mut segs = vec![];
        let mut rest = false;
        let parts: Vec<&str> = s[1..].split('/').collect();
        for (i, p) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            match *p {
                "" if last => {}
                "" => return Err(format!("`{s}`: empty segment")),
                "{sku}" => {
                    if segs.contains(&Seg::Sku) {
                        return Err(format!("`{s}`: `{{sku}}` appears twice"));
                    }
                    segs.push(Seg::Sku)
                }
                "{region}" => {
                    if segs.contains(&Seg::Region) {
                        return Err(format!("`{s}`: `{{region}}` appears twice"));
                    }
                    segs.push(Seg::Region)
                }
                "{*}" => segs.push(Seg::Any),
                "*" if last => rest = true,
                p if p.contains(['{', '}', '*', '?', '#']) => {
                    return Err(format!(
                        "`{s}`: segment `{p}`: only `{{sku}}`, `{{region}}`, `{{*}}` and a final `*` are special"
                    ))
                }
                p => segs.push(Seg::Lit(p.to_string())),
            }
        }
        Ok(Self {
            raw: s.to_string(),
            segs,
            rest,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }
    pub fn has_sku(&self) -> bool {
        self.segs.contains(&Seg::Sku)
    }
    pub fn has_region(&self) -> bool {
        self.segs.contains(&Seg::Region)
    }

    /// Match `path` (without query); on a match, the raw `{sku}` and
    /// `{region}` segments.
    ///
    /// The segments are cut with a byte search as the pattern is walked
    /// (what `path.split('/')` yields, without its iterator's set-up).
    pub fn matches<'a>(&self, path: &'a str) -> Option<(Option<&'a str>, Option<&'a str>)> {
        let mut rest = path.strip_prefix('/')?;
        // Whether a segment is left: the rest of the path is one, even
        // when empty, until the last segment has been taken.
        let mut more = true;
        let (mut sku, mut region) = (None, None);
        for seg in &self.segs {
            if !more {
                return None;
            }
            if let Seg::Lit(l) = seg {
                // A literal holds no `/` (the pattern was split on it), so
                // it is the next segment when the rest starts with it and a
                // `/` or the end follows: a comparison, no search for the
                // segment's end.
                if !rest.starts_with(l.as_str()) {
                    return None;
                }
                match rest.as_bytes().get(l.len()) {
                    None => {
                        more = false;
                        rest = "";
                    }
                    Some(b'/') => rest = &rest[l.len() + 1..],
                    Some(_) => return None,
                }
                continue;
            }
            let p = match rest.bytes().position(|b| b == b'/') {
                Some(i) => {
                    let (p, after) = rest.split_at(i);
                    rest = &after[1..];
                    p
                }
                None => {
                    more = false;
                    std::mem::take(&mut rest)
                }
            };
            match seg {
                // matched above
                Seg::Lit(_) => {}
                Seg::Sku => sku = Some(p),
                Seg::Region => region = Some(p),
                Seg::Any => {
                    if p.is_empty() {
                        return None;
                    }
                }
            }
        }
        // a trailing slash is the same resource; a trailing `*` takes the rest
        if more && !rest.is_empty() && !self.rest {
            return None;
        }
        Some((sku, region))
    }
}

/// Why a request's key could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The route matched but carries no sku.
    Missing,
    /// A sku or region that is too long, badly encoded or has control bytes.
    Malformed(&'static str),
}

/// The key of one request, borrowed from it where possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key<'a> {
    pub sku: Cow<'a, str>,
    pub region: Option<Cow<'a, str>>,
}

/// Extract the key for a request that matched a route with these sources.
/// `path_sku`/`path_region` are the captures from [`PathPattern::matches`].
pub fn extract<'a>(
    sku_src: &KeySource,
    region_src: &RegionSource,
    path_sku: Option<&'a str>,
    path_region: Option<&'a str>,
    query: Option<&'a str>,
    header: impl Fn(&str) -> Option<&'a [u8]>,
) -> Result<Key<'a>, KeyError> {
    // A path sku that needs no decoding and is a plain token (most): one
    // pass over its bytes tells, instead of a search for `%` and then the
    // token check.
    let mut checked = false;
    let raw_sku: Option<Cow<'a, str>> = match sku_src {
        KeySource::Path => match path_sku {
            Some(s) if is_plain_token(s, MAX_SKU_LEN) => {
                checked = true;
                Some(Cow::Borrowed(s))
            }
            Some(s) => Some(decode(s)?),
            None => None,
        },
        KeySource::Query(q) => match query.and_then(|qs| query_param(qs, q)) {
            Some(s) => Some(decode_query(s)?),
            None => None,
        },
        KeySource::Header(h) => match header(h) {
            Some(v) => {
                Some(Cow::Borrowed(std::str::from_utf8(v).map_err(|_| {
                    KeyError::Malformed("sku header is not UTF-8")
                })?))
            }
            None => None,
        },
    };
    let sku = match raw_sku {
        Some(s) if !s.is_empty() => s,
        _ => return Err(KeyError::Missing),
    };
    if !checked {
        check_token(&sku, MAX_SKU_LEN, "sku")?;
    }
    let region = match region_src {
        RegionSource::None => None,
        RegionSource::Path => path_region.map(decode).transpose()?,
        RegionSource::Query(q) => query
            .and_then(|qs| query_param(qs, q))
            .map(decode_query)
            .transpose()?,
        RegionSource::Header(h) => header(h)
            .map(|v| {
                std::str::from_utf8(v)
                    .map(Cow::Borrowed)
                    .map_err(|_| KeyError::Malformed("region header is not UTF-8"))
            })
            .transpose()?,
    };
    let region = match region {
        Some(r) if r.is_empty() => None,
        Some(r) => {
            check_token(&r, MAX_REGION_LEN, "region")?;
            Some(r)
        }
        None => None,
    };
    Ok(Key { sku, region })
}

/// `s` decodes to itself (no `%`) and passes [`check_token`] with `max`.
#[inline]
fn is_plain_token(s: &str, max: usize) -> bool {
    s.len() <= max && s.bytes().all(|b| b > 0x20 && b != 0x7f && b != b'%')
}

fn check_token(s: &str, max: usize, what: &'static str) -> Result<(), KeyError> {
    if s.len() > max {
        return Err(KeyError::Malformed(if what == "sku" {
            "sku too long"
        } else {
            "region too long"
        }));
    }
    if s.bytes().any(|b| b < 0x21 || b == 0x7f) {
        return Err(KeyError::Malformed(if what == "sku" {
            "sku has control or space characters"
        } else {
            "region has control or space characters"
        }));
    }
    Ok(())
}

/// The raw value of query parameter `name` (first occurrence).
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

fn decode_query(s: &str) -> Result<Cow<'_, str>, KeyError> {
    if s.contains('+') {
        let replaced = s.replace('+', " ");
        return decode(&replaced).map(|c| Cow::Owned(c.into_owned()));
    }
    decode(s)
}

/// Percent-decode; borrows when there is nothing to decode.
pub fn decode(s: &str) -> Result<Cow<'_, str>, KeyError> {
    if !s.contains('%') {
        return Ok(Cow::Borrowed(s));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .ok_or(KeyError::Malformed("truncated %-escape"))?;
            let v = (hexval(hex[0])? << 4) | hexval(hex[1])?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| KeyError::Malformed("%-escapes do not form UTF-8"))
}

fn hexval(c: u8) -> Result<u8, KeyError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(KeyError::Malformed("bad %-escape")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// [`PathPattern::matches`] as first written, over `split('/')`: the
    /// byte search must agree with it on every path.
    fn matches_by_split<'a>(
        pat: &PathPattern,
        path: &'a str,
    ) -> Option<(Option<&'a str>, Option<&'a str>)> {
        let path = path.strip_prefix('/')?;
        let mut it = path.split('/');
        let (mut sku, mut region) = (None, None);
        for seg in &pat.segs {
            let p = it.next()?;
            match seg {
                Seg::Lit(l) if p != l => return None,
                Seg::Lit(_) => {}
                Seg::Sku => sku = Some(p),
                Seg::Region => region = Some(p),
                Seg::Any if p.is_empty() => return None,
                Seg::Any => {}
            }
        }
        match it.next() {
            None => {}
            Some("") if it.next().is_none() => {}
            Some(_) if pat.rest => {}
            Some(_) => return None,
        }
        Some((sku, region))
    }

    proptest! {
        #[test]
        fn path_match_agrees_with_split(
            path in "/?((a|inv|b|x{0,2}|é)/?){0,5}",
        ) {
            for pat in ["/", "/inv", "/inv/", "/inv/{sku}", "/{region}/inv/{sku}/*",
                        "/a/{*}/{sku}", "/{sku}/*", "/inv/{sku}/b"] {
                let p = PathPattern::parse(pat).unwrap();
                prop_assert_eq!(p.matches(&path), matches_by_split(&p, &path), "{} on {}", pat, path);
            }
        }
    }

    proptest! {
        /// The path sku's one-pass shortcut takes only what decoding and
        /// the token check would have let through unchanged.
        #[test]
        fn a_plain_token_is_what_decoding_and_the_token_check_pass(
            s in "[\\x00-\\x7f\u{e9}%]{0,140}",
        ) {
            if is_plain_token(&s, MAX_SKU_LEN) {
                prop_assert_eq!(decode(&s), Ok(Cow::Borrowed(s.as_str())));
                prop_assert!(check_token(&s, MAX_SKU_LEN, "sku").is_ok());
            }
        }
    }

    fn no_headers(_: &str) -> Option<&'static [u8]> {
        None
    }

    #[test]
    fn pattern_matching() {
        let p = PathPattern::parse("/inventory/{sku}").unwrap();
        assert_eq!(p.matches("/inventory/85123A"), Some((Some("85123A"), None)));
        assert_eq!(
            p.matches("/inventory/85123A/"),
            Some((Some("85123A"), None))
        );
        assert_eq!(p.matches("/inventory"), None);
        assert_eq!(p.matches("/inventory/a/b"), None);
        assert_eq!(p.matches("/other/a"), None);
        let p = PathPattern::parse("/r/{region}/p/{sku}/*").unwrap();
        assert_eq!(p.matches("/r/UK/p/1/x/y"), Some((Some("1"), Some("UK"))));
        assert!(PathPattern::parse("inventory").is_err());
        assert!(PathPattern::parse("/a/{sku}/{sku}").is_err());
        assert!(PathPattern::parse("/a/x{sku}").is_err());
    }

    #[test]
    fn extraction_from_each_source() {
        let k = extract(
            &KeySource::Path,
            &RegionSource::None,
            Some("A%20B"),
            None,
            None,
            no_headers,
        );
        assert_eq!(
            k,
            Err(KeyError::Malformed("sku has control or space characters"))
        );
        let k = extract(
            &KeySource::Path,
            &RegionSource::Query("region".into()),
            Some("A%2FB"),
            None,
            Some("x=1&region=UK"),
            no_headers,
        )
        .unwrap();
        assert_eq!(k.sku, "A/B");
        assert_eq!(k.region.as_deref(), Some("UK"));
        let k = extract(
            &KeySource::Query("sku".into()),
            &RegionSource::None,
            None,
            None,
            Some("sku=85123A"),
            no_headers,
        )
        .unwrap();
        assert_eq!(k.sku, "85123A");
        let h = |n: &str| (n == "x-sku").then_some(&b"22423"[..]);
        let k = extract(
            &KeySource::Header("x-sku".into()),
            &RegionSource::None,
            None,
            None,
            None,
            h,
        )
        .unwrap();
        assert_eq!(k.sku, "22423");
        assert_eq!(
            extract(
                &KeySource::Query("sku".into()),
                &RegionSource::None,
                None,
                None,
                Some("sku="),
                no_headers
            ),
            Err(KeyError::Missing)
        );
        assert_eq!(
            extract(
                &KeySource::Path,
                &RegionSource::None,
                Some("%zz"),
                None,
                None,
                no_headers
            ),
            Err(KeyError::Malformed("bad %-escape"))
        );
        let long = "x".repeat(MAX_SKU_LEN + 1);
        assert!(extract(
            &KeySource::Path,
            &RegionSource::None,
            Some(&long),
            None,
            None,
            |_| None
        )
        .is_err());
    }
}
