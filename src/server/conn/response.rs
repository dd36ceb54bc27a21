//! A response head in bytes, and how its body is framed for the client (RFC 9112 §6): the
//! service's `Content-Length` or `Transfer-Encoding` if it set one, else the body's known size,
//! else chunked (HTTP/1.1) or the connection's close (HTTP/1.0). No body at all for `HEAD`,
//! 1xx, 204, 304 and a 2xx to `CONNECT`. A `Date` is added when the service set none, and
//! `Connection: close` when the connection ends after this response.

use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap};
use http::{Method, StatusCode, Version, response};

use crate::http1::content_length;
use crate::http1::{has_token, is_chunked};

/// How the body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoder {
    /// Exactly this many bytes more.
    Length(u64),
    Chunked,
    /// Written as it comes; the connection's close ends it.
    UntilClose,
}

/// What the head's writer knows of the exchange.
pub(crate) struct Exchange<'a> {
    pub(crate) method: &'a Method,
    /// The request's version: a 1.0 client is answered in 1.0.
    pub(crate) version: Version,
    /// Whether the connection may carry another request after this response.
    pub(crate) keep_alive: bool,
}

/// What the body said of itself before its first frame.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Size {
    Empty,
    Exact(u64),
    Unknown,
}

/// Writes `head` into `dst` and says how the body is framed and whether the connection stays
/// open after it (`false` if this response or its framing ends it).
pub(crate) fn encode_head(
    head: &response::Parts,
    size: Size,
    ex: &Exchange<'_>,
    dst: &mut Vec<u8>,
) -> (Encoder, bool) {
    let status = head.status;
    let method = ex.method;
    let connect_ok = *method == Method::CONNECT && status.is_success();
    let bodiless_status = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    // Whether the message may have a body at all, and whether it may say its length.
    let has_body = !(bodiless_status || connect_ok || *method == Method::HEAD);
    let may_state_length = !(bodiless_status || connect_ok);
    let http10 = ex.version == Version::HTTP_10;
    let mut keep_alive = ex.keep_alive && status != StatusCode::SWITCHING_PROTOCOLS;

    if http10 {
        dst.extend_from_slice(b"HTTP/1.0 ");
    } else {
        dst.extend_from_slice(b"HTTP/1.1 ");
    }
    dst.extend_from_slice(status.as_str().as_bytes());
    dst.push(b' ');
    dst.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    dst.extend_from_slice(b"\r\n");

    let headers = &head.headers;
    let mut encoder = None;
    let mut said_close = false;
    let mut said_keep_alive = false;
    let mut dated = false;
    for (name, value) in headers {
        match *name {
            header::DATE => dated = true,
            header::CONTENT_LENGTH => {
                // One line, the first valid one; none where the message may not state one.
                let n = content_length(value.as_bytes());
                if !may_state_length || encoder.is_some() || n.is_none() {
                    continue;
                }
                if matches!(size, Size::Empty) && *method != Method::HEAD {
                    // The service sends no body: its length is 0 whatever the field says.
                    continue;
                }
                encoder = n.map(Encoder::Length);
            }
            header::TRANSFER_ENCODING => {
                if http10 || !has_body || encoder.is_some() {
                    continue;
                }
                encoder = Some(Encoder::Chunked);
                write_field(dst, name.as_str(), value.as_bytes());
                if !is_chunked(value.as_bytes()) {
                    // Chunked goes last, or the client could not tell where the body ends.
                    dst.truncate(dst.len() - 2);
                    dst.extend_from_slice(b", chunked\r\n");
                }
                continue;
            }
            header::TRAILER if http10 || !has_body => continue,
            header::CONNECTION => {
                said_close |= has_token(value.as_bytes(), b"close");
                said_keep_alive |= has_token(value.as_bytes(), b"keep-alive");
            }
            _ => {}
        }
        write_field(dst, name.as_str(), value.as_bytes());
    }
    if said_close {
        keep_alive = false;
    }
    let encoder = match encoder {
        Some(e) => e,
        None => match size {
            Size::Unknown if http10 || !has_body => Encoder::UntilClose,
            Size::Unknown => {
                dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Encoder::Chunked
            }
            Size::Empty | Size::Exact(0) => {
                if may_state_length && *method != Method::HEAD {
                    dst.extend_from_slice(b"content-length: 0\r\n");
                }
                Encoder::Length(0)
            }
            Size::Exact(n) => {
                if may_state_length {
                    let mut digits = itoa::Buffer::new();
                    write_field(dst, "content-length", digits.format(n).as_bytes());
                }
                Encoder::Length(n)
            }
        },
    };
    let encoder = if has_body {
        encoder
    } else {
        Encoder::Length(0)
    };
    if encoder == Encoder::UntilClose {
        keep_alive = false;
    }
    if !dated {
        DATE.with(|d| dst.extend_from_slice(d.borrow_mut().now()));
    }
    if status != StatusCode::SWITCHING_PROTOCOLS {
        if !keep_alive && !said_close && !http10 {
            dst.extend_from_slice(b"connection: close\r\n");
        } else if keep_alive && http10 && !said_keep_alive {
            dst.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    dst.extend_from_slice(b"\r\n");
    (encoder, keep_alive)
}

/// The bare answer to a head refused before any service saw it: no body, and the connection
/// closes.
pub(crate) fn encode_refusal(status: StatusCode, dst: &mut Vec<u8>) {
    let head = http::Response::builder()
        .status(status)
        .body(())
        .map(|r| r.into_parts().0)
        .unwrap_or_else(|_| http::Response::new(()).into_parts().0);
    let ex = Exchange {
        method: &Method::GET,
        version: Version::HTTP_11,
        keep_alive: false,
    };
    encode_head(&head, Size::Empty, &ex, dst);
}

fn write_field(dst: &mut Vec<u8>, name: &str, value: &[u8]) {
    dst.extend_from_slice(name.as_bytes());
    dst.extend_from_slice(b": ");
    dst.extend_from_slice(value);
    dst.extend_from_slice(b"\r\n");
}

/// Trailers after the last chunk: the fields, then the empty line.
pub(crate) fn encode_trailers(trailers: &HeaderMap, dst: &mut Vec<u8>) {
    dst.extend_from_slice(b"0\r\n");
    for (name, value) in trailers {
        write_field(dst, name.as_str(), value.as_bytes());
    }
    dst.extend_from_slice(b"\r\n");
}

thread_local! {
    /// This thread's `Date` line, made again once a second.
    static DATE: RefCell<Date> = const { RefCell::new(Date { second: u64::MAX, line: Vec::new() }) };
}

struct Date {
    second: u64,
    line: Vec<u8>,
}

impl Date {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        if second != self.second {
            self.second = second;
            self.line.clear();
            self.line.extend_from_slice(b"date: ");
            self.line
                .extend_from_slice(httpdate::fmt_http_date(now).as_bytes());
            self.line.extend_from_slice(b"\r\n");
        }
        &self.line
    }
}
