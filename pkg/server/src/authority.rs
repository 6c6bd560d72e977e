//! Clients on a unix socket do not agree on HTTP/2's `:authority`. containerd's Go
//! client sends `localhost`; gRPC's C core (Python's grpcio, and so most tools not
//! written in Go) sends the socket's path (`/run/rustlayer/rustlayer.sock`), since
//! 1.57 percent-encoded (`%2Frun%2F...`); others send it empty. The HTTP/2 server
//! (the `h2` crate, under hyper and tonic) requires a valid URI authority and resets
//! any other request with PROTOCOL_ERROR before the service sees it, with no
//! setting to relax that.
//!
//! So the bytes a client sends pass through [`AuthorityFix`] first. It reads the
//! HTTP/2 frames of a connection up to its first header block. When that block's
//! `:authority` is one the server takes, it steps aside: from then on the bytes go
//! through untouched. When not, it rewrites that block and every later one on the
//! connection: it decodes each with the client's compression state and writes it
//! again with `:authority: localhost` (what containerd's client sends) and without
//! compression references, which mean the same to the server whatever its own
//! table holds. Other frames pass unchanged. The server's side of the connection
//! is never touched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;
use tracing::debug;

use crate::hpack::{Decoder, Header, encode};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frame size every HTTP/2 endpoint accepts (SETTINGS_MAX_FRAME_SIZE's
/// initial value); rewritten blocks are cut into frames no larger.
const MAX_FRAME: usize = 1 << 14;
/// The compression table a client may use: SETTINGS_HEADER_TABLE_SIZE's initial
/// value, which the server (hyper's defaults) leaves as it is.
const HEADER_TABLE: usize = 4096;
/// A header block is held whole to be decoded; beyond this it is not a request
/// the server would take either.
const MAX_BLOCK: usize = 1 << 20;
/// What replaces an authority the server would refuse.
const LOCAL_AUTHORITY: &[u8] = b"localhost";

/// How much of the connection is still looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Up to the first header block, which decides.
    Watching,
    /// Every header block is written again.
    Rewriting,
    /// Bytes pass untouched.
    Passthrough,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Preface,
    FrameHeader,
    /// Inside a frame that passes as it is: this many payload bytes to go.
    Forwarding(usize),
}

/// A header block whose CONTINUATION frames are still to come.
#[derive(Debug)]
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The frames as received, for passing on unchanged.
    raw: Vec<u8>,
}

/// A server-side connection whose incoming header blocks get an authority the HTTP/2
/// server accepts.
#[derive(Debug)]
pub struct AuthorityFix<S> {
    inner: S,
    mode: Mode,
    state: State,
    /// Received, not yet looked at.
    input: Vec<u8>,
    /// Ready for the server, from `output_at` on.
    output: Vec<u8>,
    output_at: usize,
    block: Option<Block>,
    decoder: Decoder,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> AuthorityFix<S> {
        AuthorityFix {
            inner,
            mode: Mode::Watching,
            state: State::Preface,
            input: Vec::new(),
            output: Vec::new(),
            output_at: 0,
            block: None,
            decoder: Decoder::new(HEADER_TABLE),
        }
    }

    /// Takes `n` bytes off the front of the input.
    fn take(&mut self, n: usize) -> Vec<u8> {
        let rest = self.input.split_off(n);
        std::mem::replace(&mut self.input, rest)
    }

    /// Something other than well-formed HTTP/2 arrived (in `frame`, if it was
    /// taken off the input already). Before anything was rewritten, the server gets
    /// the bytes as they came and judges them itself; after, the connection cannot
    /// go on, as the server would also end it.
    fn malformed(&mut self, what: &'static str, frame: &[u8]) -> io::Result<()> {
        if self.mode == Mode::Rewriting {
            return Err(io::Error::new(io::ErrorKind::InvalidData, what));
        }
        debug!(what, "passing the connection on unexamined");
        if let Some(block) = self.block.take() {
            self.output.extend_from_slice(&block.raw);
        }
        self.output.extend_from_slice(frame);
        let input = std::mem::take(&mut self.input);
        self.output.extend_from_slice(&input);
        self.mode = Mode::Passthrough;
        Ok(())
    }

    /// Looks at what has arrived as far as it goes; false when more input is needed.
    fn advance(&mut self) -> io::Result<bool> {
        if self.mode == Mode::Passthrough {
            let input = std::mem::take(&mut self.input);
            self.output.extend_from_slice(&input);
            return Ok(false);
        }
        match self.state {
            State::Preface => {
                let seen = self.input.len().min(PREFACE.len());
                if self.input[..seen] != PREFACE[..seen] {
                    self.malformed("no HTTP/2 preface", &[])?;
                    return Ok(true);
                }
                if seen < PREFACE.len() {
                    return Ok(false);
                }
                let preface = self.take(PREFACE.len());
                self.output.extend_from_slice(&preface);
                self.state = State::FrameHeader;
                Ok(true)
            }
            State::Forwarding(0) => {
                self.state = State::FrameHeader;
                Ok(true)
            }
            State::Forwarding(left) => {
                let n = left.min(self.input.len());
                if n == 0 {
                    return Ok(false);
                }
                let bytes = self.take(n);
                self.output.extend_from_slice(&bytes);
                self.state = if n == left {
                    State::FrameHeader
                } else {
                    State::Forwarding(left - n)
                };
                Ok(true)
            }
            State::FrameHeader => self.frame(),
        }
    }

    fn frame(&mut self) -> io::Result<bool> {
        if self.input.len() < FRAME_HEADER {
            return Ok(false);
        }
        let h = &self.input[..FRAME_HEADER];
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let (kind, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        let in_block = self.block.as_ref().map(|b| b.stream);
        if kind != HEADERS && kind != CONTINUATION {
            if in_block.is_some() {
                self.malformed("a frame inside a header block", &[])?;
                return Ok(true);
            }
            let header = self.take(FRAME_HEADER);
            self.output.extend_from_slice(&header);
            self.state = State::Forwarding(len);
            return Ok(true);
        }
        let held = self.block.as_ref().map_or(0, |b| b.raw.len());
        if held + FRAME_HEADER + len > MAX_BLOCK {
            self.malformed("header block too large", &[])?;
            return Ok(true);
        }
        if self.input.len() < FRAME_HEADER + len {
            return Ok(false);
        }
        let frame = self.take(FRAME_HEADER + len);
        let payload = &frame[FRAME_HEADER..];
        match (kind, in_block) {
            (HEADERS, None) => {
                let Some((priority, fragment)) = headers_fragment(flags, payload) else {
                    self.malformed("malformed HEADERS frame", &frame)?;
                    return Ok(true);
                };
                self.block = Some(Block {
                    stream,
                    end_stream: flags & END_STREAM != 0,
                    priority,
                    fragment: fragment.to_vec(),
                    raw: frame.clone(),
                });
            }
            (CONTINUATION, Some(open)) if open == stream => {
                let block = self.block.as_mut().expect("an open block");
                block.fragment.extend_from_slice(payload);
                block.raw.extend_from_slice(&frame);
            }
            _ => {
                self.malformed("CONTINUATION out of place", &frame)?;
                return Ok(true);
            }
        }
        if flags & END_HEADERS != 0 {
            let block = self.block.take().expect("an open block");
            self.finish(block)?;
        }
        Ok(true)
    }

    fn finish(&mut self, block: Block) -> io::Result<()> {
        let mut headers = match self.decoder.decode(&block.fragment) {
            Ok(headers) => headers,
            Err(err) => {
                self.block = Some(block);
                return self.malformed(err.0, &[]);
            }
        };
        let refused = headers
            .iter()
            .position(|h| h.name == b":authority" && !acceptable(&h.value));
        if self.mode == Mode::Watching && refused.is_none() {
            self.output.extend_from_slice(&block.raw);
            self.mode = Mode::Passthrough;
            return Ok(());
        }
        if let Some(i) = refused {
            if self.mode == Mode::Watching {
                debug!(authority = %String::from_utf8_lossy(&headers[i].value), "client sends an authority the server refuses; its header blocks are rewritten");
            }
            headers[i] = Header {
                value: LOCAL_AUTHORITY.to_vec(),
                ..headers[i].clone()
            };
        }
        self.mode = Mode::Rewriting;
        let mut fragment = Vec::new();
        encode(&headers, &mut fragment);
        write_block(&block, &fragment, &mut self.output);
        Ok(())
    }
}

/// Whether the HTTP/2 server takes `value` as `:authority`: it parses it as a URI
/// authority, and nothing else.
fn acceptable(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// A HEADERS payload's priority fields and header block fragment, without padding.
fn headers_fragment(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut rest = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        let (&n, after) = rest.split_first()?;
        pad = usize::from(n);
        rest = after;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        let fields: [u8; 5] = rest.get(..5)?.try_into().ok()?;
        priority = Some(fields);
        rest = &rest[5..];
    }
    let end = rest.len().checked_sub(pad)?;
    Some((priority, &rest[..end]))
}

/// One HEADERS frame and as many CONTINUATION frames as the fragment needs.
fn write_block(block: &Block, fragment: &[u8], out: &mut Vec<u8>) {
    let priority = block.priority.as_ref().map_or(&[][..], |p| &p[..]);
    let first_room = MAX_FRAME - priority.len();
    let (first, mut rest) = fragment.split_at(first_room.min(fragment.len()));
    let mut flags = 0;
    if block.end_stream {
        flags |= END_STREAM;
    }
    if block.priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    frame_header(
        priority.len() + first.len(),
        HEADERS,
        flags,
        block.stream,
        out,
    );
    out.extend_from_slice(priority);
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(MAX_FRAME.min(rest.len()));
        rest = after;
        let flags = if rest.is_empty() { END_HEADERS } else { 0 };
        frame_header(chunk.len(), CONTINUATION, flags, block.stream, out);
        out.extend_from_slice(chunk);
    }
}

fn frame_header(len: usize, kind: u8, flags: u8, stream: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.output_at < this.output.len() {
                let n = buf.remaining().min(this.output.len() - this.output_at);
                buf.put_slice(&this.output[this.output_at..this.output_at + n]);
                this.output_at += n;
                if this.output_at == this.output.len() {
                    this.output.clear();
                    this.output_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.mode == Mode::Passthrough && this.input.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            while this.advance()? {}
            if !this.output.is_empty() {
                continue;
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // The client is gone: whatever is left goes on as it came, for the
                // server to find incomplete.
                let rest = std::mem::take(&mut this.input);
                if let Some(block) = this.block.take() {
                    this.output.extend_from_slice(&block.raw);
                }
                this.output.extend_from_slice(&rest);
                this.mode = Mode::Passthrough;
                if this.output.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            this.input.extend_from_slice(read.filled());
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn headers_frame(stream: u32, flags: u8, block: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame_header(block.len(), HEADERS, flags, stream, &mut out);
        out.extend_from_slice(block);
        out
    }

    fn request(authority: &[u8]) -> Vec<Header> {
        vec![
            Header::new(b":method", b"POST"),
            Header::new(b":scheme", b"http"),
            Header::new(b":path", b"/x/y"),
            Header::new(b":authority", authority),
            Header::new(b"te", b"trailers"),
        ]
    }

    /// A SETTINGS frame with one setting, and an empty one (its acknowledgement).
    fn settings() -> Vec<u8> {
        let mut out = Vec::new();
        frame_header(6, 0x4, 0, 0, &mut out);
        out.extend_from_slice(&[0, 3, 0, 0, 0, 100]);
        frame_header(0, 0x4, 0x1, 0, &mut out);
        out
    }

    /// What the server reads when a client writes `sent`, byte by byte or at once.
    async fn through(sent: &[u8], one_byte_at_a_time: bool) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut fix = AuthorityFix::new(server);
        if one_byte_at_a_time {
            for b in sent {
                client.write_all(&[*b]).await.unwrap();
                client.flush().await.unwrap();
            }
        } else {
            client.write_all(sent).await.unwrap();
        }
        drop(client);
        let mut got = Vec::new();
        fix.read_to_end(&mut got).await.unwrap();
        got
    }

    /// The header lists the server reads, frame by frame.
    fn blocks(mut bytes: &[u8]) -> Vec<Vec<Header>> {
        assert!(bytes.starts_with(PREFACE));
        bytes = &bytes[PREFACE.len()..];
        let mut decoder = Decoder::new(HEADER_TABLE);
        let mut out = Vec::new();
        let mut fragment = Vec::new();
        while !bytes.is_empty() {
            let len =
                usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
            let (kind, flags) = (bytes[3], bytes[4]);
            let payload = &bytes[FRAME_HEADER..FRAME_HEADER + len];
            if kind == HEADERS || kind == CONTINUATION {
                assert!(len <= MAX_FRAME);
                let (_, f) = if kind == HEADERS {
                    headers_fragment(flags, payload).unwrap()
                } else {
                    (None, payload)
                };
                fragment.extend_from_slice(f);
                if flags & END_HEADERS != 0 {
                    out.push(decoder.decode(&fragment).unwrap());
                    fragment.clear();
                }
            }
            bytes = &bytes[FRAME_HEADER + len..];
        }
        out
    }

    #[tokio::test]
    async fn an_acceptable_authority_leaves_the_connection_untouched() {
        let mut sent = PREFACE.to_vec();
        sent.extend(settings());
        // Indexed with incremental indexing, as clients do, then referred to.
        let mut first = Vec::new();
        first.extend([0x83, 0x86, 0x41, 9]);
        first.extend(b"localhost");
        first.extend([0x04, 4]);
        first.extend(b"/x/y");
        sent.extend(headers_frame(1, END_HEADERS, &first));
        sent.extend(headers_frame(
            3,
            END_HEADERS,
            &[0x83, 0x86, 0xbe, 0x04, 4, b'/', b'x', b'/', b'y'],
        ));
        for bytewise in [false, true] {
            assert_eq!(through(&sent, bytewise).await, sent);
        }
    }

    #[tokio::test]
    async fn socket_paths_become_localhost_in_every_block_after() {
        for authority in [
            &b"/run/rustlayer/rustlayer.sock"[..],
            b"unix:/run/rustlayer/rustlayer.sock",
            b"%2Frun%2Frustlayer%2Frustlayer.sock",
            b"",
        ] {
            let mut sent = PREFACE.to_vec();
            sent.extend(settings());
            // The first block puts the authority in the client's table...
            let mut first = vec![0x83, 0x86, 0x41, authority.len() as u8];
            first.extend(authority);
            first.extend([0x04, 4]);
            first.extend(b"/x/y");
            sent.extend(headers_frame(1, END_HEADERS, &first));
            // ...a DATA frame in between passes as it is...
            let mut data = Vec::new();
            frame_header(5, 0x0, END_STREAM, 1, &mut data);
            data.extend([0, 0, 0, 0, 0]);
            sent.extend(&data);
            // ...and a second request refers to it, padded, with priority, split
            // into HEADERS and CONTINUATION.
            let second = [0x83, 0x86, 0xbe, 0x04, 4, b'/', b'x', b'/', b'y'];
            let mut payload = vec![3];
            payload.extend([0, 0, 0, 1, 16]);
            payload.extend(&second[..4]);
            payload.extend([0, 0, 0]);
            let mut split = Vec::new();
            frame_header(
                payload.len(),
                HEADERS,
                PADDED | PRIORITY | END_STREAM,
                3,
                &mut split,
            );
            split.extend(&payload);
            frame_header(second.len() - 4, CONTINUATION, END_HEADERS, 3, &mut split);
            split.extend(&second[4..]);
            sent.extend(&split);

            for bytewise in [false, true] {
                let got = through(&sent, bytewise).await;
                let blocks = blocks(&got);
                let want = |path: &[u8]| {
                    vec![
                        Header::new(b":method", b"POST"),
                        Header::new(b":scheme", b"http"),
                        Header::new(b":authority", b"localhost"),
                        Header::new(b":path", path),
                    ]
                };
                assert_eq!(blocks, [want(b"/x/y"), want(b"/x/y")], "{authority:?}");
                assert!(
                    got.windows(data.len()).any(|w| w == data),
                    "the DATA frame passes unchanged"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_large_block_is_cut_into_frames_the_server_accepts() {
        let mut headers = request(b"/run/x.sock");
        headers.push(Header::new(b"x-big", &[b'v'; 40_000]));
        let mut block = Vec::new();
        encode(&headers, &mut block);
        let mut sent = PREFACE.to_vec();
        // The client's own frames may be as large as the server allows.
        let mut frame = Vec::new();
        frame_header(
            block.len(),
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &mut frame,
        );
        frame.extend(&block);
        sent.extend(frame);
        let got = through(&sent, false).await;
        let blocks = blocks(&got);
        headers[3] = Header::new(b":authority", b"localhost");
        assert_eq!(blocks, [headers]);
    }

    #[tokio::test]
    async fn what_is_not_http2_passes_unexamined() {
        let http1 = b"GET / HTTP/1.1\r\nHost: /run/x.sock\r\n\r\n".to_vec();
        assert_eq!(through(&http1, false).await, http1);
        let mut garbage = PREFACE.to_vec();
        garbage.extend(headers_frame(1, END_HEADERS, &[0x80]));
        garbage.extend(b"trailing");
        assert_eq!(through(&garbage, false).await, garbage);
    }

    #[tokio::test]
    async fn a_block_interrupted_by_another_frame_passes_in_order() {
        let mut sent = PREFACE.to_vec();
        // HEADERS without END_HEADERS, then a CONTINUATION of another stream.
        sent.extend(headers_frame(1, 0, &[0x83]));
        let mut stray = Vec::new();
        frame_header(1, CONTINUATION, END_HEADERS, 3, &mut stray);
        stray.push(0x86);
        sent.extend(stray);
        sent.extend(settings());
        assert_eq!(through(&sent, false).await, sent);
    }

    #[tokio::test]
    async fn once_rewriting_a_malformed_block_ends_the_connection() {
        let mut block = Vec::new();
        encode(&request(b"/run/x.sock"), &mut block);
        let mut sent = PREFACE.to_vec();
        sent.extend(headers_frame(1, END_HEADERS, &block));
        sent.extend(headers_frame(3, END_HEADERS, &[0xff, 0xff]));
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut fix = AuthorityFix::new(server);
        client.write_all(&sent).await.unwrap();
        drop(client);
        let mut got = Vec::new();
        let err = fix.read_to_end(&mut got).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
