//! SPDY/3.1 framing, as kubectl's port-forward speaks it (client-go over moby/spdystream):
//! control frames (SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS,
//! WINDOW_UPDATE) and data frames, with header blocks zlib-compressed against the SPDY
//! dictionary in one compression context per direction for the whole connection.
//!
//! [`Decoder`] takes bytes as they come (a frame may span WebSocket messages, or a message
//! hold several frames) and yields whole frames; [`Encoder`] writes them. No crate implements
//! SPDY today, so this stays hand-written; it is small and tested against frames encoded as
//! spdystream encodes them.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::dictionary::DICTIONARY;

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;
const FLAG_FIN: u8 = 0x01;

/// The most a header block may decompress to: kubectl's blocks are a few dozen bytes, so
/// anything near this is an attack (a zlib bomb), not a port-forward.
const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// The most one data frame carries when this side writes (spdystream reads any size).
pub const MAX_DATA: usize = 32 * 1024;

/// RST_STREAM status codes this side sends.
pub const PROTOCOL_ERROR: u32 = 1;
pub const REFUSED_STREAM: u32 = 3;

/// A header block: names (lowercase) and values, in order.
pub type Headers = Vec<(String, String)>;

/// One frame, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream: u32,
        fin: bool,
        headers: Headers,
    },
    SynReply {
        stream: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    Settings,
    Ping {
        id: u32,
    },
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        stream: u32,
        fin: bool,
        headers: Headers,
    },
    WindowUpdate {
        stream: u32,
        delta: u32,
    },
    Data {
        stream: u32,
        fin: bool,
        data: Bytes,
    },
}

/// Why the peer's bytes are not SPDY/3.1 (the connection then ends with a GOAWAY).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpdyError {
    #[error("unsupported SPDY version {0} (this side speaks 3)")]
    Version(u16),
    #[error("unknown control frame type {0}")]
    UnknownType(u16),
    #[error("invalid {0} frame")]
    Invalid(&'static str),
    #[error("header block: {0}")]
    HeaderBlock(String),
}

/// A value of one header of a block (the first, when it has several).
pub fn header<'h>(headers: &'h Headers, name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Reads frames from the bytes a peer sends.
pub struct Decoder {
    buffer: BytesMut,
    inflate: Decompress,
}

impl Default for Decoder {
    fn default() -> Self {
        Self {
            buffer: BytesMut::new(),
            inflate: Decompress::new(true),
        }
    }
}

impl Decoder {
    /// Adds bytes as they arrived.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// How many bytes wait for the rest of their frame.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// The next whole frame, `None` until one has fully arrived.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, SpdyError> {
        if self.buffer.len() < 8 {
            return Ok(None);
        }
        let length =
            (u32::from_be_bytes([0, self.buffer[5], self.buffer[6], self.buffer[7]])) as usize;
        if self.buffer.len() < 8 + length {
            return Ok(None);
        }
        let mut frame = self.buffer.split_to(8 + length).freeze();
        let first = frame.get_u32();
        let flags = frame.get_u8();
        frame.advance(3);
        let fin = flags & FLAG_FIN != 0;
        if first & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data {
                stream: first & 0x7fff_ffff,
                fin,
                data: frame,
            }));
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        let kind = (first & 0xffff) as u16;
        let word = |frame: &mut Bytes, what| {
            if frame.remaining() < 4 {
                return Err(SpdyError::Invalid(what));
            }
            Ok(frame.get_u32())
        };
        Ok(Some(match kind {
            SYN_STREAM => {
                let stream = word(&mut frame, "SYN_STREAM")? & 0x7fff_ffff;
                // Associated stream, priority and slot: unused by port-forward.
                if frame.remaining() < 6 {
                    return Err(SpdyError::Invalid("SYN_STREAM"));
                }
                frame.advance(6);
                let headers = self.header_block(&frame)?;
                Frame::SynStream {
                    stream,
                    fin,
                    headers,
                }
            }
            SYN_REPLY | HEADERS => {
                let stream = word(&mut frame, "SYN_REPLY")? & 0x7fff_ffff;
                let headers = self.header_block(&frame)?;
                if kind == SYN_REPLY {
                    Frame::SynReply {
                        stream,
                        fin,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream,
                        fin,
                        headers,
                    }
                }
            }
            RST_STREAM => Frame::RstStream {
                stream: word(&mut frame, "RST_STREAM")? & 0x7fff_ffff,
                status: word(&mut frame, "RST_STREAM")?,
            },
            SETTINGS => Frame::Settings,
            PING => Frame::Ping {
                id: word(&mut frame, "PING")?,
            },
            GOAWAY => Frame::GoAway {
                last_good: word(&mut frame, "GOAWAY")? & 0x7fff_ffff,
                // SPDY/3 added the status; be lenient with a peer that leaves it out.
                status: word(&mut frame, "GOAWAY").unwrap_or(0),
            },
            WINDOW_UPDATE => Frame::WindowUpdate {
                stream: word(&mut frame, "WINDOW_UPDATE")? & 0x7fff_ffff,
                delta: word(&mut frame, "WINDOW_UPDATE")? & 0x7fff_ffff,
            },
            other => return Err(SpdyError::UnknownType(other)),
        }))
    }

    /// Decompresses and parses a header block (every block goes through the one context,
    /// even those whose headers are ignored, so it stays in step with the peer's).
    fn header_block(&mut self, compressed: &[u8]) -> Result<Headers, SpdyError> {
        let plain = self.inflate(compressed)?;
        parse_block(&plain)
    }

    fn inflate(&mut self, input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let bad = |e: &dyn std::fmt::Display| SpdyError::HeaderBlock(e.to_string());
        let mut out = Vec::with_capacity(input.len() * 4 + 64);
        let mut consumed = 0;
        loop {
            let before = self.inflate.total_in();
            let result =
                self.inflate
                    .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync);
            consumed += (self.inflate.total_in() - before) as usize;
            match result {
                Ok(_) => {}
                // The first block asks for the dictionary the stream was primed with.
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| bad(&e))?;
                    continue;
                }
                Err(e) => return Err(bad(&e)),
            }
            if out.len() > MAX_HEADER_BLOCK {
                return Err(SpdyError::HeaderBlock(format!(
                    "decompresses to more than {MAX_HEADER_BLOCK} bytes"
                )));
            }
            if consumed == input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if out.len() == out.capacity() {
                out.reserve(4096);
            } else if matches!(result, Ok(Status::BufError)) {
                return Err(SpdyError::HeaderBlock("truncated".into()));
            }
        }
    }
}

fn parse_block(mut block: &[u8]) -> Result<Headers, SpdyError> {
    let truncated = || SpdyError::HeaderBlock("truncated".into());
    let take = |block: &mut &[u8]| -> Result<String, SpdyError> {
        if block.len() < 4 {
            return Err(truncated());
        }
        let length = block.get_u32() as usize;
        if block.len() < length {
            return Err(truncated());
        }
        let text = String::from_utf8_lossy(&block[..length]).into_owned();
        block.advance(length);
        Ok(text)
    };
    if block.len() < 4 {
        return Err(truncated());
    }
    let count = block.get_u32();
    let mut headers = Vec::new();
    for _ in 0..count {
        let name = take(&mut block)?.to_ascii_lowercase();
        let values = take(&mut block)?;
        // Several values of one name are joined with NUL bytes.
        for value in values.split('\0') {
            headers.push((name.clone(), value.to_string()));
        }
    }
    Ok(headers)
}

/// Writes frames, compressing header blocks in this side's one context.
pub struct Encoder {
    deflate: Compress,
    primed: bool,
}

impl Default for Encoder {
    fn default() -> Self {
        Self {
            deflate: Compress::new(Compression::best(), true),
            primed: false,
        }
    }
}

impl Encoder {
    pub fn syn_reply(&mut self, stream: u32, fin: bool, headers: &Headers) -> Bytes {
        let block = self.header_block(headers);
        let mut frame = control(SYN_REPLY, fin, 4 + block.len());
        frame.put_u32(stream & 0x7fff_ffff);
        frame.put_slice(&block);
        frame.freeze()
    }

    /// What a client opens a stream with (this side is the server; tests play the client).
    pub fn syn_stream(&mut self, stream: u32, fin: bool, headers: &Headers) -> Bytes {
        let block = self.header_block(headers);
        let mut frame = control(SYN_STREAM, fin, 10 + block.len());
        frame.put_u32(stream & 0x7fff_ffff);
        frame.put_u32(0);
        frame.put_u16(0);
        frame.put_slice(&block);
        frame.freeze()
    }

    pub fn data(stream: u32, fin: bool, data: &[u8]) -> Bytes {
        let mut frame = BytesMut::with_capacity(8 + data.len());
        frame.put_u32(stream & 0x7fff_ffff);
        frame.put_u8(if fin { FLAG_FIN } else { 0 });
        frame.put_uint(data.len() as u64, 3);
        frame.put_slice(data);
        frame.freeze()
    }

    pub fn rst_stream(stream: u32, status: u32) -> Bytes {
        let mut frame = control(RST_STREAM, false, 8);
        frame.put_u32(stream & 0x7fff_ffff);
        frame.put_u32(status);
        frame.freeze()
    }

    pub fn ping(id: u32) -> Bytes {
        let mut frame = control(PING, false, 4);
        frame.put_u32(id);
        frame.freeze()
    }

    pub fn goaway(last_good: u32, status: u32) -> Bytes {
        let mut frame = control(GOAWAY, false, 8);
        frame.put_u32(last_good & 0x7fff_ffff);
        frame.put_u32(status);
        frame.freeze()
    }

    fn header_block(&mut self, headers: &Headers) -> Vec<u8> {
        let mut plain = BytesMut::new();
        plain.put_u32(headers.len() as u32);
        for (name, value) in headers {
            plain.put_u32(name.len() as u32);
            plain.put_slice(name.as_bytes());
            plain.put_u32(value.len() as u32);
            plain.put_slice(value.as_bytes());
        }
        if !self.primed {
            self.primed = true;
            // Fails only if called after compression began, which `primed` rules out.
            let _ = self.deflate.set_dictionary(DICTIONARY);
        }
        let mut out = Vec::with_capacity(plain.len() + 64);
        let mut consumed = 0;
        loop {
            let before = self.deflate.total_in();
            // Compressing into a Vec with room left cannot fail.
            let _ = self
                .deflate
                .compress_vec(&plain[consumed..], &mut out, FlushCompress::Sync);
            consumed += (self.deflate.total_in() - before) as usize;
            if consumed == plain.len() && out.len() < out.capacity() {
                return out;
            }
            out.reserve(256);
        }
    }
}

fn control(kind: u16, fin: bool, length: usize) -> BytesMut {
    let mut frame = BytesMut::with_capacity(8 + length);
    frame.put_u16(0x8000 | VERSION);
    frame.put_u16(kind);
    frame.put_u8(if fin { FLAG_FIN } else { 0 });
    frame.put_uint(length as u64, 3);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// The first WebSocket messages of a real `kubectl port-forward pod/web :8080` (kubectl
    /// 1.33 writes each field of a frame as its own message), in hex: the error and data
    /// streams' SYN_STREAMs (the second's header block compressed against the first's
    /// context), the error stream's FIN and the first request on the data stream.
    const KUBECTL_MESSAGES: &[&str] = &[
        "8003",
        "0001",
        "0000003e",
        "00000001",
        "00000000",
        "00",
        "00",
        "78f9e3c6a7c202253a703a2b294a4dcc851625aca9a0808614cb45e01c60616061c0c0c0c0590489c64c50f2663400000000ffff",
        "00000001",
        "01000000",
        "",
        "8003",
        "0001",
        "0000001a",
        "00000003",
        "00000000",
        "00",
        "00",
        "826a26ac0ad57850499508000000ffff",
        "00000003",
        "00000029",
        "474554202f20485454502f312e310d0a686f73743a203132372e302e302e313a34323830350d0a0d0a",
    ];

    #[test]
    fn a_captured_kubectl_session_decodes() {
        let mut decoder = Decoder::default();
        let mut frames = Vec::new();
        for message in KUBECTL_MESSAGES {
            let bytes: Vec<u8> = (0..message.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&message[i..i + 2], 16).unwrap())
                .collect();
            decoder.push(&bytes);
            while let Some(frame) = decoder.next_frame().unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(decoder.buffered(), 0);
        let opened =
            |kind: &str| headers(&[("port", "8080"), ("requestid", "0"), ("streamtype", kind)]);
        let sorted = |frame: &Frame| match frame {
            Frame::SynStream {
                stream, headers, ..
            } => {
                let mut headers = headers.clone();
                headers.sort();
                Some((*stream, headers))
            }
            _ => None,
        };
        assert_eq!(sorted(&frames[0]), Some((1, opened("error"))));
        assert_eq!(
            frames[1],
            Frame::Data {
                stream: 1,
                fin: true,
                data: Bytes::new()
            }
        );
        assert_eq!(sorted(&frames[2]), Some((3, opened("data"))));
        assert_eq!(
            frames[3],
            Frame::Data {
                stream: 3,
                fin: false,
                data: Bytes::from_static(b"GET / HTTP/1.1\r\nhost: 127.0.0.1:42805\r\n\r\n")
            }
        );
    }

    #[test]
    fn frames_round_trip_with_one_context_per_direction() {
        let mut client = Encoder::default();
        let mut server = Decoder::default();
        let mut wire = Vec::new();
        for (id, kind) in [(1, "error"), (3, "data")] {
            let opened = headers(&[("streamtype", kind), ("port", "80"), ("requestid", "7")]);
            wire.extend_from_slice(&client.syn_stream(id, false, &opened));
        }
        wire.extend_from_slice(&Encoder::data(3, true, b"GET / HTTP/1.1\r\n\r\n"));
        wire.extend_from_slice(&Encoder::ping(5));
        wire.extend_from_slice(&Encoder::goaway(3, 0));
        // Byte by byte: no frame is decoded before it is whole.
        let mut frames = Vec::new();
        for byte in wire {
            server.push(&[byte]);
            while let Some(frame) = server.next_frame().unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(frames.len(), 5, "{frames:?}");
        assert!(
            matches!(&frames[1], Frame::SynStream { stream: 3, headers, .. } if header(headers, "streamtype") == Some("data"))
        );
        assert_eq!(
            frames[2],
            Frame::Data {
                stream: 3,
                fin: true,
                data: Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n")
            }
        );
        assert_eq!(frames[3], Frame::Ping { id: 5 });
        assert_eq!(
            frames[4],
            Frame::GoAway {
                last_good: 3,
                status: 0
            }
        );
        // The other direction, with several values under one name.
        let mut replies = Encoder::default();
        let mut client_side = Decoder::default();
        for id in [1, 3] {
            client_side.push(&replies.syn_reply(id, false, &headers(&[])));
        }
        client_side.push(&replies.syn_reply(5, true, &headers(&[("a", "x\0y")])));
        assert_eq!(
            client_side.next_frame().unwrap(),
            Some(Frame::SynReply {
                stream: 1,
                fin: false,
                headers: vec![]
            })
        );
        assert!(client_side.next_frame().unwrap().is_some());
        assert_eq!(
            client_side.next_frame().unwrap(),
            Some(Frame::SynReply {
                stream: 5,
                fin: true,
                headers: headers(&[("a", "x"), ("a", "y")])
            })
        );
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let mut decoder = Decoder::default();
        // Version 2.
        decoder.push(&[0x80, 0x02, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00]);
        assert_eq!(decoder.next_frame(), Err(SpdyError::Version(2)));
        // A SYN_STREAM too short for its fields.
        let mut decoder = Decoder::default();
        decoder.push(&[0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00]);
        assert_eq!(decoder.next_frame(), Err(SpdyError::Invalid("SYN_STREAM")));
        // A header block that is not zlib.
        let mut decoder = Decoder::default();
        let mut frame = vec![0x80, 0x03, 0x00, 0x02, 0x00, 0x00, 0x00, 0x08, 0, 0, 0, 1];
        frame.extend_from_slice(b"junk");
        decoder.push(&frame);
        assert!(matches!(
            decoder.next_frame(),
            Err(SpdyError::HeaderBlock(_))
        ));
        // An unknown control type.
        let mut decoder = Decoder::default();
        decoder.push(&[0x80, 0x03, 0x00, 0x0f, 0x00, 0x00, 0x00, 0x00]);
        assert_eq!(decoder.next_frame(), Err(SpdyError::UnknownType(15)));
    }

    #[test]
    fn a_zlib_bomb_is_refused() {
        let mut client = Encoder::default();
        let huge = headers(&[("x", &"a".repeat(200_000))]);
        let frame = client.syn_stream(1, false, &huge);
        let mut decoder = Decoder::default();
        decoder.push(&frame);
        assert!(matches!(
            decoder.next_frame(),
            Err(SpdyError::HeaderBlock(why)) if why.contains("more than")
        ));
    }
}
