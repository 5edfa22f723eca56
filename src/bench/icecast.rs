//! Load client for the Icecast2 half of the relay benchmark.
//!
//! Opens many plain HTTP listeners on Icecast mounts carrying Ogg Opus, parses the Ogg pages as
//! they arrive and measures how much later than its own best case each page is delivered, how
//! many pages go missing, and what the server spends in CPU and memory per listener.
//!
//! Everything runs on the caller's (current-thread) runtime: listener state lives in `Rc`s on a
//! `LocalSet`, so one core can drive ten thousand connections without any locking.

use super::Histogram;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::LocalSet;

/// Connect attempts in flight at once: enough to ramp up quickly, few enough that the server's
/// accept queue is not what the connect times end up measuring.
const CONNECT_CONCURRENCY: usize = 500;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Time between the last listener connecting and the start of the measurement, so the ramp-up
/// (and each listener's first, possibly queued, pages) stays out of the figures.
const WARM_UP: Duration = Duration::from_secs(2);
/// Server CPU is sampled this long with the sources running but no listener connected, so the
/// cost of the listeners can be told apart from the cost of ingesting the channels.
const IDLE_SAMPLE: Duration = Duration::from_secs(2);
const READ_BUF: usize = 8 * 1024;
/// Ogg Opus granule positions always count 48 kHz samples, whatever the input rate was.
const GRANULE_RATE: i64 = 48_000;
const OGG_HEADER: usize = 27;
/// File descriptors kept free for everything that is not a listener socket.
const SPARE_FDS: u64 = 64;

pub struct Options {
    /// Server base URL, e.g. `http://127.0.0.1:18000`; must resolve to a loopback address.
    pub url: String,
    /// Mounts `/l0.opus` .. `/l{mounts-1}.opus`; listeners are spread over them round-robin.
    pub mounts: usize,
    pub listeners: usize,
    /// Length of the measured window, after ramp-up and warm-up.
    pub seconds: f64,
    /// Server process to sample CPU time and RSS from.
    pub server_pid: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid url {url:?}: {reason}")]
    Url { url: String, reason: &'static str },
    #[error("invalid options: {0}")]
    Options(&'static str),
    #[error("resolving {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("{host} resolves to no loopback address: only loopback targets may be loaded")]
    NotLoopback { host: String },
    #[error("open file limit is {limit}, {needed} needed for this many listeners")]
    FileLimit { limit: u64, needed: u64 },
    #[error("no listener could connect ({attempts} attempts, first error: {first_error})")]
    NoneConnected {
        attempts: usize,
        first_error: String,
    },
    #[error("cannot read the CPU time and memory of process {pid} from /proc")]
    Proc { pid: u32 },
    #[error("listener task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

#[derive(Debug, Clone)]
pub struct Report {
    pub url: String,
    pub mounts: usize,
    pub listeners_requested: usize,
    pub listeners_connected: usize,
    pub connect_failures: usize,
    pub first_connect_error: Option<String>,
    /// Wall time from the first connect attempt until every attempt had finished.
    pub ramp_up: Duration,
    /// Per listener: TCP connect, request, and the response head received.
    pub connect_p50: Duration,
    pub connect_p99: Duration,
    pub connect_max: Duration,
    /// Actual length of the measured window.
    pub measured: Duration,
    /// Audio pages received by all listeners inside the measured window.
    pub pages_received: u64,
    /// Pages missing from the listeners' page sequences inside the measured window.
    pub pages_lost: u64,
    /// Listeners whose connection ended before the measurement did.
    pub listeners_dropped: usize,
    /// Delivery delay of each page beyond the best case seen by the same listener.
    pub lateness_p50_ms: f64,
    pub lateness_p99_ms: f64,
    pub lateness_p999_ms: f64,
    pub lateness_max_ms: f64,
    pub server: Option<ServerUsage>,
    /// CPU share of one core used by this load client over the measured window; near 1.0 means
    /// the client, not the server, may be what limits delivery.
    pub client_cpu_fraction: f64,
}

#[derive(Debug, Clone)]
pub struct ServerUsage {
    pub pid: u32,
    /// User plus system CPU time over the measured window.
    pub cpu_seconds: f64,
    pub cpu_seconds_per_million_pages: Option<f64>,
    pub cpu_ms_per_listener_second: f64,
    /// CPU share of one core before any listener connected (sources only).
    pub idle_cpu_fraction: f64,
    /// Resident set at the end of the measured window.
    pub rss_mib: f64,
    /// Resident set before the first listener connected.
    pub rss_baseline_mib: f64,
    /// Growth of the resident set over the baseline, per connected listener.
    pub rss_kib_per_listener: f64,
}

pub async fn run(opts: Options) -> Result<Report, Error> {
    if opts.mounts == 0 {
        return Err(Error::Options("--mounts must be at least 1"));
    }
    if opts.listeners == 0 {
        return Err(Error::Options("--listeners must be at least 1"));
    }
    if !(opts.seconds.is_finite() && opts.seconds > 0.0) {
        return Err(Error::Options("--seconds must be a positive number"));
    }
    let target = Rc::new(Target::resolve(&opts.url).await?);
    ensure_file_limit(opts.listeners as u64 + SPARE_FDS)?;
    LocalSet::new().run_until(drive(opts, target)).await
}

struct Target {
    addr: SocketAddr,
    /// The `host[:port]` part of the URL, sent as the Host header.
    authority: String,
}

impl Target {
    async fn resolve(url: &str) -> Result<Self, Error> {
        let bad = |reason| Error::Url {
            url: url.to_owned(),
            reason,
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// URLs are supported"))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if !path.is_empty() {
            return Err(bad("the URL must not have a path; mounts are /lN.opus"));
        }
        if authority.is_empty() {
            return Err(bad("missing host"));
        }
        let has_port = match authority.rfind(']') {
            Some(bracket) => authority[bracket..].contains(':'),
            None => authority.contains(':'),
        };
        let host_port = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let addrs = tokio::net::lookup_host(&host_port)
            .await
            .map_err(|source| Error::Resolve {
                host: host_port.clone(),
                source,
            })?;
        // Only loopback may be loaded, so an address elsewhere is never a fallback.
        let addr = addrs.into_iter().find(|a| a.ip().is_loopback());
        let addr = addr.ok_or(Error::NotLoopback { host: host_port })?;
        Ok(Target {
            addr,
            authority: authority.to_owned(),
        })
    }
}

fn ensure_file_limit(needed: u64) -> Result<(), Error> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Ok(());
    }
    let current = lim.rlim_cur;
    if current >= needed {
        return Ok(());
    }
    // The soft limit may be raised up to the hard one without privileges.
    if lim.rlim_max >= needed {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(());
        }
    }
    Err(Error::FileLimit {
        limit: current,
        needed,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Ramp-up and warm-up: pages are parsed (keeping sequence tracking current) but not counted.
    Warming,
    Measuring,
    Done,
}

struct Shared {
    phase: Cell<Phase>,
    stop: Notify,
    /// Reference point for all arrival times, so they fit in plain integers.
    epoch: Instant,
    lateness: Rc<RefCell<Histogram>>,
}

/// What a listener task hands back when it ends.
#[derive(Default)]
struct ListenerResult {
    connected: bool,
    dropped: bool,
    pages: u64,
    lost: u64,
}

async fn drive(opts: Options, target: Rc<Target>) -> Result<Report, Error> {
    let lateness = Rc::new(RefCell::new(Histogram::default()));
    let shared = Rc::new(Shared {
        phase: Cell::new(Phase::Warming),
        stop: Notify::new(),
        epoch: Instant::now(),
        lateness: lateness.clone(),
    });
    let idle_cpu = match opts.server_pid {
        Some(pid) => {
            let c0 = cpu_seconds(pid)?;
            let t0 = Instant::now();
            tokio::time::sleep(IDLE_SAMPLE).await;
            Some((cpu_seconds(pid)? - c0).max(0.0) / t0.elapsed().as_secs_f64())
        }
        None => None,
    };
    let rss_baseline = opts.server_pid.map(rss_kib).transpose()?;

    let gate = Rc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let (outcomes_tx, mut outcomes) = mpsc::unbounded_channel();
    let ramp_start = Instant::now();
    let tasks: Vec<_> = (0..opts.listeners)
        .map(|i| {
            let mount = format!("/l{}.opus", i % opts.mounts);
            tokio::task::spawn_local(listener(
                mount,
                target.clone(),
                shared.clone(),
                gate.clone(),
                outcomes_tx.clone(),
            ))
        })
        .collect();
    drop(outcomes_tx);

    let mut connect_times = Vec::with_capacity(opts.listeners);
    let mut connect_failures = 0;
    let mut first_connect_error = None;
    while let Some(outcome) = outcomes.recv().await {
        match outcome {
            Ok(took) => connect_times.push(took),
            Err(err) => {
                connect_failures += 1;
                first_connect_error.get_or_insert(err);
            }
        }
        if connect_times.len() + connect_failures == opts.listeners {
            break;
        }
    }
    let ramp_up = ramp_start.elapsed();
    if connect_times.is_empty() {
        shared.phase.set(Phase::Done);
        shared.stop.notify_waiters();
        for task in tasks {
            task.await?;
        }
        return Err(Error::NoneConnected {
            attempts: opts.listeners,
            first_error: first_connect_error.unwrap_or_default(),
        });
    }

    tokio::time::sleep(WARM_UP).await;
    let cpu_start = opts.server_pid.map(cpu_seconds).transpose()?;
    let client_cpu_start = cpu_seconds(std::process::id())?;
    let measure_start = Instant::now();
    shared.phase.set(Phase::Measuring);
    tokio::time::sleep(Duration::from_secs_f64(opts.seconds)).await;
    shared.phase.set(Phase::Done);
    let measured = measure_start.elapsed();
    let cpu_end = opts.server_pid.map(cpu_seconds).transpose()?;
    let client_cpu = cpu_seconds(std::process::id())? - client_cpu_start;
    // Sampled before any listener disconnects, while the server still holds all of them.
    let rss_end = opts.server_pid.map(rss_kib).transpose()?;
    shared.stop.notify_waiters();

    let mut pages_received = 0;
    let mut pages_lost = 0;
    let mut listeners_dropped = 0;
    for task in tasks {
        let result = task.await?;
        pages_received += result.pages;
        pages_lost += result.lost;
        listeners_dropped += usize::from(result.connected && result.dropped);
    }

    connect_times.sort_unstable();
    let connected = connect_times.len();
    let server = match (
        opts.server_pid,
        idle_cpu,
        cpu_start,
        cpu_end,
        rss_baseline,
        rss_end,
    ) {
        (Some(pid), Some(idle), Some(c0), Some(c1), Some(r0), Some(r1)) => {
            let cpu = (c1 - c0).max(0.0);
            Some(ServerUsage {
                pid,
                cpu_seconds: cpu,
                cpu_seconds_per_million_pages: (pages_received > 0)
                    .then(|| cpu / (pages_received as f64 / 1e6)),
                cpu_ms_per_listener_second: cpu * 1e3 / connected as f64 / measured.as_secs_f64(),
                idle_cpu_fraction: idle,
                rss_mib: r1 as f64 / 1024.0,
                rss_baseline_mib: r0 as f64 / 1024.0,
                rss_kib_per_listener: (r1 as f64 - r0 as f64) / connected as f64,
            })
        }
        _ => None,
    };
    let lateness = lateness.borrow();
    let ms = |q: f64| lateness.quantile(q) as f64 / 1e3;
    Ok(Report {
        url: opts.url,
        mounts: opts.mounts,
        listeners_requested: opts.listeners,
        listeners_connected: connected,
        connect_failures,
        first_connect_error,
        ramp_up,
        connect_p50: nearest_rank(&connect_times, 0.50),
        connect_p99: nearest_rank(&connect_times, 0.99),
        connect_max: connect_times.last().copied().unwrap_or_default(),
        measured,
        pages_received,
        pages_lost,
        listeners_dropped,
        lateness_p50_ms: ms(0.50),
        lateness_p99_ms: ms(0.99),
        lateness_p999_ms: ms(0.999),
        lateness_max_ms: lateness.max as f64 / 1e3,
        server,
        client_cpu_fraction: client_cpu.max(0.0) / measured.as_secs_f64(),
    })
}

fn nearest_rank(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

async fn listener(
    mount: String,
    target: Rc<Target>,
    shared: Rc<Shared>,
    gate: Rc<Semaphore>,
    outcomes: mpsc::UnboundedSender<Result<Duration, String>>,
) -> ListenerResult {
    let mut result = ListenerResult::default();
    let opened = {
        let _permit = gate
            .acquire()
            .await
            .expect("the connect gate is never closed");
        let started = Instant::now();
        match tokio::time::timeout(CONNECT_TIMEOUT, open(&target, &mount)).await {
            Ok(Ok(opened)) => Ok((opened, started.elapsed())),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err(format!("no response within {CONNECT_TIMEOUT:?}")),
        }
    };
    let (mut stream, mut reader) = match opened {
        Ok((opened, took)) => {
            let _ = outcomes.send(Ok(took));
            opened
        }
        Err(err) => {
            let _ = outcomes.send(Err(format!("{mount}: {err}")));
            return result;
        }
    };
    drop(outcomes);
    result.connected = true;

    let stop = shared.stop.notified();
    tokio::pin!(stop);
    // Registers with the Notify now, so a stop issued before the first poll is not missed.
    stop.as_mut().enable();
    if shared.phase.get() != Phase::Done {
        tokio::select! {
            _ = &mut stop => {}
            _ = reader.receive(&mut stream, &shared) => result.dropped = true,
        }
    }
    // Closing with RST keeps thousands of sockets per run out of TIME_WAIT, which would
    // otherwise eat into the loopback ephemeral port range across repeated runs.
    let _ = stream.set_zero_linger();
    drop(stream);

    result.pages = reader.pages;
    result.lost = reader.lost;
    reader.flush_lateness(&mut shared.lateness.borrow_mut());
    result
}

/// Connects, sends the request and reads the response head. Returns the stream and a page
/// reader already holding any body bytes that arrived with the head.
async fn open(target: &Target, mount: &str) -> io::Result<(TcpStream, PageReader)> {
    let mut stream = TcpStream::connect(target.addr).await?;
    // No Icy-MetaData header: the body must be the bare Ogg stream.
    let request = format!(
        "GET {mount} HTTP/1.0\r\nHost: {}\r\nUser-Agent: boothcast-bench\r\nAccept: */*\r\n\r\n",
        target.authority
    );
    stream.write_all(request.as_bytes()).await?;

    let mut reader = PageReader::new();
    loop {
        if reader.filled == reader.buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response head larger than the read buffer",
            ));
        }
        let n = stream.read(&mut reader.buf[reader.filled..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the response head",
            ));
        }
        reader.filled += n;
        let Some(end) = find(&reader.buf[..reader.filled], b"\r\n\r\n") else {
            continue;
        };
        let head = &reader.buf[..end];
        let status_line = head.split(|&b| b == b'\r').next().unwrap_or_default();
        let status = String::from_utf8_lossy(status_line).into_owned();
        let mut parts = status.split_whitespace();
        let ok =
            parts.next().is_some_and(|v| v.starts_with("HTTP/")) && parts.next() == Some("200");
        if !ok {
            return Err(io::Error::other(format!("server answered {status:?}")));
        }
        reader.consume(end + 4);
        return Ok((stream, reader));
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Incremental Ogg page parser plus the per-listener measurement state.
struct PageReader {
    buf: Vec<u8>,
    filled: usize,
    serial: Option<u32>,
    last_seq: Option<u32>,
    last_granule: i64,
    /// First live offset seen; the stored offsets are relative to it to fit in an `i32`.
    base_offset_us: Option<i64>,
    /// Live offsets (arrival minus media time) of the measured pages. Kept until the end because
    /// lateness is relative to the listener's minimum offset, which is only known then.
    offsets_us: Vec<i32>,
    min_offset_us: i32,
    pages: u64,
    lost: u64,
}

impl PageReader {
    fn new() -> Self {
        PageReader {
            buf: vec![0; READ_BUF],
            filled: 0,
            serial: None,
            last_seq: None,
            last_granule: 0,
            base_offset_us: None,
            offsets_us: Vec::new(),
            min_offset_us: i32::MAX,
            pages: 0,
            lost: 0,
        }
    }

    fn consume(&mut self, n: usize) {
        self.buf.copy_within(n..self.filled, 0);
        self.filled -= n;
    }

    /// Reads until the connection ends; only returns on EOF or error.
    async fn receive(&mut self, stream: &mut TcpStream, shared: &Shared) -> io::Result<()> {
        // Body bytes that came in with the response head.
        self.parse_pages(shared);
        loop {
            if self.filled == self.buf.len() {
                // A single page larger than the buffer (Ogg allows up to ~64 KiB).
                self.buf.resize(self.buf.len() * 2, 0);
            }
            let n = stream.read(&mut self.buf[self.filled..]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.filled += n;
            self.parse_pages(shared);
        }
    }

    fn parse_pages(&mut self, shared: &Shared) {
        let phase = shared.phase.get();
        let now_us = shared.epoch.elapsed().as_micros() as i64;
        let mut pos = 0;
        while self.filled - pos >= OGG_HEADER {
            let avail = &self.buf[pos..self.filled];
            if &avail[..4] != b"OggS" {
                // Out of step with the page boundaries: skip to the next capture pattern.
                match find(&avail[1..], b"OggS") {
                    Some(skip) => pos += 1 + skip,
                    // Keep a possible partial "OggS" at the end.
                    None => pos = self.filled - 3,
                }
                continue;
            }
            let segments = avail[26] as usize;
            let head_len = OGG_HEADER + segments;
            if avail.len() < head_len {
                break;
            }
            let body_len: usize = avail[OGG_HEADER..head_len]
                .iter()
                .map(|&b| b as usize)
                .sum();
            if avail.len() < head_len + body_len {
                break;
            }
            let granule = i64::from_le_bytes(avail[6..14].try_into().expect("8 bytes"));
            let serial = u32::from_le_bytes(avail[14..18].try_into().expect("4 bytes"));
            let seq = u32::from_le_bytes(avail[18..22].try_into().expect("4 bytes"));
            self.on_page(granule, serial, seq, now_us, phase);
            pos += head_len + body_len;
        }
        self.consume(pos);
    }

    fn on_page(&mut self, granule: i64, serial: u32, seq: u32, now_us: i64, phase: Phase) {
        let measuring = phase == Phase::Measuring;
        if self.serial != Some(serial) {
            // A new logical stream (e.g. the source reconnected): numbering starts over.
            self.serial = Some(serial);
            self.last_seq = None;
            self.last_granule = 0;
        }
        if granule == 0 {
            // OpusHead/OpusTags. The server sends them to every new listener and then jumps to
            // the live page, so the sequence gap that follows is not loss.
            self.last_seq = None;
            return;
        }
        if let Some(last) = self.last_seq {
            let gap = seq.wrapping_sub(last).wrapping_sub(1);
            // A backwards step means renumbering, not billions of lost pages.
            if measuring && gap != 0 && gap < u32::MAX / 2 {
                self.lost += u64::from(gap);
            }
        }
        self.last_seq = Some(seq);
        // -1: no packet ends on this page; an unchanged granule: a continuation page.
        if granule < 0 || granule == self.last_granule {
            return;
        }
        self.last_granule = granule;
        if !measuring {
            return;
        }
        self.pages += 1;
        let media_us = granule.saturating_mul(1_000_000) / GRANULE_RATE;
        let offset = now_us - media_us;
        let base = *self.base_offset_us.get_or_insert(offset);
        let relative = (offset - base).clamp(i32::MIN.into(), i32::MAX.into()) as i32;
        self.min_offset_us = self.min_offset_us.min(relative);
        self.offsets_us.push(relative);
    }

    fn flush_lateness(&mut self, histogram: &mut Histogram) {
        for &offset in &self.offsets_us {
            histogram.record((i64::from(offset) - i64::from(self.min_offset_us)) as u64);
        }
        self.offsets_us = Vec::new();
    }
}

/// CPU time and resident memory of a process, from /proc.
fn proc(pid: u32) -> Result<super::ProcStat, Error> {
    super::proc_stat(pid).ok_or(Error::Proc { pid })
}

/// User plus system CPU time of the whole process (all threads), in seconds.
fn cpu_seconds(pid: u32) -> Result<f64, Error> {
    proc(pid).map(|s| s.cpu_seconds)
}

fn rss_kib(pid: u32) -> Result<u64, Error> {
    proc(pid).map(|s| s.rss_kib)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let secs = self.measured.as_secs_f64();
        writeln!(
            f,
            "icecast: {} listeners on {} mounts at {}, measured {:.1} s",
            self.listeners_requested, self.mounts, self.url, secs
        )?;
        writeln!(
            f,
            "  listeners  connected {}/{}, failed {}, dropped {}",
            self.listeners_connected,
            self.listeners_requested,
            self.connect_failures,
            self.listeners_dropped
        )?;
        if let Some(err) = &self.first_connect_error {
            writeln!(f, "             first connect error: {err}")?;
        }
        writeln!(
            f,
            "  connect    p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (ramp-up {:.2} s)",
            ms(self.connect_p50),
            ms(self.connect_p99),
            ms(self.connect_max),
            self.ramp_up.as_secs_f64()
        )?;
        let per_listener_second = if self.listeners_connected > 0 && secs > 0.0 {
            self.pages_received as f64 / self.listeners_connected as f64 / secs
        } else {
            0.0
        };
        writeln!(
            f,
            "  pages      received {} ({:.1} per listener-second), lost {}",
            self.pages_received, per_listener_second, self.pages_lost
        )?;
        write!(
            f,
            "  lateness   p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
            self.lateness_p50_ms, self.lateness_p99_ms, self.lateness_p999_ms, self.lateness_max_ms
        )?;
        write!(
            f,
            "\n  client cpu {:.1}% of a core",
            self.client_cpu_fraction * 100.0
        )?;
        match &self.server {
            Some(s) => {
                let per_million = s
                    .cpu_seconds_per_million_pages
                    .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.3}"));
                write!(
                    f,
                    "\n  server cpu {:.2} s ({:.1}% of a core), {} s per million pages, \
                     {:.4} ms per listener-second\n             \
                     (before listeners, sources only: {:.1}% of a core)",
                    s.cpu_seconds,
                    if secs > 0.0 {
                        s.cpu_seconds / secs * 100.0
                    } else {
                        0.0
                    },
                    per_million,
                    s.cpu_ms_per_listener_second,
                    s.idle_cpu_fraction * 100.0
                )?;
                write!(
                    f,
                    "\n  server rss {:.1} MiB (baseline {:.1} MiB), {:.2} KiB per listener  [pid {}]",
                    s.rss_mib, s.rss_baseline_mib, s.rss_kib_per_listener, s.pid
                )
            }
            None => write!(
                f,
                "\n  server     no --server-pid given: CPU and memory not sampled"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(granule: i64, serial: u32, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut p = b"OggS\0\0".to_vec();
        p.extend_from_slice(&granule.to_le_bytes());
        p.extend_from_slice(&serial.to_le_bytes());
        p.extend_from_slice(&seq.to_le_bytes());
        p.extend_from_slice(&[0; 4]);
        p.push(1);
        p.push(body.len() as u8);
        p.extend_from_slice(body);
        p
    }

    #[test]
    fn parses_split_pages_and_counts_gaps() {
        let shared = Shared {
            phase: Cell::new(Phase::Measuring),
            stop: Notify::new(),
            epoch: Instant::now(),
            lateness: Rc::new(RefCell::new(Histogram::default())),
        };
        let mut stream = Vec::new();
        stream.extend(page(0, 7, 0, b"OpusHead"));
        stream.extend(page(0, 7, 1, b"OpusTags"));
        stream.extend(page(960, 7, 40, b"a"));
        stream.extend(page(1920, 7, 41, b"b"));
        stream.extend(page(3840, 7, 43, b"d"));
        let mut r = PageReader::new();
        for chunk in stream.chunks(5) {
            r.buf[r.filled..r.filled + chunk.len()].copy_from_slice(chunk);
            r.filled += chunk.len();
            r.parse_pages(&shared);
        }
        assert_eq!(r.filled, 0);
        assert_eq!(r.pages, 3);
        assert_eq!(r.lost, 1);
        r.flush_lateness(&mut shared.lateness.borrow_mut());
        assert_eq!(shared.lateness.borrow().total, 3);
    }
}
