//! HTTP/1.1 wire pieces both sides of the proxy share: the chunked coding (RFC 9112 §7.1),
//! `Content-Length` values (RFC 9110 §8.6) and field-value lists. Pure functions over a
//! buffer, strict where a lax reading would let two parsers disagree on where a message ends.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;

/// Fields in one head or trailer section, as hyper allowed.
pub(crate) const MAX_FIELDS: usize = 100;

/// The longest chunk extension read (and dropped) on one chunk-size line.
const MAX_CHUNK_EXT: usize = 4 * 1024;

/// The largest trailer section read after a chunked body.
const MAX_TRAILERS: usize = 64 * 1024;

/// Where a field's name and value are in a head: name start and end, value start and end.
pub(crate) type FieldAt = (u32, u32, u32, u32);

/// Where each of the `fields` httparse read from `head` is, pushed onto `at`, so that values
/// can be shared with the head once it is frozen rather than copied. A head is at most a few
/// hundred KiB, so its offsets fit a u32. (Filled in place: returned by value, the array was
/// copied on its way out of both parsers, ~500 instructions a request.)
pub(crate) fn field_offsets(
    head: &[u8],
    fields: &[httparse::Header<'_>],
    at: &mut SmallVec<[FieldAt; 32]>,
) {
    let base = head.as_ptr() as usize;
    let offset = |p: *const u8| (p as usize - base) as u32;
    for f in fields {
        let (name, value) = (offset(f.name.as_ptr()), offset(f.value.as_ptr()));
        at.push((
            name,
            name + f.name.len() as u32,
            value,
            value + f.value.len() as u32,
        ));
    }
}

/// A chunked body broke the coding.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChunkError {
    #[error("{0}")]
    Malformed(&'static str),
    #[error("malformed trailer section: {0}")]
    Trailers(#[from] httparse::Error),
    #[error("trailer section larger than {MAX_TRAILERS} bytes")]
    TrailersTooLarge,
}

/// Writes the framing that goes before `len` bytes of a chunked body.
pub(crate) fn chunk_header(len: usize, dst: &mut Vec<u8>) {
    use std::io::Write;
    let _ = write!(dst, "{len:x}\r\n");
}

/// Whether the last coding of a `Transfer-Encoding` value is `chunked`: the coding applied
/// last (RFC 9112 §6.1).
pub(crate) fn is_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Whether a comma-separated list names `token`, in any case.
pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// A `Content-Length` value: digits, or a list of the same digits (RFC 9110 §8.6). At most 18
/// digits, so it fits a `u64` with room.
pub(crate) fn content_length(raw: &[u8]) -> Option<u64> {
    let mut value = None;
    for part in raw.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 18 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        if value.is_some_and(|v| v != n) {
            return None;
        }
        value = Some(n);
    }
    value
}

/// What a chunked decoder found in the buffer.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// Body bytes, split off the buffer.
    Data(Bytes),
    /// The trailer section, after the last chunk; the body is over.
    Trailers(HeaderMap),
    /// The last chunk and an empty trailer section: the body is over.
    End,
    /// More bytes are needed.
    More,
}

/// Decodes a chunked body (RFC 9112 §7.1) as it arrives: sizes in hex, extensions dropped,
/// every line ended by CRLF, trailers after the last chunk.
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk size: the value so far and its digits.
    #[default]
    Start,
    Size {
        value: u64,
        digits: u8,
    },
    /// Whitespace after the size, before `;` (chunk-ext's BWS).
    SizeSpace {
        value: u64,
    },
    /// A chunk extension, dropped: bytes read of it.
    Ext {
        value: u64,
        read: usize,
    },
    /// The CR of the size line was read.
    SizeLf {
        value: u64,
    },
    /// Inside a chunk's data: bytes left.
    Data(u64),
    DataCr,
    DataLf,
    Trailers,
    Done,
}

impl Chunked {
    /// The next thing in `buf`, consuming what it read.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        use ChunkState::*;
        loop {
            if let Data(left) = self.state {
                if buf.is_empty() {
                    return Ok(Decoded::More);
                }
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let left = left - take as u64;
                self.state = if left == 0 { DataCr } else { Data(left) };
                return Ok(Decoded::Data(buf.split_to(take).freeze()));
            }
            if self.state == Trailers {
                return self.trailers(buf);
            }
            if self.state == Done {
                return Ok(Decoded::End);
            }
            let Some(&b) = buf.first() else {
                return Ok(Decoded::More);
            };
            self.state = match (self.state, b) {
                (Start, _) => match hex(b) {
                    Some(d) => Size {
                        value: u64::from(d),
                        digits: 1,
                    },
                    None => return Err(ChunkError::Malformed("a chunk size is not hex")),
                },
                (Size { value, digits }, _) if hex(b).is_some() => {
                    if digits >= 15 {
                        return Err(ChunkError::Malformed("a chunk size is too large"));
                    }
                    Size {
                        value: value << 4 | u64::from(hex(b).unwrap_or(0)),
                        digits: digits + 1,
                    }
                }
                (Size { value, .. } | SizeSpace { value }, b' ' | b'\t') => SizeSpace { value },
                (Size { value, .. } | SizeSpace { value }, b';') => Ext { value, read: 0 },
                (Size { value, .. } | SizeSpace { value } | Ext { value, .. }, b'\r') => {
                    SizeLf { value }
                }
                (Ext { value, read }, _) => {
                    if read >= MAX_CHUNK_EXT {
                        return Err(ChunkError::Malformed("a chunk extension is too long"));
                    }
                    if b == b'\n' || (b < 0x20 && b != b'\t') || b == 0x7f {
                        return Err(ChunkError::Malformed("a control byte in a chunk extension"));
                    }
                    Ext {
                        value,
                        read: read + 1,
                    }
                }
                (SizeLf { value: 0 }, b'\n') => Trailers,
                (SizeLf { value }, b'\n') => Data(value),
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => Start,
                _ => return Err(ChunkError::Malformed("a chunk line does not end in CRLF")),
            };
            buf.advance(1);
        }
    }

    /// The trailer section: fields up to an empty line.
    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let (len, map) = match httparse::parse_headers(buf, &mut fields)? {
            httparse::Status::Complete((len, fields)) => {
                let mut map = HeaderMap::new();
                for f in fields.iter() {
                    let (Ok(name), Ok(value)) = (
                        HeaderName::from_bytes(f.name.as_bytes()),
                        HeaderValue::from_bytes(f.value),
                    ) else {
                        return Err(ChunkError::Trailers(httparse::Error::HeaderName));
                    };
                    // Framing and routing fields have no place in trailers (RFC 9110 §6.5.1).
                    if !FORBIDDEN_TRAILERS.contains(&name) {
                        map.append(name, value);
                    }
                }
                (len, map)
            }
            httparse::Status::Partial if buf.len() >= MAX_TRAILERS => {
                return Err(ChunkError::TrailersTooLarge);
            }
            httparse::Status::Partial => return Ok(Decoded::More),
        };
        buf.advance(len);
        self.state = ChunkState::Done;
        Ok(if map.is_empty() {
            Decoded::End
        } else {
            Decoded::Trailers(map)
        })
    }

    /// Whether the last chunk and its trailers have been read.
    pub(crate) fn done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

const FORBIDDEN_TRAILERS: [HeaderName; 6] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::HOST,
    header::CONNECTION,
    header::TRAILER,
    header::CONTENT_TYPE,
];

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}
