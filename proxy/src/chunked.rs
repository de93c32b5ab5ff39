//! Chunked request bodies, checked byte by byte before Pingora parses them.
//!
//! Pingora 0.9.1 parses chunk-size lines with `httparse::parse_chunk_size`,
//! which is lenient where nginx and HAProxy are strict (see
//! [`ChunkedFraming`]). The check follows each HTTP/1 connection's requests
//! through the bytes read and fails the read that would deliver a bad line
//! ([`poll_read_checked`], called by `crate::deadline::DeadlineStream`).

/// Why bytes a client sent break HTTP/1 chunked framing: `at` is the offset
/// (in the data just fed) of the first byte that does.
mod head;

use head::{HeadScan, Summary, Whole, H2_REQUEST_LINE};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadChunk {
    pub at: usize,
    pub reason: &'static str,
}

/// Follows the HTTP/1 requests of one client connection through the bytes
/// read from it and refuses a chunked body whose chunk-size line is not
/// ended by CRLF alone.
///
/// Pingora 0.9.1 parses chunk-size lines with `httparse::parse_chunk_size`,
/// which takes any octet after `;` as extension text — a bare LF included —
/// and ends the line only at CRLF. A front that ends the line at that LF
/// (as Go's net/http did before CVE-2025-22871, and Kestrel before
/// CVE-2025-55315) frames the body differently: request smuggling. nginx
/// and HAProxy answer 400; so does shardcast, by failing the read that
/// would deliver the bad line, which `request_filter` answers with 400 and
/// a closed connection. Pingora has no option to be strict here and does
/// not expose the raw body bytes, so the check sits in the connection
/// wrapper ([`poll_read_checked`]).
///
/// Refused in a chunk-size line: a bare LF, a CR not followed by LF, a
/// control character in an extension, a size that is not 1 to 16 hex
/// digits (optionally followed by whitespace, then `;` or the line end);
/// after chunk data, anything but CRLF; in the trailer section, a bare LF or
/// CR. The head is only read for `Transfer-Encoding`, `Content-Length` and
/// `Upgrade`; requests that [`crate::framing::check`] or Pingora refuse (and close) are not
/// followed further. Cost: a state step per byte of chunk-size lines and of the field names
/// and the `Transfer-Encoding`/`Content-Length` values of a head; the rest of
/// each line is skipped with `memchr`; no allocation.
#[derive(Debug, Clone)]
pub struct ChunkedFraming {
    st: St,
    head: HeadScan,
    /// The chunk being read: its size, then the bytes of it left.
    chunk: u64,
    /// The last request asked for `Upgrade`: a `101` written means the
    /// bytes that follow are another protocol's.
    await_101: bool,
    refused: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// Between requests: empty lines before a request line are skipped.
    Idle,
    Head,
    /// A Content-Length body: `chunk` bytes left.
    Fixed,
    /// Chunk-size digits so far.
    SizeDigits(u8),
    /// Whitespace after the size.
    SizeWs,
    Ext,
    SizeCr,
    /// Chunk data: `chunk` bytes left.
    Data,
    DataCr,
    DataLf,
    /// Trailer section; `true` at the start of a line.
    Trailer(bool),
    /// CR in the trailer section; `true` when it ends an empty line.
    TrailerCr(bool),
    /// Not HTTP/1 requests any more (HTTP/2 preface, upgraded, or a head
    /// that is refused and closed): nothing to check.
    Off,
}

fn hex(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

impl Default for ChunkedFraming {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedFraming {
    /// For a new HTTP/1 connection (not for HTTP/2).
    pub fn new() -> Self {
        Self {
            st: St::Idle,
            head: HeadScan::new(),
            chunk: 0,
            await_101: false,
            refused: None,
        }
    }

    /// Why the connection's framing was refused, once it was.
    pub fn refused(&self) -> Option<&'static str> {
        self.refused
    }

    /// Bytes just read from the client, in order. Once it returns an error,
    /// every later call does too (with `at` 0).
    pub fn feed(&mut self, data: &[u8]) -> Result<(), BadChunk> {
        if let Some(reason) = self.refused {
            return Err(BadChunk { at: 0, reason });
        }
        let mut i = 0;
        while i < data.len() {
            match self.st {
                St::Off => return Ok(()),
                St::Fixed | St::Data => {
                    let left = usize::try_from(self.chunk).unwrap_or(usize::MAX);
                    let n = left.min(data.len() - i);
                    i += n;
                    self.chunk -= n as u64;
                    if self.chunk == 0 {
                        self.st = if self.st == St::Fixed {
                            St::Idle
                        } else {
                            St::DataCr
                        };
                    }
                    continue;
                }
                St::Idle if !matches!(data[i], b'\r' | b'\n') => {
                    // A head that is whole in this read: read it in one go.
                    match head::whole(&data[i..]) {
                        Some(Whole::H2) => {
                            self.st = St::Off;
                            return Ok(());
                        }
                        Some(Whole::Head { len, sum }) => {
                            i += len;
                            self.st = self.body(sum);
                            continue;
                        }
                        None => {}
                    }
                }
                St::Head if self.head.rest_of_line_ignored() => {
                    // Only the line end matters from here: jump to it.
                    match memchr::memchr(b'\n', &data[i..]) {
                        Some(j) => i += j,
                        None => return Ok(()),
                    }
                }
                _ => {}
            }
            if let Err(reason) = self.step(data[i]) {
                self.refused = Some(reason);
                return Err(BadChunk { at: i, reason });
            }
            i += 1;
        }
        Ok(())
    }

    fn step(&mut self, b: u8) -> Result<(), &'static str> {
        const BARE_LF: &str = "bare LF in a chunk-size line";
        const LONE_CR: &str = "CR without LF in a chunk-size line";
        const BAD_SIZE: &str = "malformed chunk size";
        self.st = match (self.st, b) {
            (St::Idle, b'\r' | b'\n') => St::Idle,
            (St::Idle, _) => {
                self.head = HeadScan::new();
                self.head.byte(b);
                St::Head
            }
            (St::Head, b'\n') => {
                let was_request_line = self.head.request_line;
                if self.head.line_end() {
                    self.body(self.head.sum)
                } else if was_request_line && self.head.prefix == *H2_REQUEST_LINE {
                    St::Off
                } else {
                    St::Head
                }
            }
            (St::Head, _) => {
                self.head.byte(b);
                St::Head
            }
            (St::SizeDigits(n), _) if hex(b).is_some() => {
                if n >= 16 {
                    return Err("chunk size of more than 16 hex digits");
                }
                self.chunk = (self.chunk << 4) | hex(b).unwrap_or(0);
                St::SizeDigits(n + 1)
            }
            (St::SizeDigits(0), _) => return Err(BAD_SIZE),
            (St::SizeDigits(_) | St::SizeWs, b' ' | b'\t') => St::SizeWs,
            (St::SizeDigits(_) | St::SizeWs, b';') => St::Ext,
            (St::SizeDigits(_) | St::SizeWs | St::Ext, b'\r') => St::SizeCr,
            (St::SizeDigits(_) | St::SizeWs, b'\n') => return Err(BARE_LF),
            (St::SizeDigits(_) | St::SizeWs, _) => return Err(BAD_SIZE),
            (St::Ext, b'\n') => return Err("bare LF in a chunk extension"),
            (St::Ext, b'\t') => St::Ext,
            (St::Ext, 0..=0x1f | 0x7f) => return Err("control character in a chunk extension"),
            (St::Ext, _) => St::Ext,
            (St::SizeCr, b'\n') if self.chunk == 0 => St::Trailer(true),
            (St::SizeCr, b'\n') => St::Data,
            (St::SizeCr, _) => return Err(LONE_CR),
            (St::DataCr, b'\r') => St::DataLf,
            (St::DataLf, b'\n') => St::SizeDigits(0),
            (St::DataCr | St::DataLf, _) => return Err("chunk data not followed by CRLF"),
            (St::Trailer(_), b'\n') => return Err("bare LF in the trailer section"),
            (St::Trailer(start), b'\r') => St::TrailerCr(start),
            (St::Trailer(_), _) => St::Trailer(false),
            (St::TrailerCr(true), b'\n') => St::Idle,
            (St::TrailerCr(false), b'\n') => St::Trailer(true),
            (St::TrailerCr(_), _) => return Err("CR without LF in the trailer section"),
            (St::Fixed | St::Data | St::Off, _) => self.st,
        };
        if self.st == St::SizeDigits(0) || self.st == St::Idle {
            self.chunk = 0;
        }
        Ok(())
    }

    /// The head just ended: how its body is framed.
    fn body(&mut self, h: Summary) -> St {
        self.await_101 = h.upgrade;
        if h.folded || h.cl > 1 || h.te > 1 {
            // Refused by Pingora or by `framing::check`, and the connection closed.
            return St::Off;
        }
        if h.te == 1 {
            return if h.te_chunked && h.cl == 0 {
                self.chunk = 0;
                St::SizeDigits(0)
            } else {
                St::Off
            };
        }
        match (h.cl, h.cl_value) {
            (0, _) | (1, Some(0)) => St::Idle,
            (1, Some(n)) => {
                self.chunk = n;
                St::Fixed
            }
            _ => St::Off,
        }
    }

    /// Bytes just written to the client: after an `Upgrade` request, a
    /// `101` response means the connection is no longer HTTP/1.
    pub fn wrote(&mut self, data: &[u8]) {
        if !self.await_101 || data.len() < 12 || !data.starts_with(b"HTTP/1.") {
            return;
        }
        match &data[9..12] {
            b"101" => self.st = St::Off,
            [b'1', _, _] => {}
            _ => self.await_101 = false,
        }
    }
}

/// `poll_read` of a client connection with [`ChunkedFraming`] (`None`: not
/// checked, e.g. HTTP/2). A read that holds a refused byte returns the bytes
/// before it; the next read fails with `InvalidData` without reading, so a
/// request body being read ends in an error (400 from `request_filter`)
/// and nothing after the bad line reaches Pingora's parser.
#[inline(always)]
pub fn poll_read_checked<R: tokio::io::AsyncRead + ?Sized>(
    check: Option<&mut ChunkedFraming>,
    io: std::pin::Pin<&mut R>,
    cx: &mut std::task::Context<'_>,
    buf: &mut tokio::io::ReadBuf<'_>,
) -> std::task::Poll<std::io::Result<()>> {
    use std::task::Poll;
    // Inline into the stream's `poll_read` with the read below it: most
    // reads wait or bring no refused byte, and cost a test here; the check
    // of the bytes read and the refusals are out of line.
    let Some(check) = check else {
        return io.poll_read(cx, buf);
    };
    if let Some(why) = check.refused() {
        return Poll::Ready(Err(refused(why)));
    }
    let before = buf.filled().len();
    let r = io.poll_read(cx, buf);
    if let Poll::Ready(Ok(())) = r {
        return check_read(check, buf, before);
    }
    r
}

/// The bytes a read just brought (from `before` on), through the framing
/// check: cut before a refused byte, or refused whole when it is the first.
#[inline(never)]
fn check_read(
    check: &mut ChunkedFraming,
    buf: &mut tokio::io::ReadBuf<'_>,
    before: usize,
) -> std::task::Poll<std::io::Result<()>> {
    if let Err(bad) = check.feed(&buf.filled()[before..]) {
        if bad.at == 0 {
            buf.set_filled(before);
            return std::task::Poll::Ready(Err(refused(bad.reason)));
        }
        buf.set_filled(before + bad.at);
    }
    std::task::Poll::Ready(Ok(()))
}

#[cold]
fn refused(why: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("request body: {why}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `data` whole and in every two-piece split: the verdict and the
    /// absolute offset do not depend on how the bytes arrive.
    fn verdict(data: &[u8]) -> Result<(), (usize, &'static str)> {
        let whole = {
            let mut c = ChunkedFraming::new();
            c.feed(data).map_err(|b| (b.at, b.reason))
        };
        // one byte at a time: every head through the byte-wise scan
        let mut c = ChunkedFraming::new();
        let bytewise = data.iter().enumerate().try_for_each(|(i, b)| {
            c.feed(std::slice::from_ref(b))
                .map_err(|bad| (i + bad.at, bad.reason))
        });
        assert_eq!(
            bytewise,
            whole,
            "byte by byte: {:?}",
            String::from_utf8_lossy(data)
        );
        for cut in 0..=data.len() {
            let mut c = ChunkedFraming::new();
            let r = c
                .feed(&data[..cut])
                .map_err(|b| (b.at, b.reason))
                .and_then(|()| c.feed(&data[cut..]).map_err(|b| (cut + b.at, b.reason)));
            assert_eq!(
                r,
                whole,
                "split at {cut} of {:?}",
                String::from_utf8_lossy(data)
            );
        }
        whole
    }

    /// What a connection's check has decided after some bytes (the
    /// byte-wise head scan's own progress aside).
    fn state(c: &ChunkedFraming) -> (St, u64, bool, Option<&'static str>) {
        (c.st, c.chunk, c.await_101, c.refused)
    }

    fn feed_pieces(
        data: &[u8],
        cuts: &[usize],
    ) -> (Result<(), (usize, &'static str)>, ChunkedFraming) {
        let mut c = ChunkedFraming::new();
        let mut at = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|&k| k % (data.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.push(data.len());
        for cut in cuts {
            if let Err(b) = c.feed(&data[at..cut]) {
                return (Err((at + b.at, b.reason)), c);
            }
            at = cut;
        }
        (Ok(()), c)
    }

    /// Pieces of requests, ordinary and hostile, that the two head readers
    /// frame differently if they disagree anywhere.
    const REQUEST_LINES: &[&str] = &[
        "GET / HTTP/1.1",
        "POST /x HTTP/1.1",
        "PRI * HTTP/2.0",
        "PRI * HTTP/2.0x",
        "P\rRI * HTTP/2.0",
        "PUT /\r/ HTTP/1.1",
    ];
    const LINE_ENDS: &[&str] = &["\r\n", "\r\n", "\r\n", "\n", "\r", "\r\r\n"];
    const NAMES: &[&str] = &[
        "Host",
        "Transfer-Encoding",
        "transfer-encoding",
        "TRANSFER-ENCODINGx",
        "transfer",
        "Content-Length",
        "content-length",
        "CONTENT-length",
        "content-lengt",
        "Upgrade",
        "upgrade",
        "user-agent",
        "Cookie",
        "Content-Type",
        "con\rtent-length",
        " folded",
        "\tx",
        "\rcontent-length",
    ];
    const SEPS: &[&str] = &[":", ":", ": ", " :", ":\t ", ""];
    const VALUES: &[&str] = &[
        "chunked",
        "Chunked ",
        " chunked",
        "ch unked",
        "chunked\r",
        "3",
        "0",
        " 12 ",
        "1 2",
        "x",
        "99999999999999999999",
        "gzip, chunked",
        "",
    ];
    const BODIES: &[&str] = &[
        "",
        "",
        "3\r\nabc\r\n0\r\n\r\n",
        "3;x\nabc",
        "abc",
        "0\r\n\r\n",
        "1\r\nz\r\n",
        "\r\n",
    ];

    fn request() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::sample::select;
        use proptest::strategy::Strategy;
        let field = (
            select(NAMES),
            select(SEPS),
            select(VALUES),
            select(LINE_ENDS),
        )
            .prop_map(|(n, s, v, e)| format!("{n}{s}{v}{e}"));
        (
            select(REQUEST_LINES),
            select(LINE_ENDS),
            proptest::collection::vec(field, 0..5),
            select(LINE_ENDS),
            select(BODIES),
        )
            .prop_map(|(r, e, f, e2, b)| format!("{r}{e}{}{e2}{b}", f.concat()))
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(2000))]
        #[test]
        fn every_split_gives_the_same_verdict(
            reqs in proptest::collection::vec(request(), 1..4),
            cuts in proptest::collection::vec(0usize..4096, 0..4),
        ) {
            let data = reqs.concat();
            let data = data.as_bytes();
            let (whole, cw) = feed_pieces(data, &[]);
            let (split, cs) = feed_pieces(data, &cuts);
            let all: Vec<usize> = (1..data.len()).collect();
            let (bytewise, cb) = feed_pieces(data, &all);
            proptest::prop_assert_eq!(whole, split);
            proptest::prop_assert_eq!(whole, bytewise);
            if whole.is_ok() {
                proptest::prop_assert_eq!(state(&cw), state(&cs));
                proptest::prop_assert_eq!(state(&cw), state(&cb));
            }
        }
    }

    const CHUNKED: &str = "POST /i/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";

    #[test]
    fn well_formed_requests_pass() {
        for body in [
            "3\r\nabc\r\n0\r\n\r\n",
            "3;ext\r\nabc\r\n0\r\n\r\n",
            "3 ;a=b;c=\"d e\"\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\n",
            "3\t\r\nabc\r\n0\r\nX-Trailer: 1\r\nY: 2\r\n\r\n",
            "000000000000003\r\nabc\r\n0;x\r\n\r\n",
        ] {
            let req = format!("{CHUNKED}{body}GET /next HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(verdict(req.as_bytes()), Ok(()), "{body:?}");
        }
        // keep-alive: a Content-Length body (holding what would be a bad
        // chunk line), then a chunked request
        let req = format!(
            "\r\nPOST /a HTTP/1.1\nHost: x\ncontent-length:  7 \n\n3;x\nabc{CHUNKED}1\r\nz\r\n0\r\n\r\n"
        );
        assert_eq!(verdict(req.as_bytes()), Ok(()));
        assert_eq!(
            verdict(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(())
        );
    }

    #[test]
    fn bare_lf_and_stray_bytes_in_chunk_lines_are_refused() {
        let at = CHUNKED.len();
        let cases: &[(&str, usize, &str)] = &[
            ("3;ext\nabc\r\n0\r\n\r\n", 5, "bare LF in a chunk extension"),
            ("3\nabc\r\n0\r\n\r\n", 1, "bare LF in a chunk-size line"),
            ("3 \nabc\r\n0\r\n\r\n", 2, "bare LF in a chunk-size line"),
            (
                "3;a\rb\r\nabc\r\n0\r\n\r\n",
                4,
                "CR without LF in a chunk-size line",
            ),
            (
                "3;a\x00\r\nabc\r\n0\r\n\r\n",
                3,
                "control character in a chunk extension",
            ),
            ("3x\r\nabc\r\n0\r\n\r\n", 1, "malformed chunk size"),
            (";3\r\nabc\r\n0\r\n\r\n", 0, "malformed chunk size"),
            (
                "10000000000000000\r\n",
                16,
                "chunk size of more than 16 hex digits",
            ),
            (
                "3\r\nabcd\r\n0\r\n\r\n",
                6,
                "chunk data not followed by CRLF",
            ),
            ("3\r\nabc\n0\r\n\r\n", 6, "chunk data not followed by CRLF"),
            ("0\r\nX: 1\n\r\n", 7, "bare LF in the trailer section"),
            ("0\r\n\n", 3, "bare LF in the trailer section"),
            // the second chunk of a body
            (
                "1\r\na\r\n2;x\nbc\r\n0\r\n\r\n",
                9,
                "bare LF in a chunk extension",
            ),
        ];
        for (body, off, why) in cases {
            let req = format!("{CHUNKED}{body}");
            assert_eq!(verdict(req.as_bytes()), Err((at + off, *why)), "{body:?}");
        }
        // the second request on a connection
        let req = format!("GET / HTTP/1.1\r\nHost: x\r\n\r\n{CHUNKED}3;x\nabc\r\n0\r\n\r\n");
        assert!(verdict(req.as_bytes()).is_err());
        // header names in any case, a value with whitespace around it
        let req = "POST / HTTP/1.1\r\nHost: x\r\nTRANSFER-encoding:   Chunked  \r\n\r\n3;x\nabc\r\n0\r\n\r\n";
        assert!(verdict(req.as_bytes()).is_err());
        let mut c = ChunkedFraming::new();
        assert!(c.feed(format!("{CHUNKED}3;\n").as_bytes()).is_err());
        assert_eq!(c.feed(b"more").unwrap_err().at, 0);
        assert!(c.refused().is_some());
    }

    #[test]
    fn what_is_not_followed() {
        // HTTP/2 prior knowledge
        let req = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\n\n";
        assert_eq!(verdict(req), Ok(()));
        // heads Pingora or `check` refuse and close: not followed further
        for head in [
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3x\r\n\r\n",
        ] {
            let req = format!("{head}3;x\nabc\r\n0\r\n\r\n");
            assert_eq!(verdict(req.as_bytes()), Ok(()), "{head:?}");
        }
        // a long value is not cut into `chunked`
        let req = format!(
            "POST / HTTP/1.1\r\nTransfer-Encoding: {}chunked\r\n\r\n3;x\nabc",
            "x".repeat(40)
        );
        assert_eq!(verdict(req.as_bytes()), Ok(()));
        // but a long run of whitespace around `chunked` is still chunked
        let req = format!(
            "POST / HTTP/1.1\r\nTransfer-Encoding:{}chunked{}\r\n\r\n3;x\nabc",
            " ".repeat(300),
            "\t".repeat(300)
        );
        assert!(verdict(req.as_bytes()).is_err());
    }

    #[test]
    fn an_upgrade_is_followed_until_its_101() {
        let mut c = ChunkedFraming::new();
        let up =
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
        c.feed(up).unwrap();
        c.wrote(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        // not upgraded: still HTTP/1
        assert!(c.feed(format!("{CHUNKED}3;x\n").as_bytes()).is_err());
        let mut c = ChunkedFraming::new();
        c.feed(up).unwrap();
        c.wrote(b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
        c.feed(b"\x81\x05hello 3;x\n\r\n\n").unwrap();
    }

    #[tokio::test]
    async fn a_read_holding_a_bad_line_ends_before_it_and_the_next_fails() {
        use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

        struct Checked<R> {
            io: R,
            check: Option<ChunkedFraming>,
        }
        impl<R: AsyncRead + Unpin> AsyncRead for Checked<R> {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                let this = &mut *self;
                poll_read_checked(
                    this.check.as_mut(),
                    std::pin::Pin::new(&mut this.io),
                    cx,
                    buf,
                )
            }
        }

        let req = format!("{CHUNKED}3;ext\nabc\r\n0\r\n\r\n");
        let mut s = Checked {
            io: req.as_bytes(),
            check: Some(ChunkedFraming::new()),
        };
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], format!("{CHUNKED}3;ext").as_bytes());
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(
            e.to_string().contains("bare LF in a chunk extension"),
            "{e}"
        );
        // unchecked: everything passes
        let mut s = Checked {
            io: req.as_bytes(),
            check: None,
        };
        let mut all = vec![];
        s.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, req.as_bytes());
    }
}
