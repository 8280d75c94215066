//! gRPC clients of a few years ago send a unix socket's path as the HTTP/2 `:authority`
//! (grpc-go before about 1.40: the kubelets before 1.26, older crictl and critest). The
//! HTTP/2 server under tonic (h2) holds `:authority` to RFC 3986 and resets every such
//! stream with PROTOCOL_ERROR, so those kubelets could not even ask for the runtime's
//! version. Newer clients send `localhost`, as Kubernetes does since 1.26.
//!
//! So each connection on the CRI socket passes through this relay: the client's frames
//! are read, and a header block whose `:authority` is not an authority gets `localhost`
//! instead; everything else passes as it is, and the server's frames pass untouched. The
//! header blocks are decoded and encoded again with HPACK (`loona-hpack`), each side's
//! table kept in step with its peer.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frame size every HTTP/2 peer accepts (SETTINGS_MAX_FRAME_SIZE's floor).
const MAX_FRAME: usize = 16_384;
/// A header block larger than this ends the connection (the kubelet's are tiny).
const MAX_BLOCK: usize = 1 << 20;

/// Relays `client` to a new in-memory stream, returned for the gRPC server to serve.
pub(super) fn relay<S>(client: S) -> tokio::io::DuplexStream
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (served, ours) = tokio::io::duplex(256 * 1024);
    let (mut from_client, mut to_client) = tokio::io::split(client);
    let (mut from_server, mut to_server) = tokio::io::split(ours);
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
        let _ = to_client.shutdown().await;
    });
    tokio::spawn(async move {
        if let Err(e) = rewrite(&mut from_client, &mut to_server).await {
            tracing::debug!(error = %e, "CRI connection ended");
        }
        let _ = to_server.shutdown().await;
    });
    served
}

/// A header block being gathered: its stream, END_STREAM, priority fields, fragments.
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

async fn rewrite<R, W>(rd: &mut R, wr: &mut W) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut preface = [0u8; PREFACE.len()];
    rd.read_exact(&mut preface).await?;
    wr.write_all(&preface).await?;
    let mut decoder = loona_hpack::Decoder::new();
    let mut encoder = loona_hpack::Encoder::new();
    let mut block: Option<Block> = None;
    loop {
        let mut head = [0u8; 9];
        if let Err(e) = rd.read_exact(&mut head).await {
            return if e.kind() == std::io::ErrorKind::UnexpectedEof { Ok(()) } else { Err(e) };
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7FFF_FFFF;
        let mut payload = vec![0u8; len];
        rd.read_exact(&mut payload).await?;
        match kind {
            HEADERS => {
                let mut p = &payload[..];
                let pad = if flags & PADDED != 0 {
                    let (&n, rest) = p.split_first().ok_or_else(|| bad("a padded HEADERS frame is empty"))?;
                    p = rest;
                    usize::from(n)
                } else {
                    0
                };
                let priority = if flags & PRIORITY != 0 {
                    let fields: [u8; 5] =
                        p.get(..5).and_then(|f| f.try_into().ok()).ok_or_else(|| bad("short priority"))?;
                    p = &p[5..];
                    Some(fields)
                } else {
                    None
                };
                let fragment = p.get(..p.len().saturating_sub(pad)).ok_or_else(|| bad("padding past the frame"))?;
                block =
                    Some(Block { stream, end_stream: flags & END_STREAM != 0, priority, fragment: fragment.to_vec() });
            }
            CONTINUATION => {
                let b = block.as_mut().filter(|b| b.stream == stream).ok_or_else(|| bad("a stray CONTINUATION"))?;
                b.fragment.extend_from_slice(&payload);
            }
            _ => {
                wr.write_all(&head).await?;
                wr.write_all(&payload).await?;
                continue;
            }
        }
        if block.as_ref().is_some_and(|b| b.fragment.len() > MAX_BLOCK) {
            return Err(bad("a header block over 1 MiB"));
        }
        if flags & END_HEADERS != 0
            && let Some(b) = block.take()
        {
            let headers = decoder.decode(&b.fragment).map_err(|e| bad(&format!("HPACK: {e:?}")))?;
            let headers = headers.into_iter().map(|(name, value)| {
                let fixed = name == b":authority" && http::uri::Authority::try_from(value.as_slice()).is_err();
                (name, if fixed { b"localhost".to_vec() } else { value })
            });
            let headers: Vec<(Vec<u8>, Vec<u8>)> = headers.collect();
            let encoded = encoder.encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
            write_block(wr, &b, &encoded).await?;
        }
        wr.flush().await?;
    }
}

/// Writes a header block as one HEADERS frame and as many CONTINUATIONs as it needs.
async fn write_block<W: AsyncWrite + Unpin>(wr: &mut W, b: &Block, encoded: &[u8]) -> std::io::Result<()> {
    let first_room = MAX_FRAME - if b.priority.is_some() { 5 } else { 0 };
    let (first, mut rest) = encoded.split_at(encoded.len().min(first_room));
    let mut flags = if b.end_stream { END_STREAM } else { 0 };
    if b.priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    let mut payload = b.priority.map(|p| p.to_vec()).unwrap_or_default();
    payload.extend_from_slice(first);
    write_frame(wr, HEADERS, flags, b.stream, &payload).await?;
    while !rest.is_empty() {
        let (chunk, more) = rest.split_at(rest.len().min(MAX_FRAME));
        rest = more;
        let flags = if rest.is_empty() { END_HEADERS } else { 0 };
        write_frame(wr, CONTINUATION, flags, b.stream, chunk).await?;
    }
    Ok(())
}

async fn write_frame<W: AsyncWrite + Unpin>(
    wr: &mut W,
    kind: u8,
    flags: u8,
    stream: u32,
    payload: &[u8],
) -> std::io::Result<()> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut head = [0u8; 9];
    head[..3].copy_from_slice(&len[1..]);
    head[3] = kind;
    head[4] = flags;
    head[5..].copy_from_slice(&stream.to_be_bytes());
    wr.write_all(&head).await?;
    wr.write_all(payload).await
}

fn bad(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("HTTP/2 from the CRI client: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's request headers as grpc-go before 1.40 sent them over a unix socket.
    async fn through_relay(authority: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let (client, mut far) = tokio::io::duplex(64 * 1024);
        let mut served = relay(client);
        let mut encoder = loona_hpack::Encoder::new();
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":authority", authority),
            (b":path", b"/runtime.v1alpha2.RuntimeService/Version"),
        ];
        let block = encoder.encode(headers);
        let mut out = PREFACE.to_vec();
        // split across HEADERS and a CONTINUATION, with padding, as a client may
        let (a, b) = block.split_at(block.len() / 2);
        let mut first = vec![2u8];
        first.extend_from_slice(a);
        first.extend_from_slice(&[0, 0]);
        for (kind, flags, payload) in [(HEADERS, PADDED, first), (CONTINUATION, END_HEADERS, b.to_vec())] {
            let len = (payload.len() as u32).to_be_bytes();
            out.extend_from_slice(&[len[1], len[2], len[3], kind, flags, 0, 0, 0, 1]);
            out.extend_from_slice(&payload);
        }
        far.write_all(&out).await.unwrap();
        drop(far);
        let mut got = Vec::new();
        served.read_to_end(&mut got).await.unwrap();
        assert_eq!(&got[..PREFACE.len()], PREFACE);
        let frame = &got[PREFACE.len()..];
        assert_eq!((frame[3], frame[4] & END_HEADERS), (HEADERS, END_HEADERS), "one HEADERS frame, complete");
        let len = u32::from_be_bytes([0, frame[0], frame[1], frame[2]]) as usize;
        loona_hpack::Decoder::new().decode(&frame[9..9 + len]).unwrap()
    }

    #[tokio::test]
    async fn a_socket_path_authority_becomes_localhost_and_a_good_one_stays() {
        let h = through_relay(b"/var/run/wasmlet/cri.sock").await;
        assert_eq!(h[1], (b":authority".to_vec(), b"localhost".to_vec()));
        assert_eq!(h[2].1, b"/runtime.v1alpha2.RuntimeService/Version".to_vec());
        let h = through_relay(b"localhost").await;
        assert_eq!(h[1].1, b"localhost".to_vec());
    }
}
