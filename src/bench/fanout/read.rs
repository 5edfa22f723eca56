//! The reader thread of the fan-out load client: every listener's socket in one
//! level-triggered epoll set, one `read()` per readiness, and the two framings (Ogg pages, the
//! relay's WebSocket frames) cut out of the bytes and counted.
//!
//! A listener over TLS keeps its rustls session: on readiness, `read_tls` (the same one
//! `read()`), `process_new_packets` (decryption), then the plaintext from its `reader()` goes
//! through the same cut. What it sends back (pongs, TLS alerts) goes through `write_tls`.

use crate::bench::ws;
use crate::protocol::FrameHeader;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc;
use tokio_rustls::rustls;

/// A listener's unread bytes never exceed this (a frame of the relay is at most 3,857
/// bytes, an Ogg page at most 65,307): more means a stream this client cannot parse.
const MAX_PENDING: usize = 128 * 1024;
/// Bytes taken by one `read()`.
const READ_CHUNK: usize = 64 * 1024;
/// Readiness events taken by one `epoll_wait`.
const EVENTS: usize = 1024;
/// The reader's longest sleep, so that it sees the end of a phase soon enough.
const WAIT_MS: i32 = 50;

/// Phases of a run, as the reader thread sees them.
pub(super) mod phase {
    /// Listeners connect and read; nothing is counted yet.
    pub const WARMING: u8 = 0;
    pub const MEASURING: u8 = 1;
    /// Still reading (the server keeps every listener until it is sampled), not counting.
    pub const DRAINING: u8 = 2;
    pub const STOPPED: u8 = 3;
}

/// What all listeners add to, on the reader thread.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tally {
    pub(super) frames: u64,
    pub(super) reads: u64,
    pub(super) lost: u64,
    pub(super) bytes: u64,
    /// Bytes read from the sockets: the frames' bytes, plus the TLS record overhead.
    pub(super) wire: u64,
    pub(super) dropped: u64,
}

/// Where a listener is in its stream.
#[derive(Debug, Default)]
struct Track {
    serial: Option<u32>,
    last_seq: Option<u32>,
}

impl Track {
    /// Counts a gap between the last unit and `seq` (a backwards step is a renumbering).
    fn next(&mut self, seq: u32, counting: bool, tally: &mut Tally) {
        if let Some(last) = self.last_seq {
            let gap = seq.wrapping_sub(last).wrapping_sub(1);
            if counting && gap != 0 && gap < u32::MAX / 2 {
                tally.lost += u64::from(gap);
            }
        }
        self.last_seq = Some(seq);
    }
}

/// Takes the complete Ogg pages off the front of `buf`, counting each packet of an audio page
/// as a frame; returns the bytes taken. `Err` for bytes that are not an Ogg stream.
fn ogg_pages(
    buf: &[u8],
    track: &mut Track,
    counting: bool,
    tally: &mut Tally,
) -> Result<usize, &'static str> {
    let mut at = 0;
    while buf.len() - at >= 27 {
        let page = &buf[at..];
        if &page[..4] != b"OggS" {
            return Err("not an Ogg page");
        }
        let segments = page[26] as usize;
        if page.len() < 27 + segments {
            break;
        }
        let lacing = &page[27..27 + segments];
        let len = 27 + segments + lacing.iter().map(|&b| b as usize).sum::<usize>();
        if page.len() < len {
            break;
        }
        let granule = i64::from_le_bytes(page[6..14].try_into().expect("8 bytes"));
        let serial = u32::from_le_bytes(page[14..18].try_into().expect("4 bytes"));
        let seq = u32::from_le_bytes(page[18..22].try_into().expect("4 bytes"));
        at += len;
        if track.serial != Some(serial) {
            // A new stream (a source that came back): numbering starts over.
            track.serial = Some(serial);
            track.last_seq = None;
        }
        if granule == 0 {
            // OpusHead, OpusTags: each new listener gets them, then the live page, so the
            // gap that follows is not a loss.
            track.last_seq = None;
            continue;
        }
        track.next(seq, counting, tally);
        if counting {
            // A packet ends at each lacing value below 255.
            tally.frames += lacing.iter().filter(|&&b| b < 255).count() as u64;
            tally.bytes += len as u64;
        }
    }
    Ok(at)
}

/// Takes the complete WebSocket frames off the front of `buf`, counting each audio frame;
/// returns the bytes taken and the pings to answer. `Err` when the relay closed or sent what
/// it never sends.
fn ws_frames(
    buf: &[u8],
    track: &mut Track,
    counting: bool,
    tally: &mut Tally,
) -> Result<(usize, usize), String> {
    let mut at = 0;
    let mut pings = 0;
    while let Some((frame, len)) = ws::next_frame(&buf[at..])? {
        match frame {
            ws::Frame::Binary(payload) => {
                let header = FrameHeader::parse(payload).map_err(|e| e.to_string())?;
                track.next(header.sequence, counting, tally);
                if counting {
                    tally.frames += 1;
                    tally.bytes += len as u64;
                }
            }
            ws::Frame::Ping(_) => pings += 1,
            ws::Frame::Close(code) => return Err(format!("closed by the relay ({code:?})")),
            ws::Frame::Text(_) | ws::Frame::Other => {}
        }
        at += len;
    }
    Ok((at, pings))
}

/// A listener handed to the reader thread, its request answered.
pub(super) struct Joined {
    /// Non-blocking.
    pub(super) socket: std::net::TcpStream,
    /// Stream bytes (plaintext) read past the response head.
    pub(super) rest: Vec<u8>,
    /// The session of a listener over TLS, its handshake done.
    pub(super) tls: Option<Box<rustls::ClientConnection>>,
}

/// One listener on the reader thread.
struct Conn {
    socket: std::net::TcpStream,
    tls: Option<Box<rustls::ClientConnection>>,
    /// Bytes of an incomplete frame, kept for the next read.
    pending: Vec<u8>,
    track: Track,
}

impl Conn {
    /// Cuts what `bytes` completes; false once the stream cannot go on.
    fn take(&mut self, ogg: bool, bytes: &[u8], counting: bool, tally: &mut Tally) -> bool {
        let data: &[u8] = if self.pending.is_empty() {
            bytes
        } else {
            self.pending.extend_from_slice(bytes);
            &self.pending
        };
        let (used, pings) = if ogg {
            match ogg_pages(data, &mut self.track, counting, tally) {
                Ok(used) => (used, 0),
                Err(_) => return false,
            }
        } else {
            match ws_frames(data, &mut self.track, counting, tally) {
                Ok(r) => r,
                Err(_) => return false,
            }
        };
        if data.len() - used > MAX_PENDING {
            return false;
        }
        if self.pending.is_empty() {
            self.pending.extend_from_slice(&bytes[used..]);
        } else {
            self.pending.drain(..used);
        }
        for _ in 0..pings {
            // A few bytes into a send buffer that holds nothing else: it fits.
            let pong = ws::masked(ws::opcode::PONG, &[]);
            let sent = match self.tls.as_mut() {
                None => self.socket.write(&pong).ok() == Some(pong.len()),
                Some(tls) => tls.writer().write_all(&pong).is_ok(),
            };
            if !sent {
                return false;
            }
        }
        true
    }

    /// One readiness of a plain listener: one `read()`, its bytes cut. False once the stream
    /// cannot go on.
    fn read_plain(
        &mut self,
        chunk: &mut [u8],
        ogg: bool,
        counting: bool,
        tally: &mut Tally,
    ) -> bool {
        match self.socket.read(chunk) {
            Ok(0) => false,
            Ok(n) => {
                if counting {
                    tally.reads += 1;
                    tally.wire += n as u64;
                }
                self.take(ogg, &chunk[..n], counting, tally)
            }
            Err(e) => matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted),
        }
    }

    /// One readiness of a listener over TLS: one `read_tls` (one `read()`), the records
    /// decrypted and their plaintext cut, then whatever the session has to send.
    fn read_encrypted(
        &mut self,
        chunk: &mut [u8],
        ogg: bool,
        counting: bool,
        tally: &mut Tally,
    ) -> bool {
        let Some(tls) = self.tls.as_mut() else {
            return false;
        };
        match tls.read_tls(&mut self.socket) {
            Ok(0) => return false,
            Ok(n) => {
                if counting {
                    tally.reads += 1;
                    tally.wire += n as u64;
                }
            }
            Err(e) => return matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted),
        }
        if tls.process_new_packets().is_err() {
            return false;
        }
        self.drain_plaintext(chunk, ogg, counting, tally) && self.flush_tls()
    }

    /// Cuts the plaintext the session holds; false once the stream cannot go on (the server's
    /// `close_notify` included).
    fn drain_plaintext(
        &mut self,
        chunk: &mut [u8],
        ogg: bool,
        counting: bool,
        tally: &mut Tally,
    ) -> bool {
        loop {
            let Some(tls) = self.tls.as_mut() else {
                return true;
            };
            match tls.reader().read(chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    if !self.take(ogg, &chunk[..n], counting, tally) {
                        return false;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
    }

    /// Writes what the session has queued (a pong, an alert), as far as the socket takes it:
    /// the rest goes at the next readiness.
    fn flush_tls(&mut self) -> bool {
        let Some(tls) = self.tls.as_mut() else {
            return true;
        };
        while tls.wants_write() {
            match tls.write_tls(&mut self.socket) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
        true
    }
}

/// The reader thread: takes listeners from `incoming`, reads every one as its bytes arrive
/// until the phase is `STOPPED`, and returns what was counted while `MEASURING`.
pub(super) fn read_all(
    ogg: bool,
    incoming: mpsc::Receiver<Joined>,
    phase: &AtomicU8,
) -> std::io::Result<Tally> {
    // SAFETY: epoll_create1 has no preconditions; the descriptor it returns is ours alone.
    let epoll = match unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) } {
        -1 => return Err(std::io::Error::last_os_error()),
        fd => unsafe { OwnedFd::from_raw_fd(fd) },
    };
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut tally = Tally::default();
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
    loop {
        let now = phase.load(Ordering::Relaxed);
        if now == phase::STOPPED {
            return Ok(tally);
        }
        let counting = now == phase::MEASURING;
        while let Ok(joined) = incoming.try_recv() {
            let mut conn = Conn {
                socket: joined.socket,
                tls: joined.tls,
                pending: Vec::new(),
                track: Track::default(),
            };
            // Plaintext the session decrypted during the request, not yet read, is cut now:
            // the next readiness may be a frame away.
            if !(conn.take(ogg, &joined.rest, counting, &mut tally)
                && conn.drain_plaintext(&mut chunk, ogg, counting, &mut tally))
            {
                tally.dropped += 1;
                continue;
            }
            let mut event = libc::epoll_event {
                // Level-triggered: a read that leaves bytes behind is told again.
                events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
                u64: conns.len() as u64,
            };
            // SAFETY: both descriptors are open; the event outlives the call.
            let r = unsafe {
                libc::epoll_ctl(
                    epoll.as_raw_fd(),
                    libc::EPOLL_CTL_ADD,
                    conn.socket.as_raw_fd(),
                    &mut event,
                )
            };
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
            conns.push(Some(conn));
        }
        // SAFETY: `events` holds `EVENTS` entries for the kernel to fill.
        let n = unsafe {
            libc::epoll_wait(
                epoll.as_raw_fd(),
                events.as_mut_ptr(),
                EVENTS as i32,
                WAIT_MS,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in &events[..n as usize] {
            let slot = &mut conns[event.u64 as usize];
            let Some(conn) = slot.as_mut() else { continue };
            let open = if conn.tls.is_some() {
                conn.read_encrypted(&mut chunk, ogg, counting, &mut tally)
            } else {
                conn.read_plain(&mut chunk, ogg, counting, &mut tally)
            };
            if !open {
                // Closing the socket takes it out of the epoll set.
                *slot = None;
                tally.dropped += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Source;

    fn page(granule: i64, serial: u32, seq: u32, packets: &[usize]) -> Vec<u8> {
        let mut p = b"OggS\0\0".to_vec();
        p.extend_from_slice(&granule.to_le_bytes());
        p.extend_from_slice(&serial.to_le_bytes());
        p.extend_from_slice(&seq.to_le_bytes());
        p.extend_from_slice(&[0; 4]);
        p.push(packets.len() as u8);
        p.extend(packets.iter().map(|&n| n as u8));
        for &n in packets {
            p.extend(std::iter::repeat_n(0x55, n));
        }
        p
    }

    #[test]
    fn ogg_pages_count_packets_and_gaps_across_split_reads() {
        let mut stream = Vec::new();
        stream.extend(page(0, 7, 0, &[19]));
        stream.extend(page(0, 7, 1, &[25]));
        stream.extend(page(960, 7, 40, &[80]));
        stream.extend(page(1920, 7, 41, &[80]));
        // Two pages lost, then a page of two packets.
        stream.extend(page(5760, 7, 44, &[80, 80]));
        let mut conn = Track::default();
        let mut tally = Tally::default();
        let mut pending = Vec::new();
        for piece in stream.chunks(13) {
            pending.extend_from_slice(piece);
            let used = ogg_pages(&pending, &mut conn, true, &mut tally).unwrap();
            pending.drain(..used);
        }
        assert!(pending.is_empty());
        assert_eq!((tally.frames, tally.lost), (4, 2));
        assert_eq!(tally.bytes, 2 * 108 + 27 + 2 + 160);
        assert!(ogg_pages(b"not an ogg stream at all...", &mut conn, true, &mut tally).is_err());
    }

    fn relay_frame(seq: u32) -> Vec<u8> {
        let header = FrameHeader {
            source: Source::Interpreter,
            channel: 0,
            sequence: seq,
            capture_us: 1,
            relay_us: 2,
            rms: 30,
            peak: 12,
        };
        let payload = header.frame(&[0xF8; 80]);
        let mut out = vec![0x82, payload.len() as u8];
        out.extend_from_slice(&payload);
        out
    }

    #[test]
    fn ws_frames_count_audio_gaps_and_pings() {
        let mut stream = vec![0x81, 2, b'{', b'}'];
        stream.extend(relay_frame(5));
        stream.extend([0x89, 0]);
        stream.extend(relay_frame(6));
        stream.extend(relay_frame(9));
        let mut track = Track::default();
        let mut tally = Tally::default();
        let (used, pings) =
            ws_frames(&stream[..stream.len() - 3], &mut track, true, &mut tally).unwrap();
        assert_eq!((tally.frames, pings), (2, 1));
        let (rest, _) = ws_frames(&stream[used..], &mut track, true, &mut tally).unwrap();
        assert_eq!(used + rest, stream.len());
        assert_eq!((tally.frames, tally.lost, tally.bytes), (3, 2, 3 * 110));
        assert!(ws_frames(&[0x88, 2, 0x03, 0xE8], &mut track, true, &mut tally).is_err());
    }
}
