//! The floor of the fan-out benchmark: the least any server can do to deliver a live stream.
//!
//! One thread accepts HTTP listeners and, every 20 ms, writes the same Ogg page (one
//! Opus packet of `frame_bytes`) to every socket with one non-blocking `send()` each. A socket
//! that would block skips that page (counted); one that takes only part of a page is closed
//! (counted: its stream would be cut mid-page). It reads no request, parses nothing and keeps
//! no queue, no task and no timer per listener: what it spends per delivered frame is the
//! kernel's cost of a send, which every server pays. `scripts/fanout.sh` runs it beside Icecast
//! and the relay with the same load client (`bench::fanout`); docs/BENCHMARKS.md section 11.
//!
//! Every connection gets the same stream whatever it asks for: a `200` response head, the
//! OpusHead and OpusTags pages, then the live pages from the one it joins at (page sequence
//! numbers count on, so a listener sees a skipped page as a gap).
//!
//! **Over TLS** (`Options::tls`, the relay's own rustls configuration) the same, with what TLS
//! adds and nothing else: each connection's handshake is driven once a frame (non-blocking),
//! then every page is encrypted for each socket on its own (one record: `writer()`, then
//! `write_tls`, one `writev`). A socket whose previous record has not all left skips the page
//! (its encryption would only queue); nothing is cut, a record's rest goes out at the next
//! frame.

use crate::ogg;
use std::io::{ErrorKind, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_rustls::rustls;

/// Opus look-ahead of libopus at 48 kHz, as the relay's streams declare it.
const PRE_SKIP: u16 = 312;
/// Time between pages: 20 ms, the frame of the relay's booths and of the Icecast sources.
pub const FRAME: Duration = Duration::from_millis(20);
/// Samples in a 20 ms packet, at the 48 kHz of every Opus granule position.
const FRAME_SAMPLES: u32 = 960;
/// Frames a TLS handshake may take (5 s) before its connection is closed and refused.
const HANDSHAKE_FRAMES: u32 = 250;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("bad floor options: {0}")]
    Options(&'static str),
    #[error("cannot take connections: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot make the Ogg pages: {0}")]
    Ogg(#[from] ogg::Error),
}

/// What to send.
#[derive(Debug, Clone)]
pub struct Options {
    /// Opus packet bytes per page, 1..=1275 (80 is 32 kbit/s at 20 ms).
    pub frame_bytes: usize,
    /// Connections held at most, handshakes included; more are closed as they come (counted
    /// as `refused`).
    pub max_listeners: usize,
    /// Serve over TLS with this configuration (see the module's docs).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            frame_bytes: 80,
            max_listeners: 20_000,
            tls: None,
        }
    }
}

/// What the floor did, from its start to its stop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connections taken (each got the response head and the header pages).
    pub accepted: u64,
    /// Connections closed at once: over `max_listeners`, or the head did not fit; over TLS
    /// also a handshake that failed or took longer than 5 s.
    pub refused: u64,
    /// Live pages made (one per frame).
    pub pages: u64,
    /// Pages written whole to a socket.
    pub writes: u64,
    /// Pages a socket skipped because it would have blocked (over TLS: its last record had
    /// not all left).
    pub skipped: u64,
    /// Sockets closed because they took only part of a page (never over TLS).
    pub cut: u64,
    /// Sockets closed by the listener (the send failed).
    pub closed: u64,
    /// Pages sent more than a frame after their time: the thread was kept from its core
    /// (other load on the machine). It never drops a page of its own; late ones go out as soon
    /// as it runs again.
    pub late: u64,
}

impl std::fmt::Display for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "floor: {} connections taken, {} refused; {} pages, {} writes, {} skipped (would block), \
             {} cut, {} closed by the listener, {} late",
            self.accepted,
            self.refused,
            self.pages,
            self.writes,
            self.skipped,
            self.cut,
            self.closed,
            self.late
        )
    }
}

/// Serves `listener` until `stop` is set (checked once a frame); returns the counters.
///
/// Runs on the calling thread and blocks it. Errors: options out of range, or the listener
/// failing (not a single connection failing: that one is closed and counted).
pub fn run(listener: TcpListener, opts: &Options, stop: &AtomicBool) -> Result<Counters, Error> {
    if !(1..=1275).contains(&opts.frame_bytes) {
        return Err(Error::Options("frame bytes must be 1..=1275"));
    }
    listener.set_nonblocking(true)?;
    let mut pages = ogg::Writer::new(Vec::new(), rand::random(), 1, PRE_SKIP, &[])?;
    pages.flush()?;
    let mut head = b"HTTP/1.0 200 OK\r\nContent-Type: audio/ogg\r\n\
                     Cache-Control: no-cache, no-store\r\n\r\n"
        .to_vec();
    head.append(pages.get_mut());
    // A 20 ms CELT fullband packet (TOC config 31, code 0) padded with a constant, as the
    // relay's bench booths send: nobody decodes it, and its size is what costs.
    let mut packet = vec![0x55u8; opts.frame_bytes];
    packet[0] = 31 << 3;

    let mut counters = Counters::default();
    if let Some(config) = &opts.tls {
        let mut tls = Tls {
            config: config.clone(),
            handshaking: Vec::new(),
            live: Vec::new(),
        };
        let mut next = Instant::now() + FRAME;
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            } else if now - next > FRAME {
                counters.late += 1;
            }
            next += FRAME;
            tls.accept(&listener, opts.max_listeners, &mut counters)?;
            tls.handshake(&head, &mut counters);
            pages.packet(&packet, FRAME_SAMPLES)?;
            pages.flush()?;
            let page = std::mem::take(pages.get_mut());
            counters.pages += 1;
            tls.send(&page, &mut counters);
        }
        return Ok(counters);
    }
    // Bounded by `max_listeners`.
    let mut socks: Vec<TcpStream> = Vec::new();
    let mut next = Instant::now() + FRAME;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > FRAME {
            counters.late += 1;
        }
        next += FRAME;
        accept(
            &listener,
            &head,
            opts.max_listeners,
            &mut socks,
            &mut counters,
        )?;
        pages.packet(&packet, FRAME_SAMPLES)?;
        pages.flush()?;
        let page = std::mem::take(pages.get_mut());
        counters.pages += 1;
        let mut i = 0;
        while i < socks.len() {
            // std's write on a TCP socket is one send(2) with MSG_NOSIGNAL.
            match socks[i].write(&page) {
                Ok(n) if n == page.len() => counters.writes += 1,
                Ok(_) => {
                    counters.cut += 1;
                    socks.swap_remove(i);
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => counters.skipped += 1,
                Err(_) => {
                    counters.closed += 1;
                    socks.swap_remove(i);
                    continue;
                }
            }
            i += 1;
        }
    }
    Ok(counters)
}

/// The listeners of the floor over TLS.
struct Tls {
    config: Arc<rustls::ServerConfig>,
    /// Connections whose handshake is under way, with the frames it has taken. With `live`,
    /// bounded by `max_listeners`.
    handshaking: Vec<(TcpStream, rustls::ServerConnection, u32)>,
    live: Vec<(TcpStream, rustls::ServerConnection)>,
}

impl Tls {
    /// Takes every waiting connection into a handshake.
    fn accept(
        &mut self,
        listener: &TcpListener,
        max: usize,
        counters: &mut Counters,
    ) -> std::io::Result<()> {
        loop {
            let Some(sock) = take(listener, counters)? else {
                return Ok(());
            };
            if self.handshaking.len() + self.live.len() >= max {
                counters.refused += 1;
                continue;
            }
            let ready = sock.set_nonblocking(true).is_ok() && sock.set_nodelay(true).is_ok();
            match rustls::ServerConnection::new(self.config.clone()) {
                Ok(conn) if ready => self.handshaking.push((sock, conn, 0)),
                _ => counters.refused += 1,
            }
        }
    }

    /// Moves every handshake on as far as the bytes that came allow; one that is done gets
    /// `head` (response head and header pages, a record or two) and goes live.
    fn handshake(&mut self, head: &[u8], counters: &mut Counters) {
        let mut i = 0;
        while i < self.handshaking.len() {
            let (sock, conn, frames) = &mut self.handshaking[i];
            *frames += 1;
            let mut ok = *frames <= HANDSHAKE_FRAMES;
            // The client's flight is a few hundred bytes: one read takes it.
            match conn.read_tls(sock) {
                Ok(0) => ok = false,
                Ok(_) => ok &= conn.process_new_packets().is_ok(),
                Err(e) => ok &= e.kind() == ErrorKind::WouldBlock,
            }
            if ok && !conn.is_handshaking() {
                ok = conn.writer().write_all(head).is_ok();
            }
            while ok && conn.wants_write() {
                match conn.write_tls(sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => ok = false,
                }
            }
            if !ok {
                counters.refused += 1;
                self.handshaking.swap_remove(i);
                continue;
            }
            if !conn.is_handshaking() {
                let (sock, conn, _) = self.handshaking.swap_remove(i);
                counters.accepted += 1;
                self.live.push((sock, conn));
                continue;
            }
            i += 1;
        }
    }

    /// Encrypts `page` for every live socket and writes it (one `writev` each).
    fn send(&mut self, page: &[u8], counters: &mut Counters) {
        let mut i = 0;
        while i < self.live.len() {
            let (sock, conn) = &mut self.live[i];
            // Whatever the last frame left goes first; while some is left, this page is
            // skipped, as a plain socket that would block skips it.
            let fresh = !conn.wants_write();
            if fresh && conn.writer().write_all(page).is_err() {
                counters.closed += 1;
                self.live.swap_remove(i);
                continue;
            }
            let mut open = true;
            while open && conn.wants_write() {
                match conn.write_tls(sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => open = false,
                }
            }
            if !open {
                counters.closed += 1;
                self.live.swap_remove(i);
                continue;
            }
            if fresh {
                counters.writes += 1;
            } else {
                counters.skipped += 1;
            }
            i += 1;
        }
    }
}

/// The next waiting connection, or none for now: none waiting, or one that went before it was
/// taken or a descriptor limit reached (counted refused; the listener itself is fine).
fn take(listener: &TcpListener, counters: &mut Counters) -> std::io::Result<Option<TcpStream>> {
    match listener.accept() {
        Ok((sock, _)) => Ok(Some(sock)),
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(None),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ConnectionAborted | ErrorKind::Interrupted
            ) || e.raw_os_error() == Some(libc::EMFILE) =>
        {
            counters.refused += 1;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Takes every waiting connection: each gets `head` in one write, or is closed.
fn accept(
    listener: &TcpListener,
    head: &[u8],
    max: usize,
    socks: &mut Vec<TcpStream>,
    counters: &mut Counters,
) -> std::io::Result<()> {
    loop {
        let Some(sock) = take(listener, counters)? else {
            return Ok(());
        };
        if socks.len() >= max {
            counters.refused += 1;
            continue;
        }
        // Each page leaves as its own segment at once, as the relay's frames do.
        let ready = sock.set_nonblocking(true).is_ok() && sock.set_nodelay(true).is_ok();
        match (&sock).write(head) {
            Ok(n) if ready && n == head.len() => {
                counters.accepted += 1;
                socks.push(sock);
            }
            _ => counters.refused += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::Arc;

    /// Reads from `s` until `want` bytes have come or the timeout passes.
    fn read_at_least(s: &mut TcpStream, want: usize) -> Vec<u8> {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while got.len() < want {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
        got
    }

    #[test]
    fn every_listener_gets_the_head_then_consecutive_pages_of_one_packet() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let floor = std::thread::spawn({
            let stop = stop.clone();
            move || run(listener, &Options::default(), &stop)
        });
        let mut a = TcpStream::connect(addr).unwrap();
        let mut b = TcpStream::connect(addr).unwrap();
        let page = 27 + 1 + 80;
        let got_a = read_at_least(&mut a, 700);
        let got_b = read_at_least(&mut b, 700);
        stop.store(true, Ordering::Relaxed);
        let counters = floor.join().unwrap().unwrap();
        for got in [&got_a, &got_b] {
            let text = String::from_utf8_lossy(got);
            assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
            let body = &got[got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
            assert_eq!(&body[28..36], b"OpusHead");
            // Two header pages (granule 0), then live pages of one 80-byte packet each,
            // numbered one after the other.
            let mut at = 0;
            let mut headers = 0;
            let mut seqs = Vec::new();
            while at + 27 <= body.len() {
                assert_eq!(&body[at..at + 4], b"OggS");
                let segments = body[at + 26] as usize;
                let len = 27
                    + segments
                    + body[at + 27..at + 27 + segments]
                        .iter()
                        .map(|&b| b as usize)
                        .sum::<usize>();
                if at + len > body.len() {
                    break;
                }
                if body[at + 6..at + 14] == [0; 8] {
                    headers += 1;
                } else {
                    assert_eq!((len, &body[at + 26..at + 28]), (page, &[1u8, 80][..]));
                    seqs.push(u32::from_le_bytes(
                        body[at + 18..at + 22].try_into().unwrap(),
                    ));
                }
                at += len;
            }
            assert_eq!(headers, 2);
            assert!(seqs.len() >= 2, "{seqs:?}");
            assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        }
        assert_eq!(counters.accepted, 2);
        assert_eq!(
            (counters.skipped, counters.cut, counters.refused),
            (0, 0, 0)
        );
    }

    #[test]
    fn connections_over_the_bound_are_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let opts = Options {
            max_listeners: 1,
            ..Options::default()
        };
        let floor = std::thread::spawn({
            let stop = stop.clone();
            move || run(listener, &opts, &stop)
        });
        let mut a = TcpStream::connect(addr).unwrap();
        assert!(read_at_least(&mut a, 1).starts_with(b"HTTP/1.0 200"));
        let mut b = TcpStream::connect(addr).unwrap();
        // Closed without a byte.
        assert!(read_at_least(&mut b, 1).is_empty());
        stop.store(true, Ordering::Relaxed);
        let counters = floor.join().unwrap().unwrap();
        assert_eq!((counters.accepted, counters.refused), (1, 1));
    }

    #[test]
    fn options_out_of_range_are_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stop = AtomicBool::new(true);
        let opts = Options {
            frame_bytes: 0,
            ..Options::default()
        };
        assert!(matches!(
            run(listener, &opts, &stop),
            Err(Error::Options(_))
        ));
    }
}
