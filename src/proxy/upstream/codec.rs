//! HTTP/1.1 as sweeplb speaks it to a backend, in bytes: the request head written from a
//! request's parts, the response head read with `httparse`, the response's framing (RFC 9112
//! §6.3) and its chunked coding (§7.1).
//!
//! Strict where a backend could make the proxy and the client disagree on where a response
//! ends: two different `Content-Length`s, a malformed length or chunk size, bare LF line ends,
//! obs-fold and whitespace before a colon are the backend's failure (a 502), never guessed at.
//! A message the proxy cannot tell the end of but by the connection closing is read to its
//! close and the connection is not used again. Pure functions over a buffer: no I/O, so they
//! are tested and fuzzed byte by byte ([`crate::fuzzing`]'s `response` target).

use std::mem::MaybeUninit;

use bytes::{Buf, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use smallvec::SmallVec;

pub(crate) use crate::http1::{ChunkError, Chunked, Decoded, chunk_header};
use crate::http1::{MAX_FIELDS, content_length, field_offsets};

/// The largest response head accepted, status line and fields. nginx's default
/// `proxy_buffer_size` is 4-8 KiB and HAProxy's whole buffer 16 KiB; a backend's head larger
/// than this is refused with 502.
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// A backend broke the protocol, or the connection broke under the exchange.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BackendError {
    #[error("malformed response head: {0}")]
    Head(#[from] httparse::Error),
    #[error("response head larger than {MAX_RESPONSE_HEAD} bytes")]
    HeadTooLarge,
    #[error("invalid or conflicting Content-Length in the response")]
    ContentLength,
    #[error("malformed chunked body: {0}")]
    Chunk(#[from] ChunkError),
    #[error("the connection closed before a response came")]
    Closed,
    #[error("the connection closed {0} bytes before the end of the response body")]
    Truncated(u64),
    #[error("the connection closed in the middle of a chunked response body")]
    TruncatedChunks,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// How a request body is framed on its way upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outgoing {
    /// No body at all.
    None,
    /// Exactly this many bytes, as its `Content-Length` says.
    Length(u64),
    /// Chunked, `Transfer-Encoding: chunked` added: a streamed body of unknown length.
    Chunked,
}

impl Outgoing {
    /// The framing for a request with these headers whose body is (or is not) known empty.
    /// The client's own `Transfer-Encoding` was removed as hop-by-hop; its `Content-Length` is
    /// kept, and the server has already held the client's body to it.
    pub(crate) fn of(headers: &HeaderMap, body_empty: bool) -> Outgoing {
        match headers.get(header::CONTENT_LENGTH) {
            Some(v) => match std::str::from_utf8(v.as_bytes())
                .ok()
                .and_then(|s| s.parse().ok())
            {
                Some(n) => Outgoing::Length(n),
                // The server refuses a request with a bad length; a retry's copy carries the same.
                None => Outgoing::Chunked,
            },
            None if body_empty => Outgoing::None,
            None => Outgoing::Chunked,
        }
    }
}

/// Writes a request head: `method target HTTP/1.1`, the fields, and `Transfer-Encoding:
/// chunked` when the body is sent chunked. The target is the origin-form the header rules
/// made; names are written as `http` keeps them (lower case), values as they came.
pub(crate) fn encode_request(
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    body: Outgoing,
    dst: &mut Vec<u8>,
) {
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let target = if target.is_empty() { "/" } else { target };
    dst.extend_from_slice(method.as_str().as_bytes());
    dst.push(b' ');
    dst.extend_from_slice(target.as_bytes());
    dst.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    if body == Outgoing::Chunked {
        dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    dst.extend_from_slice(b"\r\n");
}

/// How a response's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// It has none: a response to `HEAD`, a 204, a 304, a 101.
    Empty,
    Length(u64),
    Chunked,
    /// Only the connection's close ends it; the connection is not used again.
    UntilClose,
}

/// A response head as read.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) framing: Framing,
    /// The connection may carry another request once this response is read to its end.
    pub(crate) keep_alive: bool,
}

/// Reads the response head at the front of `buf`, consuming it (and any interim 1xx response
/// before it, other than a 101): `None` while it is incomplete. `method` is the request's, for
/// `HEAD`.
pub(crate) fn parse_response(
    buf: &mut BytesMut,
    method: &Method,
) -> Result<Option<ResponseHead>, BackendError> {
    loop {
        if buf.is_empty() {
            return Ok(None);
        }
        // The fields' array is not zeroed first: a response's fields are few, and zeroing room
        // for a hundred cost more than parsing them.
        let mut at = SmallVec::new();
        let (len, code, minor) = {
            let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
            let mut resp = httparse::Response::new(&mut []);
            let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut resp,
                buf,
                &mut fields,
            )?;
            let len = match parsed {
                httparse::Status::Complete(len) => len,
                httparse::Status::Partial if buf.len() >= MAX_RESPONSE_HEAD => {
                    return Err(BackendError::HeadTooLarge);
                }
                httparse::Status::Partial => return Ok(None),
            };
            if len > MAX_RESPONSE_HEAD {
                return Err(BackendError::HeadTooLarge);
            }
            field_offsets(buf, resp.headers, &mut at);
            // Complete means both were read.
            (len, resp.code.unwrap_or(0), resp.version.unwrap_or(1))
        };
        if (100..200).contains(&code) && code != 101 {
            // Interim (100 Continue, 103 Early Hints): the final response follows.
            buf.advance(len);
            continue;
        }
        let status =
            StatusCode::from_u16(code).map_err(|_| BackendError::Head(httparse::Error::Status))?;
        let version = if minor == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let head = buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(at.len());
        let mut length: Option<u64> = None;
        let mut bad_length = false;
        let mut coded = false;
        let mut chunked_last = false;
        let mut close = version == Version::HTTP_10;
        for &(ns, ne, vs, ve) in &at {
            let (ns, ne, vs, ve) = (ns as usize, ne as usize, vs as usize, ve as usize);
            let name = HeaderName::from_bytes(&head[ns..ne])
                .map_err(|_| BackendError::Head(httparse::Error::HeaderName))?;
            let raw = &head[vs..ve];
            if name == header::CONTENT_LENGTH {
                match content_length(raw) {
                    Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                    _ => bad_length = true,
                }
            } else if name == header::TRANSFER_ENCODING {
                coded = true;
                // The last coding of the last field is the one applied last (RFC 9112 §6.1).
                chunked_last = crate::http1::is_chunked(raw);
            } else if name == header::CONNECTION {
                for token in raw.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive")
                        && version == Version::HTTP_10
                    {
                        close = false;
                    }
                }
            }
            // httparse checked the value's bytes already (no CR, LF or NUL).
            let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
                .map_err(|_| BackendError::Head(httparse::Error::HeaderValue))?;
            headers.append(name, value);
        }
        let bodiless = *method == Method::HEAD || code == 101 || code == 204 || code == 304;
        let (framing, keep_alive) = if bodiless {
            (Framing::Empty, !close)
        } else if coded {
            // A Transfer-Encoding overrides any Content-Length; a message with both may be an
            // attempt at smuggling, so its connection ends with it (RFC 9112 §6.3).
            if chunked_last {
                (Framing::Chunked, !close && length.is_none() && !bad_length)
            } else {
                (Framing::UntilClose, false)
            }
        } else if bad_length {
            return Err(BackendError::ContentLength);
        } else if let Some(n) = length {
            (Framing::Length(n), !close)
        } else {
            (Framing::UntilClose, false)
        };
        return Ok(Some(ResponseHead {
            status,
            version,
            headers,
            framing,
            keep_alive,
        }));
    }
}

/// `bytes` from a backend fed `step` at a time through the head parser and the body's
/// framing, as the exchange reads them: what came of it, summed up, so that two ways of
/// feeding the same bytes can be compared (the `response` fuzz target's differential check).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn read_through(bytes: &[u8], method: &Method, step: usize) -> String {
    let step = step.max(1);
    let (mut buf, mut fed) = (BytesMut::new(), 0);
    let mut feed = |buf: &mut BytesMut| {
        let next = (fed + step).min(bytes.len());
        buf.extend_from_slice(&bytes[fed..next]);
        let more = next > fed;
        fed = next;
        more
    };
    let head = loop {
        match parse_response(&mut buf, method) {
            Ok(Some(head)) => break head,
            Ok(None) if feed(&mut buf) => {}
            Ok(None) => return "incomplete head".into(),
            Err(_) => return "refused head".into(),
        }
    };
    assert!(
        !(100..200).contains(&head.status.as_u16())
            || head.status == StatusCode::SWITCHING_PROTOCOLS,
        "an interim response was taken for the final one"
    );
    let mut summary = format!(
        "{} {:?} {:?} keep-alive={} {:?}",
        head.status, head.version, head.framing, head.keep_alive, head.headers
    );
    let mut body = Vec::new();
    let end = match head.framing {
        Framing::Empty => "end".to_string(),
        Framing::Length(n) => {
            while (buf.len() as u64) < n && feed(&mut buf) {}
            let take = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
            body.extend_from_slice(&buf[..take]);
            if take as u64 == n {
                "end".into()
            } else {
                "truncated".into()
            }
        }
        Framing::UntilClose => {
            while feed(&mut buf) {}
            body.extend_from_slice(&buf);
            "closed".into()
        }
        Framing::Chunked => {
            let mut chunks = Chunked::default();
            loop {
                match chunks.decode(&mut buf) {
                    Ok(Decoded::Data(d)) => body.extend_from_slice(&d),
                    Ok(Decoded::Trailers(t)) => break format!("trailers {t:?}"),
                    Ok(Decoded::End) => break "end".into(),
                    Ok(Decoded::More) if feed(&mut buf) => {}
                    Ok(Decoded::More) => break "truncated".into(),
                    Err(e) => break format!("refused body: {e}"),
                }
            }
        }
    };
    assert!(body.len() <= bytes.len(), "more body than bytes");
    summary.push_str(&format!(" body={body:?} {end}"));
    summary
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn parse(bytes: &[u8], method: Method) -> Result<Option<ResponseHead>, BackendError> {
        parse_response(&mut BytesMut::from(bytes), &method)
    }

    fn head(bytes: &str) -> ResponseHead {
        match parse(bytes.as_bytes(), Method::GET) {
            Ok(Some(h)) => h,
            other => panic!("{bytes:?}: {other:?}"),
        }
    }

    fn refused(bytes: &str) -> BackendError {
        match parse(bytes.as_bytes(), Method::GET) {
            Err(e) => e,
            other => panic!("{bytes:?} was accepted: {other:?}"),
        }
    }

    #[test]
    fn a_request_head_is_written_origin_form_with_its_fields() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("example.test"));
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        let uri: http::Uri = "/p?q=1".parse().unwrap();
        let mut out = Vec::new();
        encode_request(&Method::POST, &uri, &h, Outgoing::Chunked, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nhost: example.test\r\nx-a: 1\r\nx-a: 2\r\n\
             transfer-encoding: chunked\r\n\r\n"
        );
        let mut out = Vec::new();
        encode_request(
            &Method::GET,
            &"*".parse().unwrap(),
            &HeaderMap::new(),
            Outgoing::None,
            &mut out,
        );
        assert_eq!(out, b"GET * HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn a_request_body_is_framed_by_its_length_else_chunked() {
        let mut h = HeaderMap::new();
        assert_eq!(Outgoing::of(&h, true), Outgoing::None);
        assert_eq!(Outgoing::of(&h, false), Outgoing::Chunked);
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert_eq!(Outgoing::of(&h, false), Outgoing::Length(12));
        assert_eq!(Outgoing::of(&h, true), Outgoing::Length(12));
    }

    #[test]
    fn a_response_is_framed_as_rfc_9112_says() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\n");
        assert_eq!(
            (h.status.as_u16(), h.framing, h.keep_alive),
            (200, Framing::Length(5), true)
        );
        assert_eq!(h.headers["x-a"], "b");
        // A list of one length repeated is that length.
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n").framing,
            Framing::Length(5)
        );
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, true));
        // Both: the chunks frame it, and the connection ends with it.
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
        // A coding other than chunked last, or no framing at all: read to the close.
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, false));
        let h = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, false));
        for bodiless in [
            "204 No Content",
            "304 Not Modified",
            "101 Switching Protocols",
        ] {
            let h = head(&format!("HTTP/1.1 {bodiless}\r\nContent-Length: 5\r\n\r\n"));
            assert_eq!(h.framing, Framing::Empty, "{bodiless}");
        }
        let bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        let h = parse(bytes, Method::HEAD).unwrap().unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Empty, true));
        assert_eq!(h.headers[header::CONTENT_LENGTH], "5");
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        assert!(
            !head("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").keep_alive
        );
        assert!(!head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
        let h = head("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n");
        assert!(h.keep_alive);
        assert_eq!(h.version, Version::HTTP_10);
    }

    #[test]
    fn interim_responses_are_skipped_to_the_final_one() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
               HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"[..],
        );
        let h = parse_response(&mut buf, &Method::POST).unwrap().unwrap();
        assert_eq!(h.status, StatusCode::CREATED);
        assert!(!h.headers.contains_key("link"));
        assert_eq!(&buf[..], b"ok", "the body is left in the buffer");
    }

    #[test]
    fn a_head_split_anywhere_is_read_once_it_is_whole() {
        let bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nSet-Cookie: a=b\r\n\r\nabc";
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            let head_len = bytes.len() - 3;
            match parse_response(&mut buf, &Method::GET).unwrap() {
                None => assert!(cut < head_len, "whole at {cut} but not read"),
                Some(h) => {
                    assert!(cut >= head_len);
                    assert_eq!(h.headers["set-cookie"], "a=b");
                    assert_eq!(buf.len(), cut - head_len);
                }
            }
        }
    }

    #[test]
    fn ambiguous_or_malformed_heads_are_refused() {
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
        ] {
            assert!(
                matches!(refused(bad), BackendError::ContentLength),
                "{bad:?}"
            );
        }
        for bad in [
            // obs-fold, whitespace before the colon, a space in a name, no status code.
            "HTTP/1.1 200 OK\r\nX-A: 1\r\n continued\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX A: 1\r\n\r\n",
            "HTTP/1.1 OK\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
        ] {
            assert!(matches!(refused(bad), BackendError::Head(_)), "{bad:?}");
        }
    }

    #[test]
    fn a_head_larger_than_the_limit_is_refused_finished_or_not() {
        // Few fields, one of them long: the size is what is refused, not the count.
        let big = format!(
            "HTTP/1.1 200 OK\r\nX-Filler: {}\r\n",
            "a".repeat(MAX_RESPONSE_HEAD)
        );
        let mut big = big;
        assert!(matches!(refused(&big), BackendError::HeadTooLarge));
        big.push_str("\r\n");
        assert!(matches!(refused(&big), BackendError::HeadTooLarge));
    }

    /// Decodes `bytes` fed `step` bytes at a time: the data, the trailers, and how it ended.
    fn decode(bytes: &[u8], step: usize) -> (Vec<u8>, Option<HeaderMap>, Result<bool, String>) {
        let mut chunked = Chunked::default();
        let (mut buf, mut data, mut fed) = (BytesMut::new(), Vec::new(), 0);
        loop {
            match chunked.decode(&mut buf) {
                Ok(Decoded::Data(d)) => data.extend_from_slice(&d),
                Ok(Decoded::Trailers(t)) => return (data, Some(t), Ok(true)),
                Ok(Decoded::End) => return (data, None, Ok(true)),
                Ok(Decoded::More) if fed == bytes.len() => return (data, None, Ok(false)),
                Ok(Decoded::More) => {
                    let next = (fed + step).min(bytes.len());
                    buf.extend_from_slice(&bytes[fed..next]);
                    fed = next;
                }
                Err(e) => return (data, None, Err(e.to_string())),
            }
        }
    }

    #[test]
    fn chunks_decode_to_their_data_however_they_arrive() {
        let body = b"5\r\nhello\r\n6;name=\"v\"\r\n world\r\nA  ;x\r\n0123456789\r\n0\r\n\r\n";
        for step in 1..body.len() {
            let (data, trailers, end) = decode(body, step);
            assert_eq!(data, b"hello world0123456789", "step {step}");
            assert!(trailers.is_none());
            assert_eq!(end, Ok(true));
        }
        let with_trailers = b"1\r\nx\r\n0\r\nX-Sum: 7\r\nContent-Length: 1\r\n\r\n";
        let (data, trailers, end) = decode(with_trailers, 3);
        assert_eq!((data, end), (b"x".to_vec(), Ok(true)));
        let trailers = trailers.expect("trailers");
        assert_eq!(trailers["x-sum"], "7");
        assert!(
            !trailers.contains_key(header::CONTENT_LENGTH),
            "a framing field in trailers is dropped"
        );
        // Cut short: no end.
        assert_eq!(decode(b"5\r\nhel", 2).2, Ok(false));
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhelloXY0\r\n\r\n",
            b"1234567890abcdef0\r\n",
            b"-5\r\n",
            b"0x5\r\nhello\r\n",
            b"5;a\x01\r\nhello\r\n",
            b"5 6\r\nhello\r\n",
        ] {
            assert!(
                decode(bad, 1).2.is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    proptest! {
        /// Any data, chunked in any sizes and fed in any steps, decodes to itself.
        #[test]
        fn chunked_data_round_trips(
            pieces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..8),
            step in 1usize..64,
        ) {
            let mut wire = Vec::new();
            for p in &pieces {
                let mut size = Vec::new();
                chunk_header(p.len(), &mut size);
                wire.extend_from_slice(&size);
                wire.extend_from_slice(p);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            let (data, _, end) = decode(&wire, step);
            prop_assert_eq!(data, pieces.concat());
            prop_assert_eq!(end, Ok(true));
        }
    }
}
