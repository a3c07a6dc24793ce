//! The HTTP/1.1 wire format that Myelin's client listener speaks, without any I/O: request
//! heads (over `httparse`, the parser hyper uses), the body framing they declare, and a
//! sans-I/O decoder for chunked bodies.
//!
//! The listener (`myelin::server::http1`) owns sockets, buffers and timeouts and calls these
//! functions on the bytes it has read. They live in their own crate so that the fuzz targets in
//! `wire/fuzz/` build this code and `httparse` only, in seconds, rather than the whole server.
//!
//! Every rule here errs on the side of refusing: a request whose framing two parsers could read
//! differently (a bare LF, a signed chunk size, both `Transfer-Encoding` and `Content-Length`)
//! is how a request is smuggled past a proxy, so it is answered with 400 and the connection ends.
//! `myelin`'s differential test (`src/server/http1/differential.rs`) holds a corpus of such
//! requests and checks that hyper's server and this crate accept and refuse the same ones.

#![forbid(unsafe_code)]

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version, header};

/// Most bytes of a request line and headers.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a request (as hyper), and most trailer fields of a chunked body.
pub const MAX_HEADERS: usize = 100;
/// Longest chunk-size line (with extensions) or trailer line of a chunked body.
pub const MAX_CHUNK_LINE: usize = 4096;

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed request head.
#[derive(Debug)]
pub struct Head {
    /// Method, URI, version and headers, ready for `Request::from_parts`.
    pub parts: http::request::Parts,
    /// How the body that follows is delimited.
    pub framing: Framing,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
    /// Whether the client waits for `100 Continue` before sending the body.
    pub expect_continue: bool,
}

/// A request refused before it reached the application: the status to answer and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// 400, 431 or 501.
    pub status: StatusCode,
    /// A short, fixed explanation (it never echoes request bytes).
    pub error: &'static str,
}

impl Refusal {
    /// A 400 Bad Request.
    pub const fn bad(error: &'static str) -> Self {
        Self { status: StatusCode::BAD_REQUEST, error }
    }
}

/// The refusal for a head over [`MAX_HEAD`] bytes or [`MAX_HEADERS`] fields.
pub const HEAD_TOO_LARGE: Refusal =
    Refusal { status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, error: "Request headers too large" };

/// Parses a complete head at the start of `buf`, returning it and its length in bytes, or
/// `None` if more bytes are needed.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HEAD_TOO_LARGE),
        Err(_) => return Err(Refusal::bad("Malformed HTTP request")),
    };
    if len > MAX_HEAD {
        return Err(HEAD_TOO_LARGE);
    }
    // One copy of the head that the URI and header values point into; `buf` can then go.
    let shared = Bytes::copy_from_slice(&buf[..len]);
    let slice_of = |part: &[u8]| {
        let start = part.as_ptr() as usize - buf.as_ptr() as usize;
        shared.slice(start..start + part.len())
    };
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| Refusal::bad("Malformed HTTP method"))?;
    let uri = Uri::from_maybe_shared(slice_of(req.path.unwrap_or_default().as_bytes()))
        .map_err(|_| Refusal::bad("Malformed request target"))?;
    let version = if req.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let mut map = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| Refusal::bad("Malformed header name"))?;
        let value =
            HeaderValue::from_maybe_shared(slice_of(h.value)).map_err(|_| Refusal::bad("Malformed header value"))?;
        map.append(name, value);
    }
    let framing = framing(&map, version)?;
    let keep_alive = match version {
        Version::HTTP_10 => has_token(&map, header::CONNECTION, "keep-alive"),
        _ => !has_token(&map, header::CONNECTION, "close"),
    };
    let expect_continue = version == Version::HTTP_11
        && map.get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));

    let mut parts = Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = map;
    Ok(Some((Head { parts, framing, keep_alive, expect_continue }, len)))
}

/// The body framing of a request (RFC 9112 section 6.3). A message with both
/// `Transfer-Encoding` and `Content-Length`, with differing lengths, or with a coding applied
/// twice, is refused: those are the ambiguities request smuggling is made of. (hyper lets
/// `Transfer-Encoding` win over `Content-Length` and accepts `chunked, chunked`; RFC 9112
/// allows refusing both, and a server behind a proxy should.)
pub fn framing(headers: &HeaderMap, version: Version) -> Result<Framing, Refusal> {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        if version == Version::HTTP_10 || headers.contains_key(header::CONTENT_LENGTH) {
            return Err(Refusal::bad("Ambiguous request body framing"));
        }
        let mut codings = Vec::new();
        for value in headers.get_all(header::TRANSFER_ENCODING) {
            let value = value.to_str().map_err(|_| Refusal::bad("Malformed Transfer-Encoding"))?;
            codings.extend(value.split(',').map(str::trim).filter(|c| !c.is_empty()));
        }
        return match codings.as_slice() {
            [only] if only.eq_ignore_ascii_case("chunked") => Ok(Framing::Chunked),
            [.., last] if last.eq_ignore_ascii_case("chunked") => {
                Err(Refusal { status: StatusCode::NOT_IMPLEMENTED, error: "Unsupported transfer coding" })
            }
            _ => Err(Refusal::bad("Request body framing is not chunked")),
        };
    }
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        // Digits only: `u64::from_str` would take a sign, and a list ("5, 5") is refused as
        // hyper refuses it (RFC 9110 section 8.6 allows either).
        let value = value.as_bytes();
        if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
            return Err(Refusal::bad("Malformed Content-Length"));
        }
        let n = value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if length.is_some_and(|l| l != n) {
            return Err(Refusal::bad("Conflicting Content-Length"));
        }
        length = Some(n);
    }
    Ok(match length {
        None | Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
    })
}

/// Whether a comma-separated header such as `Connection` holds `token`.
pub fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// What follows in a chunked body, as told by [`ChunkedDecoder::decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// More bytes are needed to read the next piece of framing.
    NeedMore,
    /// The next this many bytes are body data: pass them on, then call `decode` again.
    Data(u64),
    /// The body is complete (trailers included).
    End,
}

/// Where a [`ChunkedDecoder`] is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// At a chunk-size line.
    Size,
    /// After a chunk's data: its CRLF comes next.
    DataEnd,
    /// After the last chunk: trailer fields up to an empty line.
    Trailers(usize),
    /// Done.
    End,
}

/// Decodes `Transfer-Encoding: chunked` framing (RFC 9112 section 7.1) from bytes the caller
/// reads: every line must end with CRLF (a bare LF or CR is refused), a chunk size is hex
/// digits only (no sign, no `0x`, no leading space; whitespace before `;` or the CRLF is
/// allowed, as hyper does), extensions are ignored, and trailers must be header fields.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: ChunkState,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    /// A decoder at the start of a body.
    pub const fn new() -> Self {
        Self { state: ChunkState::Size }
    }

    /// Reads framing from the start of `buf`. Returns how many bytes of framing it used (the
    /// caller removes them) and what follows. After [`Chunk::Data`]`(n)` the caller passes
    /// the next `n` body bytes on and calls `decode` again on what comes after them.
    pub fn decode(&mut self, buf: &[u8]) -> Result<(usize, Chunk), Refusal> {
        let mut used = 0;
        loop {
            let rest = &buf[used..];
            match self.state {
                ChunkState::End => return Ok((used, Chunk::End)),
                ChunkState::Size => {
                    let Some(len) = crlf_line(rest)? else { return Ok((used, Chunk::NeedMore)) };
                    let size = chunk_size(&rest[..len])?;
                    used += len + 2;
                    if size == 0 {
                        self.state = ChunkState::Trailers(0);
                    } else {
                        self.state = ChunkState::DataEnd;
                        return Ok((used, Chunk::Data(size)));
                    }
                }
                ChunkState::DataEnd => {
                    let Some(len) = crlf_line(rest)? else { return Ok((used, Chunk::NeedMore)) };
                    if len != 0 {
                        return Err(Refusal::bad("Chunk data longer than its size"));
                    }
                    used += 2;
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers(count) => {
                    let Some(len) = crlf_line(rest)? else { return Ok((used, Chunk::NeedMore)) };
                    if len == 0 {
                        used += 2;
                        self.state = ChunkState::End;
                        continue;
                    }
                    if count >= MAX_HEADERS {
                        return Err(Refusal::bad("Too many trailer fields"));
                    }
                    trailer_field(&rest[..len])?;
                    used += len + 2;
                    self.state = ChunkState::Trailers(count + 1);
                }
            }
        }
    }
}

/// The length of the CRLF-terminated line at the start of `buf` (without the CRLF), `None`
/// if it is not complete yet. A CR not followed by LF, or an LF not preceded by CR, is refused.
fn crlf_line(buf: &[u8]) -> Result<Option<usize>, Refusal> {
    match buf.iter().take(MAX_CHUNK_LINE + 1).position(|&b| b == b'\r' || b == b'\n') {
        Some(i) if buf[i] == b'\n' => Err(Refusal::bad("Bare LF in chunked body framing")),
        Some(i) if i + 1 == buf.len() => Ok(None),
        Some(i) if buf[i + 1] == b'\n' => Ok(Some(i)),
        Some(_) => Err(Refusal::bad("Bare CR in chunked body framing")),
        None if buf.len() > MAX_CHUNK_LINE => Err(Refusal::bad("Chunk line too long")),
        None => Ok(None),
    }
}

/// Parses a chunk-size line (without its CRLF): `1*HEXDIG *( SP / HTAB ) [ ";" extensions ]`.
pub fn chunk_size(line: &[u8]) -> Result<u64, Refusal> {
    const BAD: Refusal = Refusal::bad("Malformed chunk size");
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(BAD);
    }
    let mut size = 0u64;
    for &b in &line[..digits] {
        let digit = (b as char).to_digit(16).ok_or(BAD)?;
        size = size.checked_mul(16).and_then(|s| s.checked_add(u64::from(digit))).ok_or(BAD)?;
    }
    let rest = &line[digits..];
    let after_space = rest.iter().position(|&b| b != b' ' && b != b'\t').map_or(&[][..], |i| &rest[i..]);
    match after_space.first() {
        None | Some(b';') => Ok(size),
        Some(_) => Err(BAD),
    }
}

/// Checks that a trailer line is a header field (`name: value`); its content is discarded.
fn trailer_field(line: &[u8]) -> Result<(), Refusal> {
    const BAD: Refusal = Refusal::bad("Malformed trailer field");
    let colon = line.iter().position(|&b| b == b':').ok_or(BAD)?;
    HeaderName::from_bytes(&line[..colon]).map_err(|_| BAD)?;
    HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).map_err(|_| BAD)?;
    Ok(())
}

/// Decodes a whole chunked body held in memory: the body and the number of bytes of `input` it
/// took, or `None` when `input` ends before the body does. For tests and fuzzing; the listener
/// drives [`ChunkedDecoder`] itself as bytes arrive.
pub fn decode_chunked(input: &[u8]) -> Result<Option<(Vec<u8>, usize)>, Refusal> {
    let mut decoder = ChunkedDecoder::new();
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let (used, next) = decoder.decode(&input[at..])?;
        at += used;
        match next {
            Chunk::NeedMore => return Ok(None),
            Chunk::End => return Ok(Some((body, at))),
            Chunk::Data(n) => {
                let Some(data) = usize::try_from(n).ok().and_then(|n| input.get(at..at.checked_add(n)?)) else {
                    return Ok(None);
                };
                body.extend_from_slice(data);
                at += data.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<(Head, usize)>, Refusal> {
        parse_head(text.as_bytes())
    }

    #[test]
    fn parses_a_get_and_keeps_what_follows() {
        let text =
            "GET /_matrix/client/v3/sync?timeout=30000 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer x\r\n\r\nGET /next";
        let (head, len) = parse(text).unwrap().unwrap();
        assert_eq!(&text[len..], "GET /next");
        assert_eq!(head.parts.method, Method::GET);
        assert_eq!(head.parts.uri.path(), "/_matrix/client/v3/sync");
        assert_eq!(head.parts.uri.query(), Some("timeout=30000"));
        assert_eq!(head.parts.headers["authorization"], "Bearer x");
        assert_eq!(head.framing, Framing::Empty);
        assert!(head.keep_alive);
        assert!(!head.expect_continue);
    }

    #[test]
    fn a_partial_head_needs_more() {
        assert!(parse("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let framing_of = |headers: &str| {
            parse(&format!("POST / HTTP/1.1\r\n{headers}\r\n")).map(|h| h.map(|(h, _)| h.framing).unwrap())
        };
        assert_eq!(framing_of("Content-Length: 12\r\n"), Ok(Framing::Length(12)));
        assert_eq!(framing_of("Content-Length: 0\r\n"), Ok(Framing::Empty));
        assert_eq!(framing_of("Content-Length: 5\r\nContent-Length: 5\r\n"), Ok(Framing::Length(5)));
        assert_eq!(framing_of("Transfer-Encoding: Chunked\r\n"), Ok(Framing::Chunked));
        assert_eq!(framing_of(""), Ok(Framing::Empty));
        for bad in [
            "Content-Length: 5\r\nContent-Length: 6\r\n",
            "Content-Length: -1\r\n",
            "Content-Length: +5\r\n",
            "Content-Length: 5, 5\r\n",
            "Content-Length: 99999999999999999999999\r\n",
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
            "Transfer-Encoding: gzip\r\n",
        ] {
            assert_eq!(framing_of(bad).unwrap_err().status, StatusCode::BAD_REQUEST, "{bad}");
        }
        assert_eq!(framing_of("Transfer-Encoding: gzip, chunked\r\n").unwrap_err().status, StatusCode::NOT_IMPLEMENTED);
    }

    #[test]
    fn persistence_depends_on_version_and_connection() {
        let keep = |text: &str| parse(text).unwrap().unwrap().0.keep_alive;
        assert!(keep("GET / HTTP/1.1\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.0\r\n\r\n"));
        assert!(keep("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn malformed_and_oversized_heads_are_refused() {
        assert_eq!(parse("GET / HTTP/1.1\r\nBad Header\r\n\r\n").unwrap_err().status, StatusCode::BAD_REQUEST);
        assert_eq!(parse("G\0T / HTTP/1.1\r\n\r\n").unwrap_err().status, StatusCode::BAD_REQUEST);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            parse(&format!("GET / HTTP/1.1\r\n{many}\r\n")).unwrap_err().status,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[test]
    fn expect_continue_is_recognised() {
        let (head, _) = parse("PUT / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n").unwrap().unwrap();
        assert!(head.expect_continue);
    }

    #[test]
    fn chunked_bodies_decode() {
        let ok =
            |input: &str| decode_chunked(input.as_bytes()).unwrap().map(|(b, n)| (String::from_utf8(b).unwrap(), n));
        assert_eq!(ok("5\r\nhello\r\n0\r\n\r\nNEXT"), Some(("hello".into(), 15)));
        assert_eq!(ok("5;name=value\r\nhello\r\n1 \t\r\n!\r\n0\r\nX-Trailer: 1\r\n\r\n").unwrap().0, "hello!");
        assert_eq!(ok("A\r\n0123456789\r\n0000000000000000000\r\n\r\n").unwrap().0, "0123456789");
        assert_eq!(ok("5\r\nhel"), None);
        assert_eq!(ok("5\r\nhello\r"), None);
        assert_eq!(ok("0\r\n"), None);
    }

    #[test]
    fn ambiguous_chunk_framing_is_refused() {
        for bad in [
            "5\nhello\r\n0\r\n\r\n",               // bare LF after a size
            "5\r\nhello\n0\r\n\r\n",               // bare LF after data
            "5\r\nhello\r\n0\n\r\n",               // bare LF after the last chunk
            "5\r\nhello\r\n0\r\n\n",               // bare LF ending the trailers
            "5\rhello\r\n0\r\n\r\n",               // bare CR
            "+5\r\nhello\r\n0\r\n\r\n",            // signed size
            "-5\r\nhello\r\n0\r\n\r\n",            // negative size
            "0x5\r\nhello\r\n0\r\n\r\n",           // prefixed size
            " 5\r\nhello\r\n0\r\n\r\n",            // leading space
            "5 5\r\nhello\r\n0\r\n\r\n",           // digits after whitespace
            "\r\nhello\r\n0\r\n\r\n",              // no size
            "10000000000000000\r\nx\r\n0\r\n\r\n", // over u64
            "3\r\nhello\r\n0\r\n\r\n",             // data longer than its size
            "5;a\rb\r\nhello\r\n0\r\n\r\n",        // CR inside an extension
            "0\r\nGET /x HTTP/1.1\r\n\r\n",        // a request taken for a trailer
            "0\r\n: value\r\n\r\n",                // trailer without a name
        ] {
            assert!(decode_chunked(bad.as_bytes()).is_err(), "{bad:?} was accepted");
        }
        let long = format!("5;{}\r\nhello\r\n0\r\n\r\n", "x".repeat(MAX_CHUNK_LINE));
        assert!(decode_chunked(long.as_bytes()).is_err());
    }

    #[test]
    fn the_decoder_resumes_at_any_split() {
        let input = b"5;x\r\nhello\r\n6\r\n world\r\n0\r\nA: b\r\n\r\n";
        for split in 0..input.len() {
            let mut decoder = ChunkedDecoder::new();
            let mut buf = input[..split].to_vec();
            let mut rest = &input[split..];
            let mut body = Vec::new();
            loop {
                let (used, next) = decoder.decode(&buf).unwrap();
                buf.drain(..used);
                match next {
                    Chunk::End => break,
                    Chunk::NeedMore => {
                        buf.extend_from_slice(rest);
                        rest = &[];
                    }
                    Chunk::Data(n) => {
                        buf.extend_from_slice(rest);
                        rest = &[];
                        body.extend(buf.drain(..n as usize));
                    }
                }
            }
            assert_eq!(body, b"hello world", "split at {split}");
            assert!(buf.is_empty());
        }
    }
}
