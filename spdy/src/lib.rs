//! SPDY/3.1 framing (draft-mbelshe-httpbis-spdy-00 with the 3.1 additions), the part of it
//! Kubernetes streaming uses: the API server reaches a kubelet's exec, attach and
//! port-forward endpoints over an HTTP/1.1 connection upgraded to `SPDY/3.1`, and each
//! of stdin, stdout, stderr, error and resize is a stream the client opens.
//!
//! This crate is the wire format only: frames in and out of bytes, and the name/value
//! header blocks, which are compressed by one zlib stream per direction for the whole
//! session, primed with the protocol's dictionary. Sessions are the callers' business.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

pub const VERSION: u16 = 3;
pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// The largest frame body the 24-bit length allows.
pub const MAX_LENGTH: usize = (1 << 24) - 1;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// Header names and values, in order. SPDY lowercases names; a value holding several
/// values separates them with NUL.
pub type HeaderList = Vec<(String, String)>;

/// One frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        id: u32,
        associated: u32,
        priority: u8,
        flags: u8,
        headers: HeaderList,
    },
    SynReply {
        id: u32,
        flags: u8,
        headers: HeaderList,
    },
    RstStream {
        id: u32,
        status: u32,
    },
    /// Settings are read and ignored; the body is kept as it came.
    Settings {
        flags: u8,
        body: Vec<u8>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        id: u32,
        flags: u8,
        headers: HeaderList,
    },
    WindowUpdate {
        id: u32,
        delta: u32,
    },
    Data {
        id: u32,
        flags: u8,
        data: Vec<u8>,
    },
    /// A control frame of a type this crate does not know (the spec says: ignore it).
    Unknown {
        kind: u16,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "spdy: {}", self.0)
    }
}

impl std::error::Error for Error {}

/// The SPDY/3 header dictionary (section 2.6.10.1): length-prefixed common header names
/// and values, then a run of status lines, dates and media types.
pub fn dictionary() -> Vec<u8> {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
        "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
        "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
        "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
        "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut d = Vec::with_capacity(1424);
    for w in WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(TAIL.as_bytes());
    d
}

/// One side of a session: it compresses the headers it sends and inflates those it
/// receives, each as one zlib stream.
pub struct Codec {
    deflate: Compress,
    inflate: Decompress,
    dictionary: Vec<u8>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec").finish_non_exhaustive()
    }
}

impl Default for Codec {
    fn default() -> Self {
        Codec::new()
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Codec {
    pub fn new() -> Codec {
        let dictionary = dictionary();
        let mut deflate = Compress::new(Compression::default(), true);
        deflate.set_dictionary(&dictionary).expect("a fresh deflate stream takes a dictionary");
        Codec { deflate, inflate: Decompress::new(true), dictionary }
    }

    /// The frame's bytes.
    pub fn encode(&mut self, frame: &Frame) -> Vec<u8> {
        let control = |kind: u16, flags: u8, body: Vec<u8>| {
            let mut out = Vec::with_capacity(8 + body.len());
            out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
            out.extend_from_slice(&kind.to_be_bytes());
            out.push(flags);
            out.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
            out.extend_from_slice(&body);
            out
        };
        match frame {
            Frame::SynStream { id, associated, priority, flags, headers } => {
                let mut body = Vec::new();
                body.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
                body.extend_from_slice(&(associated & 0x7fff_ffff).to_be_bytes());
                body.push((priority & 0x7) << 5);
                body.push(0);
                body.extend(self.compress(headers));
                control(SYN_STREAM, *flags, body)
            }
            Frame::SynReply { id, flags, headers } => {
                let mut body = (id & 0x7fff_ffff).to_be_bytes().to_vec();
                body.extend(self.compress(headers));
                control(SYN_REPLY, *flags, body)
            }
            Frame::Headers { id, flags, headers } => {
                let mut body = (id & 0x7fff_ffff).to_be_bytes().to_vec();
                body.extend(self.compress(headers));
                control(HEADERS, *flags, body)
            }
            Frame::RstStream { id, status } => {
                let mut body = (id & 0x7fff_ffff).to_be_bytes().to_vec();
                body.extend_from_slice(&status.to_be_bytes());
                control(RST_STREAM, 0, body)
            }
            Frame::Settings { flags, body } => control(SETTINGS, *flags, body.clone()),
            Frame::Ping { id } => control(PING, 0, id.to_be_bytes().to_vec()),
            Frame::GoAway { last_good, status } => {
                let mut body = (last_good & 0x7fff_ffff).to_be_bytes().to_vec();
                body.extend_from_slice(&status.to_be_bytes());
                control(GOAWAY, 0, body)
            }
            Frame::WindowUpdate { id, delta } => {
                let mut body = (id & 0x7fff_ffff).to_be_bytes().to_vec();
                body.extend_from_slice(&(delta & 0x7fff_ffff).to_be_bytes());
                control(WINDOW_UPDATE, 0, body)
            }
            Frame::Data { id, flags, data } => {
                let mut out = Vec::with_capacity(8 + data.len());
                out.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
                out.push(*flags);
                out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                out.extend_from_slice(data);
                out
            }
            Frame::Unknown { kind } => control(*kind, 0, Vec::new()),
        }
    }

    /// The first frame of `buf` and how many bytes it took, or `None` when `buf` does not
    /// hold a whole frame yet.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Frame, usize)>, Error> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let flags = buf[4];
        let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        if buf.len() < 8 + len {
            return Ok(None);
        }
        let body = &buf[8..8 + len];
        let used = 8 + len;
        if buf[0] & 0x80 == 0 {
            let id = u32_at(buf, 0) & 0x7fff_ffff;
            return Ok(Some((Frame::Data { id, flags, data: body.to_vec() }, used)));
        }
        let version = u16::from_be_bytes([buf[0], buf[1]]) & 0x7fff;
        if version != VERSION {
            return Err(Error(format!("version {version} frames are not SPDY/3")));
        }
        let kind = u16::from_be_bytes([buf[2], buf[3]]);
        let need = |n: usize| if len < n { Err(Error(format!("control frame {kind} of {len} bytes"))) } else { Ok(()) };
        let frame = match kind {
            SYN_STREAM => {
                need(10)?;
                Frame::SynStream {
                    id: u32_at(body, 0) & 0x7fff_ffff,
                    associated: u32_at(body, 4) & 0x7fff_ffff,
                    priority: body[8] >> 5,
                    flags,
                    headers: self.decompress(&body[10..])?,
                }
            }
            SYN_REPLY | HEADERS => {
                need(4)?;
                let (id, headers) = (u32_at(body, 0) & 0x7fff_ffff, self.decompress(&body[4..])?);
                if kind == SYN_REPLY {
                    Frame::SynReply { id, flags, headers }
                } else {
                    Frame::Headers { id, flags, headers }
                }
            }
            RST_STREAM => {
                need(8)?;
                Frame::RstStream { id: u32_at(body, 0) & 0x7fff_ffff, status: u32_at(body, 4) }
            }
            SETTINGS => Frame::Settings { flags, body: body.to_vec() },
            PING => {
                need(4)?;
                Frame::Ping { id: u32_at(body, 0) }
            }
            GOAWAY => {
                need(8)?;
                Frame::GoAway { last_good: u32_at(body, 0) & 0x7fff_ffff, status: u32_at(body, 4) }
            }
            WINDOW_UPDATE => {
                need(8)?;
                Frame::WindowUpdate { id: u32_at(body, 0) & 0x7fff_ffff, delta: u32_at(body, 4) & 0x7fff_ffff }
            }
            kind => Frame::Unknown { kind },
        };
        Ok(Some((frame, used)))
    }

    fn compress(&mut self, headers: &HeaderList) -> Vec<u8> {
        let mut block = Vec::new();
        block.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (k, v) in headers {
            block.extend_from_slice(&(k.len() as u32).to_be_bytes());
            block.extend_from_slice(k.to_ascii_lowercase().as_bytes());
            block.extend_from_slice(&(v.len() as u32).to_be_bytes());
            block.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(block.len() + 64);
        let mut input = &block[..];
        loop {
            let before = self.deflate.total_in();
            out.reserve(input.len() + 64);
            self.deflate.compress_vec(input, &mut out, FlushCompress::Sync).expect("deflate into a growing buffer");
            input = &input[(self.deflate.total_in() - before) as usize..];
            // a sync flush is complete once all input is taken and room was left over
            if input.is_empty() && out.len() < out.capacity() {
                return out;
            }
        }
    }

    fn decompress(&mut self, data: &[u8]) -> Result<HeaderList, Error> {
        let mut block = Vec::with_capacity(data.len() * 4 + 64);
        let mut input = data;
        loop {
            // a few bytes can inflate to gigabytes: a block is refused past the cap
            if block.len() > MAX_HEADER_BLOCK {
                return Err(Error(format!("header block over {MAX_HEADER_BLOCK} bytes")));
            }
            let before = self.inflate.total_in();
            block.reserve(4096);
            let r = self.inflate.decompress_vec(input, &mut block, FlushDecompress::Sync);
            input = &input[(self.inflate.total_in() - before) as usize..];
            match r {
                Ok(Status::Ok | Status::BufError) if input.is_empty() && block.len() < block.capacity() => break,
                Ok(Status::Ok | Status::BufError) => {}
                Ok(Status::StreamEnd) => break,
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate.set_dictionary(&self.dictionary).map_err(|e| Error(e.to_string()))?;
                }
                Err(e) => return Err(Error(format!("header block: {e}"))),
            }
        }
        parse_block(&block)
    }
}

/// The largest header block (inflated) a frame may carry, as Go's HTTP servers allow
/// 1 MiB of headers.
const MAX_HEADER_BLOCK: usize = 1 << 20;

/// A header block's name/value pairs. Names must be non-empty and lowercase (SPDY/3
/// §2.6.10: anything else is a protocol error), and both names and values UTF-8: a frame
/// is refused rather than read as something it did not say.
fn parse_block(b: &[u8]) -> Result<HeaderList, Error> {
    let short = || Error("header block ends early".into());
    let take = |at: &mut usize| -> Result<String, Error> {
        if b.len() < *at + 4 {
            return Err(short());
        }
        let n = u32_at(b, *at) as usize;
        *at += 4;
        let s = b.get(*at..at.saturating_add(n)).ok_or_else(short)?;
        *at += n;
        String::from_utf8(s.to_vec()).map_err(|_| Error("a header that is not UTF-8".into()))
    };
    if b.len() < 4 {
        return Err(short());
    }
    let count = u32_at(b, 0) as usize;
    let mut at = 4;
    let mut out = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let k = take(&mut at)?;
        if k.is_empty() || k.bytes().any(|c| c.is_ascii_uppercase()) {
            return Err(Error(format!("header name {k:?}: must be non-empty and lowercase")));
        }
        let v = take(&mut at)?;
        out.push((k, v));
    }
    Ok(out)
}

/// The value of header `name` in a list.
pub fn header<'a>(headers: &'a HeaderList, name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_the_specs() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b",*,enq=0."));
        // zlib names a dictionary by its Adler-32
        let mut c = Compress::new(Compression::default(), true);
        let id = c.set_dictionary(&d).unwrap();
        let mut a: u32 = 1;
        let mut b: u32 = 0;
        for x in &d {
            a = (a + *x as u32) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!(id, (b << 16) | a);
    }

    #[test]
    fn frames_round_trip_through_two_codecs() {
        let (mut client, mut server) = (Codec::new(), Codec::new());
        let frames = [
            Frame::SynStream {
                id: 1,
                associated: 0,
                priority: 0,
                flags: 0,
                headers: vec![("streamtype".into(), "error".into())],
            },
            Frame::SynStream {
                id: 3,
                associated: 0,
                priority: 0,
                flags: FLAG_FIN,
                headers: vec![("streamtype".into(), "stdout".into()), ("port".into(), "80".into())],
            },
            Frame::Data { id: 3, flags: 0, data: b"hello".to_vec() },
            Frame::Data { id: 3, flags: FLAG_FIN, data: vec![] },
            Frame::Ping { id: 7 },
            Frame::GoAway { last_good: 3, status: 0 },
            Frame::WindowUpdate { id: 1, delta: 65536 },
            Frame::RstStream { id: 5, status: 5 },
        ];
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend(client.encode(f));
        }
        let mut got = Vec::new();
        let mut at = 0;
        while let Some((f, n)) = server.decode(&wire[at..]).unwrap() {
            got.push(f);
            at += n;
        }
        assert_eq!(got, frames);
        // replies the other way share nothing with the requests' stream
        let reply = Frame::SynReply { id: 1, flags: 0, headers: vec![] };
        let bytes = server.encode(&reply);
        assert_eq!(client.decode(&bytes).unwrap(), Some((reply, bytes.len())));
        assert_eq!(client.decode(&bytes[..5]).unwrap(), None);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut c = Codec::new();
        let bad_version = [0x80, 0x02, 0x00, 0x01, 0, 0, 0, 0];
        assert!(c.decode(&bad_version).is_err());
        let short_syn = [0x80, 0x03, 0x00, 0x01, 0, 0, 0, 2, 0, 0];
        assert!(c.decode(&short_syn).is_err());
        let garbage_headers = [0x80, 0x03, 0x00, 0x02, 0, 0, 0, 8, 0, 0, 0, 1, 1, 2, 3, 4];
        assert!(c.decode(&garbage_headers).is_err());
    }

    /// A SYN_STREAM whose header block (written with the shared dictionary, as a peer
    /// would) holds `block` as it is.
    fn syn_stream_with_block(block: &[u8]) -> Vec<u8> {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate.set_dictionary(&dictionary()).unwrap();
        let mut z = Vec::with_capacity(block.len() + 64);
        deflate.compress_vec(block, &mut z, flate2::FlushCompress::Sync).unwrap();
        let mut body = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        body.extend(z);
        let mut frame = vec![0x80, 0x03, 0x00, 0x01, 0];
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        frame.extend(body);
        frame
    }

    fn block(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut b = (pairs.len() as u32).to_be_bytes().to_vec();
        for (k, v) in pairs {
            b.extend_from_slice(&(k.len() as u32).to_be_bytes());
            b.extend_from_slice(k);
            b.extend_from_slice(&(v.len() as u32).to_be_bytes());
            b.extend_from_slice(v);
        }
        b
    }

    /// Found by the `spdy_frames` fuzz target: a name with capitals (and bytes that were
    /// not UTF-8, read as U+FFFD) decoded to a header the frame did not carry.
    #[test]
    fn header_names_must_be_lowercase_utf8() {
        let mut c = Codec::new();
        let ok = syn_stream_with_block(&block(&[(b"streamtype", b"stdout")]));
        assert!(c.decode(&ok).unwrap().is_some());
        for bad in [
            block(&[(b"streamO\xff\xfet", b"accept-charset")]),
            block(&[(b"StreamType", b"stdout")]),
            block(&[(b"", b"x")]),
            block(&[(b"streamtype", b"\xff")]),
        ] {
            let mut c = Codec::new();
            assert!(c.decode(&syn_stream_with_block(&bad)).is_err(), "{bad:?}");
        }
    }

    /// A few kilobytes that inflate past 1 MiB are refused, not inflated into memory.
    #[test]
    fn a_header_block_bomb_is_refused() {
        let huge = vec![b'a'; 4 << 20];
        let bomb = syn_stream_with_block(&block(&[(b"x", &huge)]));
        assert!(bomb.len() < 64 << 10, "{}", bomb.len());
        let err = Codec::new().decode(&bomb).unwrap_err();
        assert!(err.to_string().contains("header block over"), "{err}");
    }
}
