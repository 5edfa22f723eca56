//! The load client of the fan-out harness (`scripts/fanout.sh`): one client for three servers,
//! the floor (`bench-floor`, see [`super::floor`]), Icecast and the relay, so that their CPU
//! per delivered frame can be set side by side.
//!
//! Every listener reads every frame as it arrives, the same way against each server: one
//! non-blocking socket per listener in one level-triggered epoll set, one `read()` per
//! readiness, all on one thread. Only two things differ: the request (an HTTP `GET` of an Ogg
//! mount for the floor and Icecast; a WebSocket upgrade and a listener's `hello` for the relay,
//! made before the socket joins the set) and how a frame is cut out of the bytes read (an Ogg
//! page header, or a 2-byte WebSocket header and the relay's 28-byte frame header). Both cuts
//! are a few header reads, nanoseconds against the microseconds of a `read()`, so what the
//! servers pay for their listeners' wake-ups is the same.
//!
//! Each listener connects from a loopback address of its own (127.2.x.y, as [`super`]'s), and
//! checks its stream's sequence numbers (Ogg page sequence, or the relay's frame sequence): a
//! gap is a lost frame. For the relay, booths `b0`.. go live on channels `l0`.. of
//! `config/bench.toml` and send a frame every 20 ms from this process (as `boothcast bench`
//! does); Icecast's sources are the script's, the floor makes its own pages.
//!
//! Figures about the server (CPU, resident memory) come from `/proc` over the measured window,
//! after every listener is connected and a warm-up.
//!
//! With an `https://` URL every listener speaks TLS: the handshake and the request are made
//! with tokio-rustls before the socket joins the set, then the reader thread drives each
//! listener's own rustls session (`read_tls`, `process_new_packets`, `reader()`) from the same
//! one `read()` per readiness. The relay's booths then connect over `wss://`. The server's
//! certificate is trusted if the system trusts it or it is the one given (`ca`).

mod read;

use super::{proc_stat, ws, Histogram};
use read::{phase, read_all, Joined};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

/// Connections being opened at once: Icecast listens with a backlog of 5 and takes its
/// connections on one thread, so a larger crowd at the door only adds SYN retries.
const CONNECT_CONCURRENCY: usize = 16;
/// Tries per listener before it counts as failed, the first after `RETRY_AFTER`, doubling.
const ATTEMPTS: u32 = 5;
const RETRY_AFTER: Duration = Duration::from_millis(250);
/// Longest wait for one try: TCP connect, request, response head.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// Server CPU is sampled this long with the sources running and no listener, so the cost of
/// ingesting the channels can be told apart from the cost of the listeners.
const IDLE_SAMPLE: Duration = Duration::from_secs(2);
/// Descriptors kept free for everything that is not a listener socket.
const SPARE_FDS: u64 = 64;
/// Loopback addresses 127.2.0.1 onwards: one per listener.
pub const MAX_LISTENERS: usize = 65_000;

/// Which server is loaded; it decides the request and the framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// `boothcast bench-floor`: Ogg pages over HTTP.
    Floor,
    /// Icecast2 with mounts `/l0.opus`..: Ogg pages over HTTP.
    Icecast,
    /// `boothcast serve` with `config/bench.toml`: WebSocket listeners of `bench/l0`..
    Boothcast,
}

impl std::str::FromStr for Server {
    type Err = String;

    fn from_str(s: &str) -> Result<Server, String> {
        match s {
            "floor" => Ok(Server::Floor),
            "icecast" => Ok(Server::Icecast),
            "boothcast" => Ok(Server::Boothcast),
            _ => Err(format!(
                "`{s}`: the server is `floor`, `icecast` or `boothcast`"
            )),
        }
    }
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Server::Floor => "floor",
            Server::Icecast => "icecast",
            Server::Boothcast => "boothcast",
        })
    }
}

impl Server {
    fn ogg(self) -> bool {
        self != Server::Boothcast
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub server: Server,
    /// `http://IP:PORT` of the server, on loopback (IPv4); `https://IP:PORT` for TLS.
    pub url: String,
    /// Channels `l0`.. (Icecast mounts `/l0.opus`..; the floor has one stream whatever is
    /// asked); listeners are spread over them round-robin.
    pub channels: usize,
    pub listeners: usize,
    /// Measured time, after every listener is connected and `warm_up`.
    pub seconds: f64,
    pub warm_up: Duration,
    /// The server's process, for CPU and memory figures.
    pub server_pid: Option<u32>,
    /// The relay's bench booths: their secret and Opus payload bytes per 20 ms frame.
    pub secret: String,
    pub frame_bytes: usize,
    /// For `https://`: a certificate (PEM) to trust beside the system's, e.g. the server's
    /// self-signed one.
    pub ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("bad options: {0}")]
    Options(String),
    #[error(
        "open file limit is {limit}, {needed} needed for this many listeners: raise it (ulimit -n)"
    )]
    FileLimit { limit: u64, needed: u64 },
    #[error(transparent)]
    Booth(#[from] super::Error),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::Error),
    #[error("no listener could connect ({attempts} listeners, first error: {first_error})")]
    NoneConnected {
        attempts: usize,
        first_error: String,
    },
    #[error("cannot read the CPU time and memory of process {0} from /proc")]
    Proc(u32),
    #[error("the reader failed: {0}")]
    Reader(String),
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Report {
    pub server: Server,
    /// Every listener over TLS.
    pub tls: bool,
    pub listeners: usize,
    pub connected: usize,
    /// Tries that failed and were made again, and listeners that never got in.
    pub retries: u64,
    pub failed: usize,
    pub first_error: Option<String>,
    /// From the first connect to the last listener in.
    pub ramp_up: Duration,
    /// Per listener, its last try: TCP connect to the response head (the upgrade answered).
    pub connect_p50_ms: f64,
    pub connect_p99_ms: f64,
    pub connect_max_ms: f64,
    pub measured: Duration,
    /// Frames (20 ms Opus packets) delivered to all listeners in the measured window.
    pub frames: u64,
    /// Frames missing from the listeners' sequences in the window.
    pub lost: u64,
    /// Bytes of those frames (Ogg page or WebSocket message, headers included).
    pub bytes: u64,
    /// Bytes read from the sockets in the window: the frames, plus TLS records' overhead.
    pub wire_bytes: u64,
    /// Reads that returned bytes in the window: about one per write of the server while the
    /// client keeps up, so frames per read above 1 says the server gathers frames.
    pub reads: u64,
    /// Listeners whose connection ended before the end.
    pub dropped: u64,
    /// CPU seconds of the server in the window, its CPU share before any listener (sources
    /// only), its resident memory before the first listener and at the end (KiB).
    pub server_cpu: Option<f64>,
    pub idle_cpu_share: Option<f64>,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    /// Share of the window the server's threads were runnable but waiting for a CPU held by
    /// another process (`/proc/PID/task/*/schedstat`): other load on the machine.
    pub server_wait_share: Option<f64>,
    /// This client's CPU share of its core in the window: near 1, the client may be what
    /// limits delivery.
    pub client_cpu_share: f64,
}

impl Report {
    /// Server CPU seconds per million frames delivered.
    pub fn cpu_per_million(&self) -> Option<f64> {
        self.server_cpu
            .filter(|_| self.frames > 0)
            .map(|cpu| cpu / (self.frames as f64 / 1e6))
    }

    /// Growth of the server's resident memory per connected listener, in KiB.
    pub fn rss_per_listener_kib(&self) -> Option<f64> {
        let (before, after) = self.rss_before_kib.zip(self.rss_after_kib)?;
        (self.connected > 0).then(|| (after as f64 - before as f64) / self.connected as f64)
    }

    /// The frames the listeners should have had in the window: one per listener per 20 ms.
    pub fn expected(&self) -> u64 {
        (self.connected as f64 * self.measured.as_secs_f64() / 0.020) as u64
    }

    /// One line of `key=value` figures for scripts (`scripts/fanout.sh` reads it).
    pub fn result_line(&self) -> String {
        let opt = |v: Option<f64>| v.map_or_else(|| "na".to_owned(), |v| format!("{v:.3}"));
        format!(
            "result server={} listeners={} connected={} seconds={:.2} frames={} expected={} \
             lost={} dropped={} bytes_per_frame={:.1} frames_per_read={:.3} cpu_s={} cpu_s_per_million={} \
             idle_cpu_share={} rss_kib_per_listener={} server_wait_share={} client_cpu_share={:.3} \
             tls={} wire_bytes_per_frame={:.1}",
            self.server,
            self.listeners,
            self.connected,
            self.measured.as_secs_f64(),
            self.frames,
            self.expected(),
            self.lost,
            self.dropped,
            self.bytes as f64 / self.frames.max(1) as f64,
            self.frames as f64 / self.reads.max(1) as f64,
            opt(self.server_cpu),
            opt(self.cpu_per_million()),
            opt(self.idle_cpu_share),
            opt(self.rss_per_listener_kib()),
            opt(self.server_wait_share),
            self.client_cpu_share,
            u8::from(self.tls),
            self.wire_bytes as f64 / self.frames.max(1) as f64,
        )
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.measured.as_secs_f64();
        writeln!(
            f,
            "{}{}: {} of {} listeners connected ({} failed, {} retries), {:.1} s ramp-up, {secs:.1} s measured",
            self.server, if self.tls { " over TLS" } else { "" }, self.connected, self.listeners,
            self.failed, self.retries, self.ramp_up.as_secs_f64()
        )?;
        if let Some(e) = &self.first_error {
            writeln!(f, "  first connect error: {e}")?;
        }
        writeln!(
            f,
            "  connect p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.connect_p50_ms, self.connect_p99_ms, self.connect_max_ms
        )?;
        writeln!(
            f,
            "  frames delivered {} of {} expected, lost {}, {:.1} bytes each ({:.1} read), \
             {:.3} per read; listeners dropped {}",
            self.frames,
            self.expected(),
            self.lost,
            self.bytes as f64 / self.frames.max(1) as f64,
            self.wire_bytes as f64 / self.frames.max(1) as f64,
            self.frames as f64 / self.reads.max(1) as f64,
            self.dropped
        )?;
        if let (Some(cpu), Some(per)) = (self.server_cpu, self.cpu_per_million()) {
            writeln!(
                f,
                "  server: {cpu:.2} CPU s ({:.0} % of a core; {:.1} % before listeners; waited for \
                 a CPU {:.1} % of the time), {per:.2} CPU s per million frames delivered",
                100.0 * cpu / secs.max(1e-9),
                100.0 * self.idle_cpu_share.unwrap_or(0.0),
                100.0 * self.server_wait_share.unwrap_or(0.0)
            )?;
        }
        if let (Some(before), Some(after), Some(per)) = (
            self.rss_before_kib,
            self.rss_after_kib,
            self.rss_per_listener_kib(),
        ) {
            writeln!(
                f,
                "  server resident memory {:.1} -> {:.1} MiB, {per:.2} KiB per listener",
                before as f64 / 1024.0,
                after as f64 / 1024.0
            )?;
        }
        writeln!(
            f,
            "  client: {:.0} % of its core",
            100.0 * self.client_cpu_share
        )?;
        writeln!(f, "{}", self.result_line())
    }
}

/// Runs the load. Call inside a `LocalSet` on a current-thread runtime (the booths'
/// tasks); the listeners are read on a thread of their own.
pub async fn run(opts: Options) -> Result<Report, Error> {
    let (target, tls) = check(&opts)?;
    let tls = match tls {
        true => Some(crate::tls::client_config(opts.ca.as_deref())?),
        false => None,
    };
    if opts.server == Server::Boothcast {
        let bench = super::Options {
            addr: target.to_string(),
            channels: opts.channels,
            listeners: 0,
            seconds: opts.seconds,
            frame_bytes: opts.frame_bytes,
            frame_ms: 20,
            secret: opts.secret.clone(),
            relay_pid: None,
            idle_steps: Vec::new(),
            probe_every: 1,
            relaxed: false,
            booth_addr: None,
        };
        for c in 0..opts.channels {
            let booth = match &tls {
                None => super::booth(&bench, c).await?,
                Some(config) => booth_tls(target, &opts.secret, c, config.clone()).await?,
            };
            tokio::task::spawn_local(super::pump(
                booth,
                c,
                Duration::from_millis(20),
                opts.frame_bytes,
            ));
        }
    }
    let proc = |pid: u32| proc_stat(pid).ok_or(Error::Proc(pid));
    let (idle_cpu_share, rss_before_kib) = match opts.server_pid {
        Some(pid) => {
            let before = proc(pid)?;
            tokio::time::sleep(IDLE_SAMPLE).await;
            let after = proc(pid)?;
            let share = (after.cpu_seconds - before.cpu_seconds) / IDLE_SAMPLE.as_secs_f64();
            (Some(share), Some(after.rss_kib))
        }
        None => (None, None),
    };

    let phase = Arc::new(AtomicU8::new(phase::WARMING));
    // Bounded by the listener count: every listener is sent once.
    let (to_reader, incoming) = mpsc::sync_channel(opts.listeners);
    let ogg = opts.server.ogg();
    let reader = std::thread::Builder::new()
        .name("fanout-reader".into())
        .spawn({
            let phase = phase.clone();
            move || read_all(ogg, incoming, &phase)
        })
        .map_err(|e| Error::Reader(e.to_string()))?;

    let ramp = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(CONNECT_CONCURRENCY));
    let connector = tls.map(tokio_rustls::TlsConnector::from);
    let tasks: Vec<_> = (0..opts.listeners)
        .map(|i| {
            let gate = gate.clone();
            let to_reader = to_reader.clone();
            let channel = i % opts.channels;
            let server = opts.server;
            let connector = connector.clone();
            tokio::task::spawn_local(async move {
                let _permit = gate.acquire().await.expect("the gate is never closed");
                let mut retries = 0;
                let mut last_error = String::new();
                for attempt in 0..ATTEMPTS {
                    if attempt > 0 {
                        retries += 1;
                        tokio::time::sleep(RETRY_AFTER * (1 << (attempt - 1))).await;
                    }
                    let t0 = Instant::now();
                    let open = tokio::time::timeout(
                        ATTEMPT_TIMEOUT,
                        open(server, target, i, channel, connector.as_ref()),
                    );
                    match open.await {
                        Ok(Ok((stream, rest, tls))) => {
                            let took = t0.elapsed();
                            let socket = stream.into_std().map_err(|e| e.to_string());
                            let socket = socket.and_then(|s| {
                                s.set_nonblocking(true)
                                    .map(|_| s)
                                    .map_err(|e| e.to_string())
                            });
                            return match socket {
                                Ok(socket) => match to_reader.send(Joined { socket, rest, tls }) {
                                    Ok(()) => Ok((took, retries)),
                                    Err(_) => Err(("the reader is gone".to_owned(), retries)),
                                },
                                Err(e) => Err((e, retries)),
                            };
                        }
                        Ok(Err(e)) => last_error = e,
                        Err(_) => last_error = format!("no answer within {ATTEMPT_TIMEOUT:?}"),
                    }
                }
                Err((last_error, retries))
            })
        })
        .collect();
    drop(to_reader);
    let mut connect = Histogram::default();
    let (mut retries, mut failed, mut first_error) = (0, 0, None);
    for task in tasks {
        match task.await {
            Ok(Ok((took, r))) => {
                connect.record(took.as_micros() as u64);
                retries += r;
            }
            Ok(Err((e, r))) => {
                retries += r;
                failed += 1;
                first_error.get_or_insert(e);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let ramp_up = ramp.elapsed();
    let connected = opts.listeners - failed;
    if connected == 0 {
        phase.store(phase::STOPPED, Ordering::Relaxed);
        let _ = reader.join();
        return Err(Error::NoneConnected {
            attempts: opts.listeners,
            first_error: first_error.unwrap_or_default(),
        });
    }

    tokio::time::sleep(opts.warm_up).await;
    let server_before = opts.server_pid.map(proc).transpose()?;
    let wait_before = opts.server_pid.and_then(super::soak::run_queue_wait);
    let client_before = proc(std::process::id())?;
    let start = Instant::now();
    phase.store(phase::MEASURING, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(opts.seconds)).await;
    phase.store(phase::DRAINING, Ordering::Relaxed);
    let measured = start.elapsed();
    let server_after = opts.server_pid.map(proc).transpose()?;
    let wait_after = opts.server_pid.and_then(super::soak::run_queue_wait);
    let client_after = proc(std::process::id())?;
    phase.store(phase::STOPPED, Ordering::Relaxed);
    let tally = reader
        .join()
        .map_err(|_| Error::Reader("it panicked".into()))?
        .map_err(|e| Error::Reader(e.to_string()))?;

    Ok(Report {
        server: opts.server,
        tls: connector.is_some(),
        listeners: opts.listeners,
        connected,
        retries,
        failed,
        first_error,
        ramp_up,
        connect_p50_ms: connect.quantile(0.5) as f64 / 1000.0,
        connect_p99_ms: connect.quantile(0.99) as f64 / 1000.0,
        connect_max_ms: connect.max() as f64 / 1000.0,
        measured,
        frames: tally.frames,
        lost: tally.lost,
        bytes: tally.bytes,
        wire_bytes: tally.wire,
        reads: tally.reads,
        dropped: tally.dropped,
        server_cpu: server_before
            .zip(server_after)
            .map(|(b, a)| a.cpu_seconds - b.cpu_seconds),
        idle_cpu_share,
        rss_before_kib,
        rss_after_kib: server_after.map(|a| a.rss_kib),
        server_wait_share: wait_before
            .zip(wait_after)
            .map(|(b, a)| (a - b) / measured.as_secs_f64()),
        client_cpu_share: (client_after.cpu_seconds - client_before.cpu_seconds)
            / measured.as_secs_f64(),
    })
}

/// Checks the options and the descriptor limit; returns the server's address and whether the
/// listeners speak TLS (`https://`).
fn check(opts: &Options) -> Result<(SocketAddr, bool), Error> {
    let bad = |s: &str| Error::Options(s.to_owned());
    if opts.listeners == 0 || opts.listeners > MAX_LISTENERS {
        return Err(bad("listeners must be 1..=65000"));
    }
    // config/bench.toml has ten channels; the other servers take as many.
    if !(1..=10).contains(&opts.channels) {
        return Err(bad("channels must be 1..=10 (config/bench.toml has ten)"));
    }
    if !(opts.seconds.is_finite() && opts.seconds > 0.0) {
        return Err(bad("seconds must be a positive number"));
    }
    let (tls, rest) = match opts.url.strip_prefix("https://") {
        Some(rest) => (true, Some(rest)),
        None => (false, opts.url.strip_prefix("http://")),
    };
    let target: SocketAddr = rest
        .map(|a| a.trim_end_matches('/'))
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| {
            bad("the URL is http://IP:PORT or https://IP:PORT, e.g. http://127.0.0.1:18200")
        })?;
    if !(target.is_ipv4() && target.ip().is_loopback()) {
        // Listeners come from 127.2.x.y, which reach only a server on IPv4 loopback.
        return Err(bad("the server must be on IPv4 loopback (127.x.y.z)"));
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        let needed = opts.listeners as u64 + opts.channels as u64 + SPARE_FDS;
        if lim.rlim_cur < needed {
            return Err(Error::FileLimit {
                limit: lim.rlim_cur,
                needed,
            });
        }
    }
    Ok((target, tls))
}

/// The address listener `index` connects from, as [`super::handshake`] picks it.
fn source(index: usize) -> Ipv4Addr {
    let n = index as u32 + 1;
    Ipv4Addr::new(127, 2, (n >> 8) as u8, (n & 0xff) as u8)
}

/// A listener's stream once its request is answered: the socket, the plaintext read past the
/// response head, and the TLS session if it speaks TLS.
type Opened = (TcpStream, Vec<u8>, Option<Box<rustls::ClientConnection>>);

/// Opens listener `index` of `channel`, over TLS if a connector is given.
async fn open(
    server: Server,
    target: SocketAddr,
    index: usize,
    channel: usize,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> Result<Opened, String> {
    let Some(connector) = tls else {
        let (s, rest) = if server.ogg() {
            let mut s = ws::connect_from(source(index), target)
                .await
                .map_err(|e| e.to_string())?;
            let rest = request(&mut s, server, target, channel).await?;
            (s, rest)
        } else {
            super::handshake(
                &target.to_string(),
                &format!("bench/l{channel}"),
                false,
                index,
            )
            .await?
        };
        return Ok((s, rest, None));
    };
    let s = ws::connect_from(source(index), target)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::IpAddress(target.ip().into());
    let mut s = connector
        .connect(name, s)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let rest = request(&mut s, server, target, channel).await?;
    let (s, session) = s.into_inner();
    Ok((s, rest, Some(Box::new(session))))
}

/// Sends the request of a listener of `channel` (an HTTP `GET` of the Ogg mount, or the
/// WebSocket upgrade and, once it is answered, a listener's `hello`) and reads the response
/// head; returns the bytes read past it.
async fn request<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    server: Server,
    target: SocketAddr,
    channel: usize,
) -> Result<Vec<u8>, String> {
    let (request, status) = if server.ogg() {
        // No Icy-MetaData header: the body is the bare Ogg stream.
        let request = format!(
            "GET /l{channel}.opus HTTP/1.0\r\nHost: {target}\r\nUser-Agent: boothcast-bench\r\n\r\n"
        );
        (request, &b"200"[..])
    } else {
        // As `ws::upgrade`, on any stream.
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {target}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        (request, &b"101"[..])
    };
    s.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    s.flush().await.map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let end = loop {
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before the response head".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 8192 {
            return Err("response head too long".into());
        }
    };
    let line = buf.split(|b| *b == b'\r').next().unwrap_or_default();
    let ok = line.starts_with(b"HTTP/") && line.split(|b| *b == b' ').nth(1) == Some(status);
    if !ok {
        return Err(format!("answered {}", String::from_utf8_lossy(line)));
    }
    if !server.ogg() {
        let hello = serde_json::json!({"type": "hello", "role": "listener", "channel": format!("bench/l{channel}"), "delivery": "live"});
        s.write_all(&ws::masked(ws::opcode::TEXT, hello.to_string().as_bytes()))
            .await
            .map_err(|e| e.to_string())?;
        s.flush().await.map_err(|e| e.to_string())?;
    }
    Ok(buf[end..].to_vec())
}

/// Booth `b{c}` of the relay live on its channel over `wss://`: [`super::booth`], which
/// speaks `ws://` only, with a TLS connector.
async fn booth_tls(
    target: SocketAddr,
    secret: &str,
    c: usize,
    config: Arc<rustls::ClientConfig>,
) -> Result<super::Ws, super::Error> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let url = format!("wss://{target}/ws");
    let (mut ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        &url,
        None,
        true,
        Some(tokio_tungstenite::Connector::Rustls(config)),
    )
    .await
    .map_err(|e| super::Error::Connect(url.clone(), e.to_string()))?;
    let hello = serde_json::json!({"type": "hello", "role": "interpreter", "booth": format!("b{c}"), "secret": secret, "client": "boothcast bench"});
    let live = serde_json::json!({"type": "live"});
    for m in [hello, live] {
        ws.send(Message::Text(m.to_string().into()))
            .await
            .map_err(|e| super::Error::Booth(e.to_string()))?;
    }
    // Until the relay says the console is live (or refuses).
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .map_err(|_| super::Error::Booth(format!("booth b{c}: no answer")))?;
        let Some(Ok(Message::Text(t))) = msg else {
            return Err(super::Error::Booth(format!(
                "booth b{c}: connection closed"
            )));
        };
        let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
        if v["type"] == "error" {
            return Err(super::Error::Booth(format!("booth b{c}: {}", v["message"])));
        }
        if v["type"] == "console" && v["live"].is_string() {
            return Ok(ws);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_counts_out_of_range_are_refused() {
        let opts = Options {
            server: Server::Floor,
            url: "http://127.0.0.1:18200".into(),
            channels: 1,
            listeners: 10,
            seconds: 1.0,
            warm_up: Duration::ZERO,
            server_pid: None,
            secret: String::new(),
            frame_bytes: 80,
            ca: None,
        };
        assert!(matches!(check(&opts), Ok((_, false))));
        let https = Options {
            url: "https://127.0.0.1:18200/".into(),
            ..opts.clone()
        };
        assert!(matches!(check(&https), Ok((_, true))));
        for bad in [
            Options {
                url: "http://10.0.0.1:80".into(),
                ..opts.clone()
            },
            Options {
                url: "ws://127.0.0.1:80".into(),
                ..opts.clone()
            },
            Options {
                channels: 11,
                ..opts.clone()
            },
            Options {
                listeners: 0,
                ..opts.clone()
            },
        ] {
            assert!(matches!(check(&bad), Err(Error::Options(_))), "{bad:?}");
        }
        assert_eq!("icecast".parse::<Server>(), Ok(Server::Icecast));
        assert!("nginx".parse::<Server>().is_err());
    }

    /// The floor and this client, for real, on loopback: every listener gets in, frames of
    /// one 108-byte page each arrive, none is missing.
    #[tokio::test]
    async fn floor_delivers_to_every_listener_without_a_gap() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let floor = std::thread::spawn({
            let stop = stop.clone();
            move || super::super::floor::run(listener, &Default::default(), &stop)
        });
        let opts = Options {
            server: Server::Floor,
            url: format!("http://{addr}"),
            channels: 2,
            listeners: 20,
            seconds: 0.5,
            warm_up: Duration::from_millis(100),
            server_pid: None,
            secret: String::new(),
            frame_bytes: 80,
            ca: None,
        };
        let report = tokio::task::LocalSet::new().run_until(run(opts)).await;
        stop.store(true, Ordering::Relaxed);
        let counters = floor.join().unwrap().unwrap();
        let report = report.unwrap();
        assert_eq!((report.connected, report.failed), (20, 0));
        assert!(report.frames > 0, "{report}");
        assert_eq!(report.bytes, report.frames * 108, "{report}");
        assert_eq!((report.lost, report.dropped), (0, 0), "{report}");
        assert_eq!(counters.accepted, 20);
        assert_eq!(counters.skipped, 0);
        assert!(report
            .result_line()
            .starts_with("result server=floor listeners=20 connected=20"));
    }

    /// A self-signed certificate for 127.0.0.1 made with openssl: the directory, the
    /// certificate and the key.
    fn self_signed() -> (PathBuf, PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "boothcast-fanout-tls-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let status = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs (package openssl)");
        assert!(status.success());
        (dir, cert, key)
    }

    type FloorThread =
        std::thread::JoinHandle<Result<super::super::floor::Counters, super::super::floor::Error>>;

    /// The floor serving TLS with a self-signed certificate on a loopback port of its own:
    /// the certificate's directory, the certificate, the address, the stop flag, the thread.
    fn tls_floor() -> (
        PathBuf,
        PathBuf,
        std::net::SocketAddr,
        Arc<std::sync::atomic::AtomicBool>,
        FloorThread,
    ) {
        let (dir, cert, key) = self_signed();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let floor_opts = super::super::floor::Options {
            tls: Some(crate::tls::load(&cert, &key).unwrap()),
            ..Default::default()
        };
        let floor = std::thread::spawn({
            let stop = stop.clone();
            move || super::super::floor::run(listener, &floor_opts, &stop)
        });
        (dir, cert, addr, stop, floor)
    }

    /// The floor over TLS and this client over TLS: every listener gets in through a real
    /// handshake, every page arrives decrypted (108 bytes) in its own record (22 bytes more on
    /// the wire: a TLS 1.3 record's header, content type and tag), none is missing.
    #[tokio::test]
    async fn floor_over_tls_delivers_every_page_in_its_own_record() {
        let (dir, cert, addr, stop, floor) = tls_floor();
        let opts = Options {
            server: Server::Floor,
            url: format!("https://{addr}"),
            channels: 1,
            listeners: 10,
            seconds: 0.5,
            warm_up: Duration::from_millis(100),
            server_pid: None,
            secret: String::new(),
            frame_bytes: 80,
            ca: Some(cert.clone()),
        };
        let report = tokio::task::LocalSet::new().run_until(run(opts)).await;
        stop.store(true, Ordering::Relaxed);
        let counters = floor.join().unwrap().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let report = report.unwrap();
        assert!(report.tls);
        assert_eq!((report.connected, report.failed), (10, 0), "{report}");
        assert!(report.frames > 0, "{report}");
        assert_eq!(report.bytes, report.frames * 108, "{report}");
        let wire = report.wire_bytes as f64 / report.frames as f64;
        assert!((wire - 130.0).abs() < 1.0, "{report}");
        assert_eq!((report.lost, report.dropped), (0, 0), "{report}");
        assert_eq!((counters.accepted, counters.skipped), (10, 0));
        assert!(report.result_line().contains(" tls=1 "));
    }

    /// A client that trusts only the system's authorities refuses the self-signed
    /// certificate: no listener gets in, and the error says why.
    #[tokio::test]
    async fn an_untrusted_certificate_is_refused() {
        let (dir, _cert, addr, stop, floor) = tls_floor();
        let opts = Options {
            server: Server::Floor,
            url: format!("https://{addr}"),
            channels: 1,
            listeners: 1,
            seconds: 0.1,
            warm_up: Duration::ZERO,
            server_pid: None,
            secret: String::new(),
            frame_bytes: 80,
            ca: None,
        };
        let report = tokio::task::LocalSet::new().run_until(run(opts)).await;
        stop.store(true, Ordering::Relaxed);
        let counters = floor.join().unwrap().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        match report {
            Err(Error::NoneConnected { first_error, .. }) => {
                assert!(first_error.contains("TLS handshake"), "{first_error}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(counters.accepted, 0);
    }
}
