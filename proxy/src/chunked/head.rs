//! The request head, as [`super::ChunkedFraming`] reads it: only what frames
//! the body (`Transfer-Encoding`, `Content-Length`, `Upgrade`) and whether
//! the connection turns into HTTP/2.
//!
//! Two readers that must agree on every input: [`HeadScan`] takes bytes one
//! at a time across reads (the reference, for heads that arrive in pieces);
//! [`whole`] reads a head that is whole in one read with a few `memchr`
//! calls (most heads), and leaves anything unusual to [`HeadScan`].

/// What frames the body, from one head.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Summary {
    pub(super) te: u32,
    pub(super) te_chunked: bool,
    pub(super) cl: u32,
    pub(super) cl_value: Option<u64>,
    pub(super) upgrade: bool,
    /// A line Pingora refuses (an obsolete fold, a field line without a
    /// colon): the connection is closed, not followed.
    pub(super) folded: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Other,
    Te,
    Cl,
    Upgrade,
}

/// What the head scan keeps: bounded, and enough to frame the body.
#[derive(Debug, Clone, Default)]
pub(super) struct HeadScan {
    pub(super) request_line: bool,
    line_len: usize,
    pub(super) prefix: [u8; 14],
    name: [u8; 17],
    name_len: usize,
    name_over: bool,
    in_value: bool,
    field: Option<Field>,
    /// A TE or CL value with outer whitespace dropped and inner runs of it
    /// kept as one space; `value_len` past the array means "too long to be
    /// `chunked` or a length".
    value: [u8; 24],
    value_len: usize,
    value_ws: bool,
    pub(super) sum: Summary,
}

pub(super) const H2_REQUEST_LINE: &[u8; 14] = b"PRI * HTTP/2.0";

/// The fields the head scan reads, lower case.
const READ_FIELDS: [&[u8]; 3] = [b"transfer-encoding", b"content-length", b"upgrade"];

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

impl HeadScan {
    pub(super) fn new() -> Self {
        Self {
            request_line: true,
            ..Self::default()
        }
    }

    pub(super) fn byte(&mut self, b: u8) {
        if b == b'\r' {
            // Part of the line end (a bare CR is refused by Pingora).
            return;
        }
        let first = self.line_len == 0;
        self.line_len = self.line_len.saturating_add(1);
        if self.request_line {
            if let Some(p) = self.prefix.get_mut(self.line_len - 1) {
                *p = b;
            }
            if first && b != H2_REQUEST_LINE[0] {
                // Cannot be `PRI * HTTP/2.0`: skip the rest of the line.
                self.line_len = self.prefix.len();
            }
            return;
        }
        if first && is_ows(b) {
            self.sum.folded = true;
        }
        if first && !matches!(b, b't' | b'T' | b'c' | b'C' | b'u' | b'U') {
            // Not a field this scan reads (it can only be refused by
            // Pingora, if malformed): the rest of the line is skipped.
            self.in_value = true;
            self.field = Some(Field::Other);
            return;
        }
        if !self.in_value {
            if b == b':' {
                self.in_value = true;
                let name = &self.name[..self.name_len];
                self.field = Some(if self.name_over {
                    Field::Other
                } else if name == b"transfer-encoding" {
                    Field::Te
                } else if name == b"content-length" {
                    Field::Cl
                } else if name == b"upgrade" {
                    Field::Upgrade
                } else {
                    Field::Other
                });
            } else if self.name_len < self.name.len() {
                self.name[self.name_len] = b.to_ascii_lowercase();
                self.name_len += 1;
                let name = &self.name[..self.name_len];
                if !READ_FIELDS.iter().any(|f| f.starts_with(name)) {
                    // No longer the start of a field this scan reads
                    // (`user-agent` after `us`): skip the rest of the line.
                    self.in_value = true;
                    self.field = Some(Field::Other);
                }
            } else {
                self.name_over = true;
            }
            return;
        }
        if !matches!(self.field, Some(Field::Te | Field::Cl)) {
            return;
        }
        if is_ows(b) {
            self.value_ws = self.value_len > 0;
            return;
        }
        if std::mem::take(&mut self.value_ws) {
            self.push_value(b' ');
        }
        self.push_value(b);
    }

    /// Nothing before the next LF changes what the scan keeps: the rest of
    /// a request line past its prefix, or the value of a field that is not
    /// `Transfer-Encoding` or `Content-Length`. [`super::ChunkedFraming::feed`]
    /// jumps to the LF (most of a head's bytes).
    pub(super) fn rest_of_line_ignored(&self) -> bool {
        if self.line_len == 0 {
            return false;
        }
        if self.request_line {
            return self.line_len >= self.prefix.len();
        }
        self.in_value && !matches!(self.field, Some(Field::Te | Field::Cl))
    }

    fn push_value(&mut self, b: u8) {
        if let Some(v) = self.value.get_mut(self.value_len) {
            *v = b;
        }
        self.value_len = self.value_len.saturating_add(1);
    }

    /// A line ended; `true` when it was the empty line ending the head.
    pub(super) fn line_end(&mut self) -> bool {
        if self.line_len == 0 && !self.request_line {
            return true;
        }
        if !self.request_line {
            let v = (self.value_len <= self.value.len()).then(|| &self.value[..self.value_len]);
            match self.field {
                Some(Field::Te) => {
                    self.sum.te += 1;
                    self.sum.te_chunked = v.is_some_and(|v| v.eq_ignore_ascii_case(b"chunked"));
                }
                Some(Field::Cl) => {
                    self.sum.cl += 1;
                    self.sum.cl_value = v
                        .filter(|v| {
                            !v.is_empty() && v.len() <= 18 && v.iter().all(u8::is_ascii_digit)
                        })
                        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
                }
                Some(Field::Upgrade) => self.sum.upgrade = true,
                Some(Field::Other) => {}
                // A field line without a colon: refused by Pingora.
                None => self.sum.folded = true,
            }
        }
        // The next line: reset what is per line (the arrays are read only
        // up to their lengths, so they need no clearing).
        self.request_line = false;
        self.line_len = 0;
        self.name_len = 0;
        self.name_over = false;
        self.in_value = false;
        self.field = None;
        self.value_len = 0;
        self.value_ws = false;
        false
    }
}

/// A head read in one go by [`whole`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Whole {
    /// `PRI * HTTP/2.0`: the HTTP/2 preface, nothing more to follow.
    H2,
    /// `len` bytes, through the LF of the empty line that ends the head.
    Head { len: usize, sum: Summary },
}

/// The head at the start of `data` (its first byte is neither CR nor LF),
/// read whole, with [`HeadScan`]'s verdict; `None` when the head does not
/// end in `data` or has anything the byte-wise scan must judge: a CR
/// inside a line it reads, a line starting with whitespace or CR, a
/// `t`/`c`/`u` field line without a colon.
///
/// Per line: one `memchr` for its end; a line whose first two bytes cannot
/// start a field the scan reads is not looked at further.
pub(super) fn whole(data: &[u8]) -> Option<Whole> {
    use memchr::memchr;
    let lf = memchr(b'\n', data)?;
    let line = &data[..lf];
    if line.first() == Some(&b'P') {
        // The byte-wise scan compares the line with CRs dropped.
        let body = line.strip_suffix(b"\r").unwrap_or(line);
        if memchr(b'\r', body).is_some() {
            return None;
        }
        if body.starts_with(H2_REQUEST_LINE) {
            return Some(Whole::H2);
        }
    }
    let mut sum = Summary::default();
    let mut at = lf + 1;
    loop {
        let rest = &data[at..];
        let lf = memchr(b'\n', rest)?;
        let line = &rest[..lf];
        at += lf + 1;
        match line.first() {
            None => return Some(Whole::Head { len: at, sum }),
            Some(b'\r') if line.len() == 1 => return Some(Whole::Head { len: at, sum }),
            Some(b'\r' | b' ' | b'\t') => return None,
            Some(&c @ (b't' | b'T' | b'c' | b'C' | b'u' | b'U')) => {
                // The second letter tells `user-agent` from `upgrade` and
                // `cookie` from `content-length` (a CR is the byte-wise
                // scan's to judge).
                let second = match c | 0x20 {
                    b't' => b'r',
                    b'c' => b'o',
                    _ => b'p',
                };
                if line
                    .get(1)
                    .is_some_and(|&b| b != b'\r' && b | 0x20 != second)
                {
                    continue;
                }
            }
            Some(_) => continue,
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if memchr(b'\r', line).is_some() {
            return None;
        }
        let colon = memchr(b':', line)?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let v = plain_value(value);
            sum.te += 1;
            sum.te_chunked = v.eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let v = plain_value(value);
            sum.cl += 1;
            sum.cl_value = (!v.is_empty() && v.len() <= 18 && v.iter().all(u8::is_ascii_digit))
                .then(|| v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')));
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            sum.upgrade = true;
        }
    }
}

/// A field value without its outer whitespace. (The byte-wise scan also
/// folds inner runs of whitespace into one space; no value with inner
/// whitespace is `chunked` or a length either way, so the verdict is the
/// same.)
fn plain_value(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| !is_ows(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|&b| !is_ows(b)).map_or(start, |e| e + 1);
    &v[start..end]
}
