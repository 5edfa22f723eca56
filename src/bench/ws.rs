//! The WebSocket client side by hand, for the load generators: a connection from a loopback
//! address of the client's own, the upgrade, masked client frames, the relay's frames parsed in
//! place. Hand-made so that thousands of listeners cost the generator a read per batch of
//! frames, not a library's buffers and tasks per connection (RFC 6455 sections 4 and 5).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Longest wait for any one connection, handshake or answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A TCP connection to `relay` from the loopback address `from`, without Nagle.
///
/// The socket is bound with `IP_BIND_ADDRESS_NO_PORT`, so the kernel picks the port at connect
/// from the whole address pair rather than by a scan at bind: thousands of connections from
/// one address to one port fit. Errors are the socket's.
pub async fn connect_from(from: Ipv4Addr, relay: SocketAddr) -> std::io::Result<TcpStream> {
    use std::os::fd::AsRawFd;
    let socket = TcpSocket::new_v4()?;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket descriptor, and an option value of the size given.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    socket.bind(SocketAddr::new(from.into(), 0))?;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(relay))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sends the WebSocket upgrade for `/ws` and reads the answer; returns the bytes read past the
/// response head. `Err` says what came instead (a `503` and its reason, a close).
pub async fn upgrade(s: &mut TcpStream, relay: SocketAddr) -> Result<Vec<u8>, String> {
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {relay}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let end = loop {
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed during the upgrade".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 8192 {
            return Err("upgrade answer too long".into());
        }
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        let line = buf.split(|b| *b == b'\r').next().unwrap_or_default();
        return Err(format!(
            "upgrade refused: {}",
            String::from_utf8_lossy(line)
        ));
    }
    Ok(buf[end..].to_vec())
}

/// WebSocket opcodes used here.
pub mod opcode {
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// A client frame (clients must mask; the key may be anything, here zero), appended to `out`.
pub fn masked_into(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    if payload.len() < 126 {
        out.push(0x80 | payload.len() as u8);
    } else {
        out.push(0x80 | 126);
        out.extend_from_slice(&(payload.len().min(u16::MAX as usize) as u16).to_be_bytes());
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
}

/// A client frame (see [`masked_into`]).
pub fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    masked_into(&mut out, opcode, payload);
    out
}

/// One frame from the relay (unmasked, never fragmented by it).
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Text(&'a [u8]),
    Binary(&'a [u8]),
    /// The close code, if the frame has one.
    Close(Option<u16>),
    Ping(&'a [u8]),
    Other,
}

/// Larger frames than this are not the relay's (its largest is a 3853-byte audio frame).
const MAX_SERVER_FRAME: usize = 64 * 1024;

/// The first complete frame at the start of `buf` and its length in bytes; `None` until it is
/// complete. `Err` for a frame no relay sends (longer than 64 KiB).
pub fn next_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let op = buf[0] & 0x0F;
    let (len, head) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (
            u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")) as usize,
            10,
        ),
        126 | 127 => return Ok(None),
        n => (n as usize, 2),
    };
    if len > MAX_SERVER_FRAME {
        return Err(format!("a {len}-byte frame"));
    }
    if buf.len() < head + len {
        return Ok(None);
    }
    let p = &buf[head..head + len];
    let frame = match op {
        opcode::TEXT => Frame::Text(p),
        opcode::BINARY => Frame::Binary(p),
        opcode::CLOSE => Frame::Close(p.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]))),
        opcode::PING => Frame::Ping(p),
        _ => Frame::Other,
    };
    Ok(Some((frame, head + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_as_the_relay_sends_them() {
        let mut buf = vec![0x81, 5];
        buf.extend_from_slice(b"hello");
        buf.extend_from_slice(&[0x88, 2, 0x03, 0xE8]);
        buf.extend_from_slice(&[0x89, 0]);
        let (f, n) = next_frame(&buf).unwrap().unwrap();
        assert_eq!((f, n), (Frame::Text(b"hello"), 7));
        let (f, m) = next_frame(&buf[n..]).unwrap().unwrap();
        assert_eq!((f, m), (Frame::Close(Some(1000)), 4));
        let (f, _) = next_frame(&buf[n + m..]).unwrap().unwrap();
        assert_eq!(f, Frame::Ping(b""));
        assert_eq!(next_frame(&buf[..6]).unwrap(), None);
        assert!(next_frame(&[0x82, 127, 0, 0, 0, 0, 0, 2, 0, 0]).is_err());
    }
}
