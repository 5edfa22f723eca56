//! The load generator: many listeners and a few booths on loopback, measuring what the relay
//! adds.
//!
//! Booths (`b0`..) go live on their channels and send synthetic frames of realistic size in
//! real time; listeners spread over the channels read every frame and compare the relay's
//! receive time (stamped in each frame's header) with their own clock, shared on loopback.
//! Listeners use a minimal WebSocket reader of their own (a handshake, then frames parsed
//! straight from an 8 KiB buffer) so that one core can drive ten thousand of them.
//!
//! Figures about the relay process (CPU time, resident memory) are read from `/proc`.

pub mod fanout;
pub mod floor;
pub mod icecast;
pub mod soak;
pub mod ws;

use crate::protocol::{FrameHeader, Source, CHANNEL_UNSET};
use crate::relay::unix_micros;
use futures_util::SinkExt;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot reach the relay at {0}: {1}")]
    Connect(String, String),
    #[error("the relay refused a booth: {0}")]
    Booth(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// `host:port` of the relay.
    pub addr: String,
    /// Channels `l0`.. of room `bench` (see `config/bench.toml`), one live booth each.
    pub channels: usize,
    pub listeners: usize,
    /// Measured time, after everyone is connected and a warm-up.
    pub seconds: f64,
    /// Opus payload bytes per frame (80 = 32 kbit/s at 20 ms).
    pub frame_bytes: usize,
    pub frame_ms: u64,
    /// Secret of every bench booth.
    pub secret: String,
    /// The relay's process, for CPU and memory figures.
    pub relay_pid: Option<u32>,
    /// Idle mode: no booths; connect listeners in steps and report the relay's memory at each.
    pub idle_steps: Vec<usize>,
    /// One listener in this many is a probe: it reads every frame as it arrives and measures
    /// its delay. The others read every `BULK_READ` and only check that no frame is missing,
    /// so that the load generator spends one read per several frames, not one per frame.
    pub probe_every: usize,
    /// Listeners ask for the relaxed delivery class (frames written every 200 ms).
    pub relaxed: bool,
    /// `host:port` the booths connect to instead of `addr`: in a cluster, booths on one node
    /// and listeners on another, so that every frame crosses NATS.
    pub booth_addr: Option<String>,
}

/// How often a bulk (non-probe) listener reads what has arrived.
pub const BULK_READ: Duration = Duration::from_millis(100);

/// A log-linear histogram of microseconds: 1 µs resolution below 2 ms, then 1024 buckets per
/// doubling (0.1 % precision), so p99.9 of a million samples costs 16 K counters.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; 2048 + 1024 * 24],
            total: 0,
            max: 0,
        }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        if v < 2048 {
            return v as usize;
        }
        let e = 63 - v.leading_zeros() as usize; // >= 11
        let shift = e - 10;
        (2048 + (shift - 1) * 1024 + ((v >> shift) as usize - 1024)).min(2048 + 1024 * 24 - 1)
    }

    fn value(i: usize) -> u64 {
        if i < 2048 {
            return i as u64;
        }
        let shift = (i - 2048) / 1024 + 1;
        ((1024 + (i - 2048) % 1024) as u64) << shift
    }

    pub fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0..=1), in microseconds.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let target = ((self.total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return Self::value(i).min(self.max);
            }
        }
        self.max
    }

    pub fn max(&self) -> u64 {
        self.max
    }
}

/// CPU time and resident memory of a process, from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStat {
    pub cpu_seconds: f64,
    pub rss_kib: u64,
}

pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    Some(ProcStat {
        cpu_seconds: ticks as f64 / hz,
        rss_kib,
    })
}

/// What every listener adds to, on the one thread of the load generator.
#[derive(Default)]
struct Shared {
    measuring: bool,
    delay: Histogram,
    frames: u64,
    probe_frames: u64,
    lost: u64,
    dropped: u64,
}

/// The result of a run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub listeners: usize,
    pub channels: usize,
    pub seconds: f64,
    pub connect_p50_ms: f64,
    pub connect_p99_ms: f64,
    pub connect_max_ms: f64,
    pub frames: u64,
    pub probe_frames: u64,
    pub expected_frames: u64,
    pub lost: u64,
    pub dropped: u64,
    pub delay_p50_ms: f64,
    pub delay_p99_ms: f64,
    pub delay_p999_ms: f64,
    pub delay_max_ms: f64,
    pub relay_cpu_seconds: Option<f64>,
    pub relay_rss_kib: Option<u64>,
    /// (listeners connected, relay RSS KiB) in idle mode.
    pub idle: Vec<(usize, u64)>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.idle.is_empty() {
            writeln!(f, "idle listeners: relay resident memory")?;
            for (n, kib) in &self.idle {
                writeln!(f, "  {n:>6} listeners: {:.1} MiB", *kib as f64 / 1024.0)?;
            }
            if let (Some(a), Some(b)) = (self.idle.first(), self.idle.last()) {
                if b.0 > a.0 {
                    writeln!(
                        f,
                        "  growth {} -> {}: {:.2} KiB per listener",
                        a.0,
                        b.0,
                        (b.1 as f64 - a.1 as f64) / (b.0 - a.0) as f64
                    )?;
                }
            }
            return Ok(());
        }
        writeln!(
            f,
            "{} listeners over {} channels, {:.0} s measured",
            self.listeners, self.channels, self.seconds
        )?;
        writeln!(
            f,
            "  connect time: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.connect_p50_ms, self.connect_p99_ms, self.connect_max_ms
        )?;
        writeln!(
            f,
            "  frames received {} of {} sent to listeners; lost {} ({:.4} %); listeners dropped {}",
            self.frames,
            self.expected_frames,
            self.lost,
            100.0 * self.lost as f64 / self.expected_frames.max(1) as f64,
            self.dropped
        )?;
        writeln!(
            f,
            "  delay relay -> listener ({} frames to probe listeners): p50 {:.2} ms, p99 {:.2} ms, \
             p99.9 {:.2} ms, max {:.2} ms",
            self.probe_frames, self.delay_p50_ms, self.delay_p99_ms, self.delay_p999_ms, self.delay_max_ms
        )?;
        if let (Some(cpu), Some(rss)) = (self.relay_cpu_seconds, self.relay_rss_kib) {
            let per_million = cpu / (self.frames.max(1) as f64 / 1e6);
            writeln!(
                f,
                "  relay: {:.2} CPU s ({:.0} % of a core), {:.2} CPU s per million frames delivered, \
                 {:.1} MiB resident, {:.1} KiB per listener",
                cpu,
                100.0 * cpu / self.seconds,
                per_million,
                rss as f64 / 1024.0,
                rss as f64 / self.listeners.max(1) as f64
            )?;
        }
        Ok(())
    }
}

/// Runs the load on the current (single-threaded) runtime. Call inside a `LocalSet`.
pub async fn run(opts: Options) -> Result<Report, Error> {
    if !opts.idle_steps.is_empty() {
        return run_idle(opts).await;
    }
    let shared = Rc::new(RefCell::new(Shared::default()));
    // Booths first: every channel live before anyone listens.
    let mut booths = Vec::new();
    for c in 0..opts.channels {
        booths.push(booth(&opts, c).await?);
    }
    let frame = Duration::from_millis(opts.frame_ms);
    for (c, ws) in booths.into_iter().enumerate() {
        let bytes = opts.frame_bytes;
        tokio::task::spawn_local(pump(ws, c, frame, bytes));
    }
    let bulk = Rc::new(RefCell::new(Vec::new()));
    tokio::task::spawn_local(poll_bulk(bulk.clone(), shared.clone()));
    let connect_times = connect_listeners(&opts, &shared, &bulk, None).await?;
    // Warm-up: let connections settle before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = opts.relay_pid.and_then(proc_stat);
    shared.borrow_mut().measuring = true;
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(opts.seconds)).await;
    shared.borrow_mut().measuring = false;
    let elapsed = start.elapsed().as_secs_f64();
    let after = opts.relay_pid.and_then(proc_stat);
    let s = shared.borrow();
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(Report {
        listeners: opts.listeners,
        channels: opts.channels,
        seconds: elapsed,
        connect_p50_ms: ms(connect_times.quantile(0.5)),
        connect_p99_ms: ms(connect_times.quantile(0.99)),
        connect_max_ms: ms(connect_times.max()),
        frames: s.frames,
        probe_frames: s.probe_frames,
        expected_frames: (opts.listeners as f64 * elapsed / frame.as_secs_f64()) as u64,
        lost: s.lost,
        dropped: s.dropped,
        delay_p50_ms: ms(s.delay.quantile(0.5)),
        delay_p99_ms: ms(s.delay.quantile(0.99)),
        delay_p999_ms: ms(s.delay.quantile(0.999)),
        delay_max_ms: ms(s.delay.max()),
        relay_cpu_seconds: before
            .zip(after)
            .map(|(b, a)| a.cpu_seconds - b.cpu_seconds),
        relay_rss_kib: after.map(|a| a.rss_kib),
        idle: Vec::new(),
    })
}

async fn run_idle(opts: Options) -> Result<Report, Error> {
    let shared = Rc::new(RefCell::new(Shared::default()));
    let bulk = Rc::new(RefCell::new(Vec::new()));
    let mut idle = Vec::new();
    let mut connected = 0;
    for &step in &opts.idle_steps {
        let more = step.saturating_sub(connected);
        let step_opts = Options {
            listeners: more,
            ..opts.clone()
        };
        connect_listeners(&step_opts, &shared, &bulk, Some(connected)).await?;
        connected = step;
        // Let the relay finish its side of the handshakes.
        tokio::time::sleep(Duration::from_secs(2)).await;
        if let Some(stat) = opts.relay_pid.and_then(proc_stat) {
            idle.push((connected, stat.rss_kib));
        }
    }
    Ok(Report {
        listeners: connected,
        channels: opts.channels,
        idle,
        ..Default::default()
    })
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn booth(opts: &Options, c: usize) -> Result<Ws, Error> {
    let url = format!("ws://{}/ws", opts.booth_addr.as_ref().unwrap_or(&opts.addr));
    // No Nagle, as the booth client (see `client::open`).
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(&url, None, true)
        .await
        .map_err(|e| Error::Connect(url.clone(), e.to_string()))?;
    let hello = serde_json::json!({"type": "hello", "role": "interpreter", "booth": format!("b{c}"), "secret": opts.secret, "client": "boothcast bench"});
    let live = serde_json::json!({"type": "live"});
    for m in [hello, live] {
        ws.send(tokio_tungstenite::tungstenite::Message::Text(
            m.to_string().into(),
        ))
        .await
        .map_err(|e| Error::Booth(e.to_string()))?;
    }
    // Wait until the relay says the console is live (or refuses).
    use futures_util::StreamExt;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .map_err(|_| Error::Booth(format!("booth b{c}: no answer")))?;
        let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) = msg else {
            return Err(Error::Booth(format!("booth b{c}: connection closed")));
        };
        let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
        if v["type"] == "error" {
            return Err(Error::Booth(format!("booth b{c}: {}", v["message"])));
        }
        if v["type"] == "console" && v["live"].is_string() {
            return Ok(ws);
        }
    }
}

/// Sends one synthetic frame per frame duration, on an absolute schedule.
async fn pump(mut ws: Ws, c: usize, frame: Duration, bytes: usize) {
    let start = tokio::time::Instant::now();
    let mut payload = vec![0x55u8; bytes.max(2)];
    payload[0] = 0xF8; // TOC: a 20 ms fullband frame, code 0
    payload[1] = c as u8;
    let mut k: u32 = 0;
    loop {
        tokio::time::sleep_until(start + frame * (k + 1)).await;
        let header = FrameHeader {
            source: Source::Interpreter,
            channel: CHANNEL_UNSET,
            sequence: k,
            capture_us: unix_micros(),
            relay_us: 0,
            rms: 30,
            peak: 12,
        };
        let msg = tokio_tungstenite::tungstenite::Message::Binary(header.frame(&payload));
        if ws.send(msg).await.is_err() {
            return;
        }
        k += 1;
    }
}

/// Connects `opts.listeners` listeners, at most 256 handshakes at once; returns the connect
/// times (TCP connect to `welcome`... to the upgrade response) in microseconds.
async fn connect_listeners(
    opts: &Options,
    shared: &Rc<RefCell<Shared>>,
    bulk: &Rc<RefCell<Vec<Bulk>>>,
    offset: Option<usize>,
) -> Result<Histogram, Error> {
    let times = Rc::new(RefCell::new(Histogram::default()));
    let permits = Rc::new(tokio::sync::Semaphore::new(256));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    let base = offset.unwrap_or(0);
    for i in 0..opts.listeners {
        let channel = format!("bench/l{}", (base + i) % opts.channels.max(1));
        let addr = opts.addr.clone();
        let shared = shared.clone();
        let times = times.clone();
        let permits = permits.clone();
        let done = done_tx.clone();
        let bulk = bulk.clone();
        let opts_probe_every = opts.probe_every;
        let relaxed = opts.relaxed;
        tokio::task::spawn_local(async move {
            let permit = permits.acquire().await.expect("never closed");
            let t0 = Instant::now();
            match handshake(&addr, &channel, relaxed, base + i).await {
                Ok((stream, buf)) => {
                    times.borrow_mut().record(t0.elapsed().as_micros() as u64);
                    drop(permit);
                    let _ = done.send(Ok(()));
                    let probe =
                        opts_probe_every <= 1 || (base + i).is_multiple_of(opts_probe_every);
                    if probe {
                        listen(stream, buf, shared).await;
                    } else if let Ok(socket) = stream.into_std() {
                        if socket.set_nonblocking(true).is_ok() {
                            bulk.borrow_mut().push(Bulk {
                                socket,
                                buf,
                                last_seq: None,
                                open: true,
                            });
                        }
                    }
                }
                Err(e) => {
                    let _ = done.send(Err(e));
                }
            }
        });
    }
    drop(done_tx);
    let mut failures = 0;
    let mut first_error = None;
    for _ in 0..opts.listeners {
        match done_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                failures += 1;
                first_error.get_or_insert(e);
            }
            None => break,
        }
    }
    if failures > 0 {
        return Err(Error::Connect(
            opts.addr.clone(),
            format!(
                "{failures} listeners could not connect, first: {}",
                first_error.unwrap_or_default()
            ),
        ));
    }
    let h = times.borrow().clone();
    Ok(h)
}

/// Connects to `addr`, upgrades to a WebSocket and says hello as a listener of `channel`;
/// returns the stream and any bytes read past the response head. To a relay on loopback each
/// listener comes from a loopback address of its own (127.2.0.1 onwards), as phones on a venue
/// LAN each have theirs, so that the relay's per-address bounds see what they would in a hall.
async fn handshake(
    addr: &str,
    channel: &str,
    relaxed: bool,
    index: usize,
) -> Result<(TcpStream, Vec<u8>), String> {
    let target = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| format!("{addr} names no address"))?;
    let mut s = if target.ip().is_loopback() && target.is_ipv4() {
        let n = index as u32 + 1;
        let from = std::net::Ipv4Addr::new(127, 2, (n >> 8) as u8, (n & 0xff) as u8);
        ws::connect_from(from, target).await
    } else {
        match TcpStream::connect(target).await {
            Ok(s) => s.set_nodelay(true).map(|_| s),
            Err(e) => Err(e),
        }
    }
    .map_err(|e| e.to_string())?;
    let rest = ws::upgrade(&mut s, target).await?;
    let delivery = if relaxed { "relaxed" } else { "live" };
    let hello = serde_json::json!({"type": "hello", "role": "listener", "channel": channel, "delivery": delivery})
        .to_string();
    s.write_all(&ws::masked(ws::opcode::TEXT, hello.as_bytes()))
        .await
        .map_err(|e| e.to_string())?;
    Ok((s, rest))
}

/// Takes every complete WebSocket frame off the front of `buf`, recording each audio frame's
/// delay (probes only) and any gap in its channel's sequence. Returns false once the server
/// closed the connection.
fn take_frames(
    buf: &mut Vec<u8>,
    last_seq: &mut Option<u32>,
    shared: &RefCell<Shared>,
    probe: bool,
    pings: &mut usize,
) -> bool {
    let mut at = 0;
    let mut open = true;
    loop {
        let (frame, len) = match ws::next_frame(&buf[at..]) {
            Ok(Some(f)) => f,
            Ok(None) => break,
            // Not the relay's: count the connection as gone.
            Err(_) => {
                open = false;
                break;
            }
        };
        match frame {
            ws::Frame::Binary(payload) => {
                if let Ok(h) = FrameHeader::parse(payload) {
                    let now = unix_micros();
                    let mut sh = shared.borrow_mut();
                    if sh.measuring {
                        sh.frames += 1;
                        if probe {
                            sh.delay.record(now.saturating_sub(h.relay_us));
                            sh.probe_frames += 1;
                        }
                        if let Some(l) = *last_seq {
                            let gap = h.sequence.wrapping_sub(l).wrapping_sub(1);
                            if gap > 0 && gap < 1 << 20 {
                                sh.lost += gap as u64;
                            }
                        }
                    }
                    *last_seq = Some(h.sequence);
                }
            }
            ws::Frame::Close(_) => open = false,
            // The relay pings its listeners (every 5 s) and closes one that does not answer
            // within 15 s: the caller answers with a pong.
            ws::Frame::Ping(_) => *pings += 1,
            _ => {}
        }
        at += len;
    }
    buf.drain(..at);
    open
}

/// A probe listener: reads each frame as soon as it arrives.
async fn listen(mut s: TcpStream, mut buf: Vec<u8>, shared: Rc<RefCell<Shared>>) {
    let mut last_seq = None;
    let mut chunk = vec![0u8; 8192];
    loop {
        let mut pings = 0;
        if !take_frames(&mut buf, &mut last_seq, &shared, true, &mut pings) {
            shared.borrow_mut().dropped += 1;
            return;
        }
        for _ in 0..pings {
            if s.write_all(&ws::masked(ws::opcode::PONG, &[]))
                .await
                .is_err()
            {
                shared.borrow_mut().dropped += 1;
                return;
            }
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                shared.borrow_mut().dropped += 1;
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A listener that is not a probe: a plain non-blocking socket, outside the event loop (so its
/// arrivals wake nobody), read every `BULK_READ` by `poll_bulk`.
struct Bulk {
    socket: std::net::TcpStream,
    buf: Vec<u8>,
    last_seq: Option<u32>,
    open: bool,
}

async fn poll_bulk(bulk: Rc<RefCell<Vec<Bulk>>>, shared: Rc<RefCell<Shared>>) {
    use std::io::Read;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut tick = tokio::time::interval(BULK_READ);
    loop {
        tick.tick().await;
        let mut conns = bulk.borrow_mut();
        for c in conns.iter_mut().filter(|c| c.open) {
            loop {
                match c.socket.read(&mut chunk) {
                    Ok(0) => {
                        c.open = false;
                        break;
                    }
                    Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        c.open = false;
                        break;
                    }
                }
            }
            if c.open {
                let mut pings = 0;
                c.open = take_frames(&mut c.buf, &mut c.last_seq, &shared, false, &mut pings);
                for _ in 0..pings {
                    // A few bytes into a socket whose send buffer is empty: it fits.
                    let _ =
                        std::io::Write::write(&mut c.socket, &ws::masked(ws::opcode::PONG, &[]));
                }
            }
            if !c.open {
                shared.borrow_mut().dropped += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_within_a_thousandth() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (q, want) in [(0.5, 50_000u64), (0.99, 99_000), (0.999, 99_900)] {
            let got = h.quantile(q);
            assert!(
                (got as f64 - want as f64).abs() <= want as f64 * 0.002,
                "q{q}: {got} vs {want}"
            );
        }
        assert_eq!(h.max(), 100_000);
        assert_eq!(h.quantile(0.0001), 10);
    }

    #[test]
    fn proc_stat_reads_this_process() {
        let s = proc_stat(std::process::id()).unwrap();
        assert!(s.rss_kib > 1000, "{s:?}");
    }
}
