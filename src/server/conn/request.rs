//! A client's request head, read with `httparse` and judged by RFC 9112: its framing (§6.3),
//! whether the connection may carry another request after it, and what it refuses outright.
//!
//! Every refusal here is a request-smuggling or header-confusion vector, answered 400 (431 for
//! a head too large, 414 for a target too long) before anything reaches a backend:
//! `Transfer-Encoding` on HTTP/1.0, a `Transfer-Encoding` whose final coding is not chunked,
//! a malformed `Content-Length` or two different ones, obs-fold, whitespace before a colon, a
//! bare CR, control bytes in a value. A message with both `Transfer-Encoding` and
//! `Content-Length` is framed by its chunks, loses the `Content-Length`, and ends its
//! connection. The rules are hyper's server's, which sweeplb ran on before, so that
//! `tests/it/smuggling.rs` holds unchanged; the `request` fuzz target compares the two.
//! Pure: no I/O.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};
use smallvec::SmallVec;

use crate::http1::{FieldAt, MAX_FIELDS, field_offsets, has_token, is_chunked};

/// The longest request target taken (hyper's limit): longer is 414.
const MAX_TARGET: usize = (u16::MAX - 1) as usize;

/// Fields a request's map has room for beyond its own.
const EXTRA_FIELDS: usize = 4;

/// How a request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// None (no `Content-Length` and no `Transfer-Encoding`, or `Content-Length: 0`).
    Empty,
    Length(u64),
    Chunked,
}

/// A request head, read whole.
#[derive(Debug)]
pub(crate) struct Head {
    /// The request without its body.
    pub(crate) request: Request<()>,
    pub(crate) framing: Framing,
    /// The client allows another request on the connection after this one.
    pub(crate) keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for a 100 before it sends the body.
    pub(crate) expect_continue: bool,
    /// An `Upgrade` on HTTP/1.1, or `CONNECT`: the connection may become a tunnel.
    pub(crate) wants_upgrade: bool,
}

/// Why a head is refused, and how the client is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{why} ({status})")]
pub(crate) struct Refused {
    pub(crate) status: StatusCode,
    pub(crate) why: &'static str,
}

fn bad(why: &'static str) -> Refused {
    Refused {
        status: StatusCode::BAD_REQUEST,
        why,
    }
}

const TOO_LARGE: Refused = Refused {
    status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    why: "request head too large",
};

/// Reads a request head off the front of `buf`: `None` while it is not complete. `max_head`
/// bounds the head, finished or not.
pub(crate) fn parse(buf: &mut BytesMut, max_head: usize) -> Result<Option<Head>, Refused> {
    let mut at = SmallVec::new();
    let (len, method, target, minor) = {
        // Not zeroed: a head's fields are few, and zeroing room for a hundred costs more than
        // reading them.
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
        let mut req = httparse::Request::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut req,
            buf,
            &mut fields,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) if len > max_head => return Err(TOO_LARGE),
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > max_head => return Err(TOO_LARGE),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(TOO_LARGE),
            Err(httparse::Error::Token) if req.method.is_none() => {
                return Err(bad("malformed method"));
            }
            Err(httparse::Error::Token) => return Err(bad("malformed request target")),
            Err(httparse::Error::Version) => return Err(bad("malformed HTTP version")),
            Err(_) => return Err(bad("malformed header field")),
        };
        field_offsets(buf, req.headers, &mut at);
        // Complete means all three were read.
        let (method, target) = (req.method.unwrap_or(""), req.path.unwrap_or(""));
        if target.len() > MAX_TARGET {
            return Err(Refused {
                status: StatusCode::URI_TOO_LONG,
                why: "request target too long",
            });
        }
        let method = Method::from_bytes(method.as_bytes()).map_err(|_| bad("malformed method"))?;
        let start = target.as_ptr() as usize - buf.as_ptr() as usize;
        (
            len,
            method,
            start..start + target.len(),
            req.version.unwrap_or(1),
        )
    };
    let head = buf.split_to(len).freeze();
    let uri =
        Uri::from_maybe_shared(head.slice(target)).map_err(|_| bad("malformed request target"))?;
    let http11 = minor == 1;
    let mut keep_alive = http11;
    let mut saw_close = false;
    let mut framing = Framing::Empty;
    let mut length: Option<u64> = None;
    let mut coded = false;
    let mut chunked_last = false;
    let mut expect_continue = false;
    let mut wants_upgrade = method == Method::CONNECT;
    // Room for the fields a proxy adds (`X-Forwarded-*`, `Via`) without growing the map.
    let mut headers = HeaderMap::with_capacity(at.len() + EXTRA_FIELDS);
    for &(ns, ne, vs, ve) in &at {
        let (ns, ne, vs, ve) = (ns as usize, ne as usize, vs as usize, ve as usize);
        let name =
            HeaderName::from_bytes(&head[ns..ne]).map_err(|_| bad("malformed field name"))?;
        let value = field_value(&head, vs, ve)?;
        match name {
            header::TRANSFER_ENCODING => {
                if !http11 {
                    return Err(bad("Transfer-Encoding on HTTP/1.0"));
                }
                coded = true;
                if length.take().is_some() {
                    headers.remove(header::CONTENT_LENGTH);
                }
                // The final coding of the last field is the one applied last (§6.1).
                chunked_last = is_chunked(value.as_bytes());
                framing = Framing::Chunked;
            }
            header::CONTENT_LENGTH => {
                if coded {
                    continue;
                }
                let n = parse_length(value.as_bytes())?;
                match length {
                    Some(before) if before != n => {
                        return Err(bad("two different Content-Lengths"));
                    }
                    // The same length again: forwarded once.
                    Some(_) => continue,
                    // The two largest values stand for "chunked" and "until close" in
                    // hyper's framing, which refused them as too large.
                    None if n > u64::MAX - 2 => return Err(TOO_LARGE),
                    None => {
                        length = Some(n);
                        framing = if n == 0 {
                            Framing::Empty
                        } else {
                            Framing::Length(n)
                        };
                    }
                }
            }
            header::CONNECTION => {
                // Once any line asks to close, a later keep-alive does not undo it.
                if saw_close || has_token(value.as_bytes(), b"close") {
                    saw_close = true;
                    keep_alive = false;
                } else if !http11 {
                    keep_alive = has_token(value.as_bytes(), b"keep-alive");
                }
            }
            header::EXPECT => {
                expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
            }
            header::UPGRADE => wants_upgrade = http11,
            _ => {}
        }
        headers.append(name, value);
    }
    if coded {
        if !chunked_last {
            return Err(bad("a Transfer-Encoding whose final coding is not chunked"));
        }
        if saw_length(&at, &head) {
            // Both framings: possibly smuggling, so nothing more rides this connection.
            keep_alive = false;
        }
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if http11 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    *request.headers_mut() = headers;
    Ok(Some(Head {
        request,
        framing,
        keep_alive,
        expect_continue,
        wants_upgrade,
    }))
}

/// A request's `Content-Length`: one value, digits only. A list, even of one repeated value,
/// is refused, as hyper refused it: a client has no reason to send one.
fn parse_length(raw: &[u8]) -> Result<u64, Refused> {
    let malformed = bad("malformed Content-Length");
    if raw.is_empty() {
        return Err(malformed);
    }
    let mut n: u64 = 0;
    for &b in raw {
        if !b.is_ascii_digit() {
            return Err(malformed);
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(malformed)?;
    }
    Ok(n)
}

/// A field's value, sharing the head's bytes. httparse has refused CR, LF and NUL already.
fn field_value(head: &Bytes, start: usize, end: usize) -> Result<HeaderValue, Refused> {
    HeaderValue::from_maybe_shared(head.slice(start..end)).map_err(|_| bad("malformed field value"))
}

/// Whether the head has a `Content-Length` line at all (valid or not).
fn saw_length(at: &[FieldAt], head: &Bytes) -> bool {
    at.iter()
        .any(|&(ns, ne, ..)| head[ns as usize..ne as usize].eq_ignore_ascii_case(b"content-length"))
}
