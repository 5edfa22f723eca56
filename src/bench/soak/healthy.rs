//! The healthy part of the soak: a show as the relay should carry it, measured.
//!
//! - The floor and booths `b0`.. of `config/bench.toml`, two consoles each (`1`, `2`), both
//!   sending a synthetic frame every 20 ms all along (the relay carries only the live one's).
//!   Every `handover_every` the live console offers the microphone and its partner accepts.
//! - Listeners that keep a channel (spread over the booths' channels and the floor) and read
//!   every frame: a gap in a channel's sequence number is a lost frame. One in `probe_every`
//!   reads each frame as it arrives and records the delay from the relay's time in its header
//!   to its arrival (one clock on loopback); the others are plain non-blocking sockets read
//!   every [`BULK_READ`](crate::bench::BULK_READ). All answer the relay's pings, as any
//!   WebSocket client does.
//! - Listeners that come and go: each connects, stays 0.5 to 3 s, leaves (a close frame or
//!   just the socket closed), and comes again at once; their connect time is recorded.
//! - A console per booth (`r`) that connects every `reconnect_every`, stays a second and
//!   leaves: the time from its TCP connect to `welcome` is the booth's connect time.
//!
//! Everything is counted over the measured window only, after the warm-up.

use super::{block, connect_from, listener, masked, masked_into, next_frame, opcode, source};
use super::{run_queue_wait, summary_ms, Frame, Tally, CONNECT_TIMEOUT};
use crate::bench::{proc_stat, Histogram, ProcStat, BULK_READ};
use crate::protocol::{FrameHeader, Source, CHANNEL_UNSET};
use crate::relay::unix_micros;
use futures_util::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use std::cell::{Cell, RefCell};
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub addr: SocketAddr,
    /// Measured time, after everyone is connected and the warm-up.
    pub seconds: f64,
    pub warmup: f64,
    /// Booths `b0`.. of room `bench`, each live on its channel `l0`..
    pub booths: usize,
    /// Listeners that keep a channel.
    pub listeners: usize,
    /// Listeners that come and go.
    pub churn: usize,
    /// Listeners to a source address (the relay takes 16 by default).
    pub per_address: usize,
    /// One keeping listener in this many measures every frame's delay.
    pub probe_every: usize,
    pub handover_every: Duration,
    /// How often the timed console of each booth connects.
    pub reconnect_every: Duration,
    pub frame_ms: u64,
    /// Opus payload bytes per frame (80 = 32 kbit/s at 20 ms).
    pub frame_bytes: usize,
    /// Secret of every bench booth.
    pub secret: String,
    pub floor_secret: String,
    /// The relay's process, for its CPU time and memory.
    pub relay_pid: Option<u32>,
    /// How often the relay's memory is sampled.
    pub sample_every: Duration,
}

impl Options {
    /// The load of `docs/BENCHMARKS.md` section 9 against `addr`, measured for `seconds`.
    pub fn new(addr: SocketAddr, seconds: f64, floor_secret: String) -> Options {
        Options {
            addr,
            seconds,
            warmup: 5.0,
            booths: 10,
            listeners: 1000,
            churn: 200,
            per_address: 10,
            probe_every: 50,
            handover_every: Duration::from_secs(10),
            reconnect_every: Duration::from_secs(3),
            frame_ms: 20,
            frame_bytes: 80,
            secret: "bench-secret".into(),
            floor_secret,
            relay_pid: None,
            sample_every: Duration::from_secs(10),
        }
    }

    /// The channels listened to: the booths' and the floor.
    fn channels(&self) -> Vec<String> {
        let mut c: Vec<String> = (0..self.booths).map(|b| format!("bench/l{b}")).collect();
        c.push("bench/floor".into());
        c
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("booths not live within 15 s: {0} (is the relay serving config/bench.toml with BOOTHCAST_FLOOR_SECRET set as here?)")]
    Booths(String),
    #[error("{0} of {1} listeners not connected within 60 s; first refusal: {2}")]
    Listeners(usize, usize, String),
}

/// What the clients add to, on the one thread of the load generator.
#[derive(Default)]
struct Shared {
    measuring: bool,
    /// Keeping listeners connected now.
    connected: usize,
    delay: Histogram,
    frames: u64,
    probe_frames: u64,
    lost: u64,
    /// Keeping listeners' connections that ended, by why (the relay's error code or close code).
    dropped: Tally,
    /// Keeping listeners' connects that failed, by why.
    listener_failures: Tally,
    booth_connect: Histogram,
    booth_failures: Tally,
    churn_connect: Histogram,
    churn_failures: Tally,
    churn_cycles: u64,
    handovers_asked: u64,
    handovers_done: u64,
    handover: Histogram,
    /// Booth ticks that found no console live (after a console's connection ended).
    none_live: u64,
    /// Errors the consoles and the floor were sent, by code.
    sender_errors: Tally,
    /// The consoles' and floor's connections that ended, by why.
    sender_drops: Tally,
}

type Shareds = Rc<RefCell<Shared>>;

/// The relay's resident memory and CPU time at a moment of the measured window.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at_s: f64,
    pub relay: ProcStat,
    /// Seconds the relay has waited for a CPU so far ([`run_queue_wait`]).
    pub relay_wait: f64,
}

/// The result of a run.
#[derive(Clone, Default)]
pub struct Report {
    pub seconds: f64,
    pub listeners: usize,
    pub channels: usize,
    pub churn: usize,
    pub frames: u64,
    pub expected_frames: u64,
    pub lost: u64,
    pub dropped: Tally,
    pub listener_failures: Tally,
    pub delay: Histogram,
    pub probe_frames: u64,
    pub booth_connect: Histogram,
    pub booth_failures: Tally,
    pub churn_connect: Histogram,
    pub churn_cycles: u64,
    pub churn_failures: Tally,
    pub handovers_asked: u64,
    pub handovers_done: u64,
    pub handover: Histogram,
    pub none_live: u64,
    pub sender_errors: Tally,
    pub sender_drops: Tally,
    pub samples: Vec<Sample>,
    /// The relay's CPU time over the window, as a share of one core.
    pub relay_cpu: Option<f64>,
    /// The relay's time waiting for a CPU over the window (other load on its core), as a share
    /// of the window.
    pub relay_wait: Option<f64>,
    /// This process's CPU time over the window, as a share of one core.
    pub own_cpu: Option<f64>,
    /// Counters from the relay's `/metrics` at the end (admission, liveness, secrets, skips).
    pub metrics: Vec<(String, f64)>,
}

impl Report {
    pub fn to_json(&self) -> serde_json::Value {
        let mib = |k: u64| (k as f64 / 1024.0 * 10.0).round() / 10.0;
        serde_json::json!({
            "part": "healthy",
            "seconds": self.seconds,
            "listeners": self.listeners,
            "channels": self.channels,
            "churn": self.churn,
            "frames": self.frames,
            "expected_frames": self.expected_frames,
            "lost": self.lost,
            "dropped": self.dropped.to_json(),
            "listener_failures": self.listener_failures.to_json(),
            "delay": summary_ms(&self.delay),
            "booth_connect": summary_ms(&self.booth_connect),
            "booth_failures": self.booth_failures.to_json(),
            "churn_connect": summary_ms(&self.churn_connect),
            "churn_cycles": self.churn_cycles,
            "churn_failures": self.churn_failures.to_json(),
            "handovers_asked": self.handovers_asked,
            "handovers_done": self.handovers_done,
            "handover": summary_ms(&self.handover),
            "none_live": self.none_live,
            "sender_errors": self.sender_errors.to_json(),
            "sender_drops": self.sender_drops.to_json(),
            "rss_mib": self.samples.iter().map(|s| serde_json::json!([s.at_s.round(), mib(s.relay.rss_kib)])).collect::<Vec<_>>(),
            "relay_cpu": self.relay_cpu,
            "relay_wait": self.relay_wait,
            "own_cpu": self.own_cpu,
            "metrics": self.metrics.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |us: u64| us as f64 / 1000.0;
        writeln!(
            f,
            "healthy load, {:.0} s measured: {} listeners keeping a channel over {} channels, {} coming and going",
            self.seconds, self.listeners, self.channels, self.churn
        )?;
        writeln!(
            f,
            "  frames received {} of about {}; lost (sequence gaps) {}; connections ended by the relay: {}; reconnects refused: {}",
            self.frames, self.expected_frames, self.lost, self.dropped, self.listener_failures
        )?;
        writeln!(
            f,
            "  delay relay -> listener ({} frames): p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            self.probe_frames,
            ms(self.delay.quantile(0.5)),
            ms(self.delay.quantile(0.99)),
            ms(self.delay.quantile(0.999)),
            ms(self.delay.max())
        )?;
        writeln!(
            f,
            "  booth console connect (TCP connect -> welcome, {} connects): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; failed: {}",
            self.booth_connect.count(),
            ms(self.booth_connect.quantile(0.5)),
            ms(self.booth_connect.quantile(0.99)),
            ms(self.booth_connect.max()),
            self.booth_failures
        )?;
        writeln!(
            f,
            "  coming and going: {} visits, connect p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; failed: {}",
            self.churn_cycles,
            ms(self.churn_connect.quantile(0.5)),
            ms(self.churn_connect.quantile(0.99)),
            ms(self.churn_connect.max()),
            self.churn_failures
        )?;
        writeln!(
            f,
            "  handovers: {} done of {} asked (offer -> partner live p50 {:.1} ms, max {:.1} ms); no console live at a tick: {}; senders' errors: {}; senders' connections ended: {}",
            self.handovers_done,
            self.handovers_asked,
            ms(self.handover.quantile(0.5)),
            ms(self.handover.max()),
            self.none_live,
            self.sender_errors,
            self.sender_drops
        )?;
        if let (Some(first), Some(last)) = (self.samples.first(), self.samples.last()) {
            let peak = self
                .samples
                .iter()
                .map(|s| s.relay.rss_kib)
                .max()
                .unwrap_or(0);
            writeln!(
                f,
                "  relay resident memory: {:.1} MiB at the start, {:.1} MiB at the end, {:.1} MiB at most",
                first.relay.rss_kib as f64 / 1024.0,
                last.relay.rss_kib as f64 / 1024.0,
                peak as f64 / 1024.0
            )?;
            let series: Vec<String> = self
                .samples
                .iter()
                .map(|s| format!("{:.0}s {:.1}", s.at_s, s.relay.rss_kib as f64 / 1024.0))
                .collect();
            writeln!(f, "    MiB over time: {}", series.join(", "))?;
        }
        if let Some(cpu) = self.relay_cpu {
            write!(f, "  relay CPU: {:.0} % of a core", 100.0 * cpu)?;
            if let Some(wait) = self.relay_wait {
                write!(
                    f,
                    " (and {:.1} % of the time waiting for a CPU taken by other processes)",
                    100.0 * wait
                )?;
            }
            if let Some(own) = self.own_cpu {
                write!(f, "; this load generator: {:.0} % of a core", 100.0 * own)?;
            }
            writeln!(f)?;
        }
        if !self.metrics.is_empty() {
            writeln!(f, "  /metrics at the end:")?;
            for (k, v) in &self.metrics {
                writeln!(f, "    {k} {v}")?;
            }
        }
        Ok(())
    }
}

/// Runs the healthy load on the current (single-threaded) runtime. Call inside a `LocalSet`.
pub async fn run(opts: Options) -> Result<Report, Error> {
    let opts = Rc::new(opts);
    let shared: Shareds = Rc::default();
    let channels = Rc::new(opts.channels());

    // The floor and the booths first: every channel carries sound before anyone listens.
    tokio::task::spawn_local(sender(opts.clone(), Who::Floor, None, None, shared.clone()));
    let mut booths = Vec::new();
    for b in 0..opts.booths {
        let booth = Rc::new(Booth::default());
        let mut to = Vec::new();
        for (slot, name) in ["1", "2"].into_iter().enumerate() {
            let (tx, rx) = mpsc::channel(4);
            to.push(tx);
            tokio::task::spawn_local(sender(
                opts.clone(),
                Who::Console { booth: b, name },
                Some((booth.clone(), slot)),
                Some(rx),
                shared.clone(),
            ));
        }
        tokio::task::spawn_local(control(opts.clone(), b, booth.clone(), to, shared.clone()));
        booths.push(booth);
    }
    let t0 = Instant::now();
    while !booths.iter().all(|b| b.live.iter().any(Cell::get)) {
        if t0.elapsed() > Duration::from_secs(15) {
            let s = shared.borrow();
            return Err(Error::Booths(format!(
                "errors {}, connections ended {}",
                s.sender_errors, s.sender_drops
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Listeners that keep their channel, at most 64 connecting at once.
    let bulk: Rc<RefCell<Vec<Option<Bulk>>>> =
        Rc::new(RefCell::new((0..opts.listeners).map(|_| None).collect()));
    tokio::task::spawn_local(poll_bulk(opts.clone(), bulk.clone(), shared.clone()));
    let permits = Rc::new(tokio::sync::Semaphore::new(64));
    for i in 0..opts.listeners {
        let channel = channels[i % channels.len()].clone();
        let probe = opts.probe_every <= 1 || i % opts.probe_every == 0;
        let (opts, shared, permits) = (opts.clone(), shared.clone(), permits.clone());
        if probe {
            tokio::task::spawn_local(keep_probe(opts, i, channel, shared, permits));
        } else {
            tokio::task::spawn_local(keep_bulk(opts, i, channel, bulk.clone(), shared, permits));
        }
    }
    let t0 = Instant::now();
    while shared.borrow().connected < opts.listeners {
        if t0.elapsed() > Duration::from_secs(60) {
            let s = shared.borrow();
            return Err(Error::Listeners(
                opts.listeners - s.connected,
                opts.listeners,
                s.listener_failures.to_string(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for i in 0..opts.churn {
        tokio::task::spawn_local(churn(opts.clone(), i, channels.clone(), shared.clone()));
    }
    for b in 0..opts.booths {
        tokio::task::spawn_local(reconnecting(opts.clone(), b, shared.clone()));
    }
    tokio::time::sleep(Duration::from_secs_f64(opts.warmup)).await;

    let own = std::process::id();
    let own_before = proc_stat(own);
    let mut samples = Vec::new();
    let start = Instant::now();
    shared.borrow_mut().measuring = true;
    let sample = |at_s: f64| {
        let pid = opts.relay_pid?;
        Some(Sample {
            at_s,
            relay: proc_stat(pid)?,
            relay_wait: run_queue_wait(pid)?,
        })
    };
    samples.extend(sample(0.0));
    let mut next = Duration::ZERO;
    loop {
        next += opts.sample_every;
        let left = opts.seconds - start.elapsed().as_secs_f64();
        if left <= 0.0 {
            break;
        }
        let wait = next
            .saturating_sub(start.elapsed())
            .min(Duration::from_secs_f64(left));
        tokio::time::sleep(wait).await;
        let at_s = start.elapsed().as_secs_f64();
        samples.extend(sample(at_s));
        if opts.seconds >= 120.0 && (at_s as u64).is_multiple_of(60) {
            let s = shared.borrow();
            eprintln!(
                "  {:.0} s: lost {}, listener connections ended {}, relay {:.1} MiB",
                at_s,
                s.lost,
                s.dropped.total(),
                samples
                    .last()
                    .map_or(0.0, |x| x.relay.rss_kib as f64 / 1024.0)
            );
        }
    }
    shared.borrow_mut().measuring = false;
    let elapsed = start.elapsed().as_secs_f64();
    let own_after = proc_stat(own);
    let metrics = fetch_metrics(opts.addr).await.unwrap_or_else(|e| {
        eprintln!("cannot read /metrics: {e}");
        Vec::new()
    });

    let s = shared.borrow();
    let cpu_share = |a: Option<ProcStat>, b: Option<ProcStat>| {
        a.zip(b)
            .map(|(a, b)| (b.cpu_seconds - a.cpu_seconds) / elapsed)
    };
    Ok(Report {
        seconds: elapsed,
        listeners: opts.listeners,
        channels: channels.len(),
        churn: opts.churn,
        frames: s.frames,
        expected_frames: (opts.listeners as f64 * elapsed * 1000.0 / opts.frame_ms as f64) as u64,
        lost: s.lost,
        dropped: s.dropped.clone(),
        listener_failures: s.listener_failures.clone(),
        delay: s.delay.clone(),
        probe_frames: s.probe_frames,
        booth_connect: s.booth_connect.clone(),
        booth_failures: s.booth_failures.clone(),
        churn_connect: s.churn_connect.clone(),
        churn_cycles: s.churn_cycles,
        churn_failures: s.churn_failures.clone(),
        handovers_asked: s.handovers_asked,
        handovers_done: s.handovers_done,
        handover: s.handover.clone(),
        none_live: s.none_live,
        sender_errors: s.sender_errors.clone(),
        sender_drops: s.sender_drops.clone(),
        relay_cpu: cpu_share(
            samples.first().map(|s| s.relay),
            samples.last().map(|s| s.relay),
        ),
        relay_wait: samples
            .first()
            .zip(samples.last())
            .map(|(a, b)| (b.relay_wait - a.relay_wait) / elapsed),
        own_cpu: cpu_share(own_before, own_after),
        samples,
        metrics,
    })
}

// ---- Listeners that keep their channel ----

/// What a keeping listener has read of its connection and not yet taken.
struct Reception {
    buf: Vec<u8>,
    last_seq: Option<u32>,
    /// The code of the last `error` the relay sent, if any.
    error: Option<String>,
}

impl Reception {
    fn new(rest: Vec<u8>) -> Reception {
        Reception {
            buf: rest,
            last_seq: None,
            error: None,
        }
    }

    /// Takes every complete frame off the buffer: audio frames are counted (a gap in the
    /// sequence as lost frames; for a probe, the delay since the relay stamped the frame) and
    /// pings answered into `out`. Returns why the connection ended, if the relay closed it.
    fn take(&mut self, shared: &RefCell<Shared>, probe: bool, out: &mut Vec<u8>) -> Option<String> {
        let mut at = 0;
        let mut ended = None;
        let mut sh = shared.borrow_mut();
        loop {
            let (frame, used) = match next_frame(&self.buf[at..]) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    ended = Some(e);
                    break;
                }
            };
            match frame {
                Frame::Binary(p) => {
                    if let Ok(h) = FrameHeader::parse(p) {
                        if sh.measuring {
                            sh.frames += 1;
                            if probe {
                                let delay = unix_micros().saturating_sub(h.relay_us);
                                sh.delay.record(delay);
                                sh.probe_frames += 1;
                            }
                            if let Some(l) = self.last_seq {
                                let gap = h.sequence.wrapping_sub(l).wrapping_sub(1);
                                if gap > 0 && gap < 1 << 20 {
                                    sh.lost += gap as u64;
                                }
                            }
                        }
                        self.last_seq = Some(h.sequence);
                    }
                }
                Frame::Ping(p) => masked_into(out, opcode::PONG, p),
                Frame::Text(t) => {
                    if let (_, Some(code)) = super::message_kind(t) {
                        self.error = Some(code);
                    }
                }
                Frame::Close(code) => {
                    ended = Some(self.error.clone().unwrap_or_else(|| {
                        format!("close {}", code.map_or("-".into(), |c| c.to_string()))
                    }));
                }
                Frame::Other => {}
            }
            at += used;
            if ended.is_some() {
                break;
            }
        }
        self.buf.drain(..at);
        ended
    }
}

/// Connects keeping listener `i` (again after a pause when the relay closed it), counting
/// refusals. The first connect waits for a permit so that a thousand do not all start at once.
async fn connect_keeper(
    opts: &Options,
    i: usize,
    channel: &str,
    shared: &Shareds,
    permits: Option<&tokio::sync::Semaphore>,
) -> (TcpStream, Vec<u8>) {
    let from = source(block::LISTENERS, i, opts.per_address);
    loop {
        let permit = match permits {
            Some(p) => Some(p.acquire().await.expect("never closed")),
            None => None,
        };
        let result = listener(from, opts.addr, Some(channel)).await;
        drop(permit);
        match result {
            Ok(o) => {
                shared.borrow_mut().connected += 1;
                return (o.stream, o.rest);
            }
            Err(e) => {
                shared.borrow_mut().listener_failures.add(&e);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn ended(shared: &Shareds, why: &str) {
    let mut s = shared.borrow_mut();
    s.connected -= 1;
    if s.measuring {
        s.dropped.add(why);
    }
}

/// A probe: reads each frame as it arrives.
async fn keep_probe(
    opts: Rc<Options>,
    i: usize,
    channel: String,
    shared: Shareds,
    permits: Rc<tokio::sync::Semaphore>,
) {
    let mut first = Some(permits);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut out = Vec::new();
    loop {
        let (mut s, rest) =
            connect_keeper(&opts, i, &channel, &shared, first.take().as_deref()).await;
        let mut r = Reception::new(rest);
        let why = loop {
            if let Some(why) = r.take(&shared, true, &mut out) {
                break why;
            }
            if !out.is_empty() {
                if let Err(e) = s.write_all(&out).await {
                    break format!("write: {}", e.kind());
                }
                out.clear();
            }
            match s.read(&mut chunk).await {
                Ok(0) => break r.error.clone().unwrap_or_else(|| "closed".into()),
                Ok(n) => r.buf.extend_from_slice(&chunk[..n]),
                Err(e) => break format!("read: {}", e.kind()),
            }
        };
        ended(&shared, &why);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A keeping listener that is not a probe: a plain non-blocking socket, outside the event loop
/// (its arrivals wake nobody), read every `BULK_READ` by [`poll_bulk`].
struct Bulk {
    socket: std::net::TcpStream,
    reception: Reception,
}

async fn keep_bulk(
    opts: Rc<Options>,
    i: usize,
    channel: String,
    bulk: Rc<RefCell<Vec<Option<Bulk>>>>,
    shared: Shareds,
    permits: Rc<tokio::sync::Semaphore>,
) {
    let (s, rest) = connect_keeper(&opts, i, &channel, &shared, Some(&permits)).await;
    match s.into_std() {
        Ok(socket) => {
            bulk.borrow_mut()[i] = Some(Bulk {
                socket,
                reception: Reception::new(rest),
            })
        }
        Err(e) => ended(&shared, &format!("socket: {}", e.kind())),
    }
}

/// Reads every bulk listener's socket every `BULK_READ`; one whose connection ended is
/// connected again a second later.
async fn poll_bulk(opts: Rc<Options>, bulk: Rc<RefCell<Vec<Option<Bulk>>>>, shared: Shareds) {
    use std::io::{Read, Write};
    let channels = opts.channels();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(BULK_READ);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut gone = Vec::new();
        {
            let mut conns = bulk.borrow_mut();
            for (i, slot) in conns.iter_mut().enumerate() {
                let Some(c) = slot else { continue };
                let mut why = None;
                loop {
                    match c.socket.read(&mut chunk) {
                        Ok(0) => {
                            why =
                                Some(c.reception.error.clone().unwrap_or_else(|| "closed".into()));
                            break;
                        }
                        Ok(n) => c.reception.buf.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            why = Some(format!("read: {}", e.kind()));
                            break;
                        }
                    }
                }
                if let Some(w) = c.reception.take(&shared, false, &mut out) {
                    why.get_or_insert(w);
                }
                if !out.is_empty() {
                    // A pong is a few bytes into an empty send buffer; one that does not fit
                    // is left out (the next ping comes 5 s later, the deadline is 15 s).
                    let _ = c.socket.write(&out);
                    out.clear();
                }
                if let Some(why) = why {
                    gone.push((i, why));
                    *slot = None;
                }
            }
        }
        for (i, why) in gone {
            ended(&shared, &why);
            let (opts, bulk, shared) = (opts.clone(), bulk.clone(), shared.clone());
            let channel = channels[i % channels.len()].clone();
            tokio::task::spawn_local(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let permits = Rc::new(tokio::sync::Semaphore::new(1));
                keep_bulk(opts, i, channel, bulk, shared, permits).await;
            });
        }
    }
}

// ---- Listeners that come and go ----

async fn churn(opts: Rc<Options>, i: usize, channels: Rc<Vec<String>>, shared: Shareds) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
    let from = source(block::CHURN, i, opts.per_address);
    // Spread the first connects over a second.
    tokio::time::sleep(Duration::from_millis(rng.random_range(0..1000))).await;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let channel = &channels[rng.random_range(0..channels.len())];
        match listener(from, opts.addr, Some(channel)).await {
            Ok(mut o) => {
                {
                    let mut s = shared.borrow_mut();
                    if s.measuring {
                        s.churn_connect.record(o.took.as_micros() as u64);
                        s.churn_cycles += 1;
                    }
                }
                let stay = Duration::from_millis(rng.random_range(500..3000));
                let _ = tokio::time::timeout(stay, async {
                    while let Ok(n) = o.stream.read(&mut chunk).await {
                        if n == 0 {
                            break;
                        }
                    }
                })
                .await;
                // Half leave with a close frame, half just close the socket (a phone that
                // left the room sends neither, but its NAT or the Wi-Fi access point often
                // resets the connection).
                if rng.random_bool(0.5) {
                    let _ = o
                        .stream
                        .write_all(&masked(opcode::CLOSE, &1000u16.to_be_bytes()))
                        .await;
                }
            }
            Err(e) => {
                {
                    let mut s = shared.borrow_mut();
                    if s.measuring {
                        s.churn_failures.add(&e);
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

// ---- The floor and the booth consoles ----

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

#[derive(Debug, Clone, Copy)]
enum Who {
    Floor,
    Console { booth: usize, name: &'static str },
}

impl Who {
    fn address(self) -> Ipv4Addr {
        match self {
            // The floor comes from the mixing desk's machine, each booth from its laptop.
            Who::Floor => Ipv4Addr::new(127, block::BOOTHS, 1, 1),
            Who::Console { booth, .. } => source(block::BOOTHS, booth, 1),
        }
    }

    fn hello(self, opts: &Options) -> String {
        match self {
            Who::Floor => serde_json::json!({"type": "hello", "role": "floor", "room": "bench",
                "secret": opts.floor_secret, "client": "boothcast bench-soak"}),
            Who::Console { booth, name } => serde_json::json!({"type": "hello",
                "role": "interpreter", "booth": format!("b{booth}"), "console": name,
                "secret": opts.secret, "client": "boothcast bench-soak"}),
        }
        .to_string()
    }
}

/// What a booth's two consoles and its controller share.
#[derive(Default)]
struct Booth {
    /// Whether each console is live, as the relay last told it.
    live: [Cell<bool>; 2],
    /// When the pending handover was asked for.
    asked: Cell<Option<Instant>>,
}

enum Command {
    Live,
    Handover,
}

/// Opens a sender's WebSocket and says hello; waits for `welcome`. `Err` is a short label of
/// what came instead.
async fn open_sender(opts: &Options, who: Who) -> Result<Ws, String> {
    let open = async {
        let tcp = connect_from(who.address(), opts.addr)
            .await
            .map_err(|e| format!("connect: {}", e.kind()))?;
        let url = format!("ws://{}/ws", opts.addr);
        let (mut ws, _) = tokio_tungstenite::client_async(url, tcp)
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(r) => r.status().as_u16().to_string(),
                e => format!("upgrade: {e}"),
            })?;
        ws.send(Message::Text(who.hello(opts).into()))
            .await
            .map_err(|e| format!("write: {e}"))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => match super::message_kind(t.as_bytes()) {
                    (k, _) if k == "welcome" => return Ok(ws),
                    (_, Some(code)) => return Err(code),
                    _ => {}
                },
                Some(Ok(Message::Close(c))) => {
                    return Err(format!("close {}", c.map_or(0, |c| u16::from(c.code))))
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("read: {e}")),
                None => return Err("closed".into()),
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, open)
        .await
        .map_err(|_| "timeout".to_string())?
}

/// A sender (the floor or a booth console) for the whole run: connects, sends a frame every
/// `frame_ms` and does what its booth's controller says; connects again when its connection
/// ends.
async fn sender(
    opts: Rc<Options>,
    who: Who,
    booth: Option<(Rc<Booth>, usize)>,
    mut commands: Option<mpsc::Receiver<Command>>,
    shared: Shareds,
) {
    loop {
        let why = match open_sender(&opts, who).await {
            Ok(ws) => send_frames(&opts, who, ws, booth.as_ref(), commands.as_mut(), &shared).await,
            Err(e) => format!("connect: {e}"),
        };
        if let Some((b, slot)) = &booth {
            b.live[*slot].set(false);
        }
        {
            let mut s = shared.borrow_mut();
            if s.measuring {
                s.sender_drops.add(&why);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends frames on an absolute schedule until the connection ends; returns why it ended.
async fn send_frames(
    opts: &Options,
    who: Who,
    mut ws: Ws,
    booth: Option<&(Rc<Booth>, usize)>,
    mut commands: Option<&mut mpsc::Receiver<Command>>,
    shared: &Shareds,
) -> String {
    let frame = Duration::from_millis(opts.frame_ms);
    let start = tokio::time::Instant::now();
    let mut payload = vec![0x55u8; opts.frame_bytes.max(2)];
    payload[0] = 0xF8; // TOC: a 20 ms fullband frame, code 0
    let source_kind = match who {
        Who::Floor => Source::Floor,
        Who::Console { .. } => Source::Interpreter,
    };
    let mut k: u32 = 0;
    loop {
        let command = async {
            match commands.as_mut() {
                Some(c) => c.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(start + frame * (k + 1)) => {
                let header = FrameHeader {
                    source: source_kind,
                    channel: CHANNEL_UNSET,
                    sequence: k,
                    capture_us: unix_micros(),
                    relay_us: 0,
                    rms: 30,
                    peak: 12,
                };
                if let Err(e) = ws.send(Message::Binary(header.frame(&payload))).await {
                    return format!("write: {e}");
                }
                k = k.wrapping_add(1);
            }
            c = command => {
                let msg = match c {
                    Some(Command::Live) => r#"{"type":"live"}"#,
                    Some(Command::Handover) => r#"{"type":"handover"}"#,
                    None => return "the booth's controller stopped".into(),
                };
                if let Err(e) = ws.send(Message::Text(msg.into())).await {
                    return format!("write: {e}");
                }
            }
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                    match v["type"].as_str() {
                        Some("console") => {
                            if let Some((b, slot)) = booth {
                                let live = v["live"].is_string();
                                if live && !b.live[*slot].get() {
                                    if let Some(t) = b.asked.take() {
                                        let mut s = shared.borrow_mut();
                                        if s.measuring {
                                            s.handovers_done += 1;
                                            s.handover.record(t.elapsed().as_micros() as u64);
                                        }
                                    }
                                }
                                b.live[*slot].set(live);
                            }
                        }
                        Some("handover_offered") => {
                            if let Err(e) = ws.send(Message::Text(r#"{"type":"accept"}"#.into())).await {
                                return format!("write: {e}");
                            }
                        }
                        Some("error") => {
                            let code = v["code"].as_str().unwrap_or("?");
                            let mut s = shared.borrow_mut();
                            if s.measuring {
                                s.sender_errors.add(code);
                            }
                        }
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(c))) => {
                    return format!("close {}", c.map_or(0, |c| u16::from(c.code)));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return format!("read: {e}"),
                None => return "closed".into(),
            },
        }
    }
}

/// A booth's controller: puts a console live if none is, and every `handover_every` has the
/// live one offer the microphone (its partner accepts as soon as it is offered). Booths are
/// spread over the interval so that their handovers do not all fall together.
async fn control(
    opts: Rc<Options>,
    b: usize,
    booth: Rc<Booth>,
    to: Vec<mpsc::Sender<Command>>,
    shared: Shareds,
) {
    let _ = to[0].try_send(Command::Live);
    let offset = opts
        .handover_every
        .mul_f64(b as f64 / opts.booths.max(1) as f64);
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + opts.handover_every + offset,
        opts.handover_every,
    );
    loop {
        tick.tick().await;
        let mut s = shared.borrow_mut();
        // A handover still pending a whole interval later did not happen.
        booth.asked.set(None);
        match booth.live.iter().position(Cell::get) {
            Some(slot) => {
                if to[slot].try_send(Command::Handover).is_ok() {
                    booth.asked.set(Some(Instant::now()));
                    if s.measuring {
                        s.handovers_asked += 1;
                    }
                }
            }
            None => {
                if s.measuring {
                    s.none_live += 1;
                }
                let _ = to[0].try_send(Command::Live);
            }
        }
    }
}

/// A console of booth `b` (named `r`) that connects every `reconnect_every`, stays a second
/// and leaves; records the time from its TCP connect to `welcome`.
async fn reconnecting(opts: Rc<Options>, b: usize, shared: Shareds) {
    let who = Who::Console {
        booth: b,
        name: "r",
    };
    let offset = opts
        .reconnect_every
        .mul_f64(b as f64 / opts.booths.max(1) as f64);
    let mut next = tokio::time::Instant::now() + offset;
    loop {
        tokio::time::sleep_until(next).await;
        next += opts.reconnect_every;
        let t0 = Instant::now();
        match open_sender(&opts, who).await {
            Ok(mut ws) => {
                let took = t0.elapsed();
                {
                    let mut s = shared.borrow_mut();
                    if s.measuring {
                        s.booth_connect.record(took.as_micros() as u64);
                    }
                }
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
            }
            Err(e) => {
                let mut s = shared.borrow_mut();
                if s.measuring {
                    s.booth_failures.add(&e);
                }
            }
        }
    }
}

// ---- The relay's counters ----

/// The admission, liveness and secret counters of the relay's `/metrics`, and the frames it
/// skipped for lagging receivers (summed over channels).
async fn fetch_metrics(addr: SocketAddr) -> Result<Vec<(String, f64)>, String> {
    let get = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut body = Vec::new();
        s.read_to_end(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    let body = tokio::time::timeout(CONNECT_TIMEOUT, get)
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&body);
    if !text.starts_with("HTTP/1.1 200") {
        return Err(text.lines().next().unwrap_or_default().to_string());
    }
    Ok(pick_metrics(&text))
}

/// The lines of a Prometheus text page that the soak reports.
fn pick_metrics(text: &str) -> Vec<(String, f64)> {
    const KEEP: [&str; 8] = [
        "boothcast_refused_",
        "boothcast_connections_",
        "boothcast_secret_waiting",
        "boothcast_hello_timeouts",
        "boothcast_dead_paths",
        "boothcast_accept_errors",
        "boothcast_slow_closed",
        "boothcast_frames_",
    ];
    let mut out = Vec::new();
    let mut sums: Vec<(String, f64)> = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if !KEEP.iter().any(|k| name.starts_with(k)) {
            continue;
        }
        if name.starts_with("boothcast_frames_") {
            // Per channel: summed over the channels.
            let base = name.split('{').next().unwrap_or(name).to_string();
            match sums.iter_mut().find(|(n, _)| *n == base) {
                Some((_, v)) => *v += value,
                None => sums.push((base, value)),
            }
        } else {
            out.push((name.to_string(), value));
        }
    }
    out.extend(sums);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_picked_and_channels_summed() {
        let page = "# HELP x\nboothcast_listeners{channel=\"a\"} 3\n\
            boothcast_frames_skipped_total{channel=\"a\"} 2\n\
            boothcast_frames_skipped_total{channel=\"b\"} 5\n\
            boothcast_refused_connections_total{reason=\"full\"} 0\n\
            boothcast_dead_paths_total 7\n";
        let m = pick_metrics(page);
        assert_eq!(
            m,
            vec![
                (
                    "boothcast_refused_connections_total{reason=\"full\"}".into(),
                    0.0
                ),
                ("boothcast_dead_paths_total".into(), 7.0),
                ("boothcast_frames_skipped_total".into(), 7.0),
            ]
        );
    }

    #[test]
    fn gaps_in_a_channel_sequence_are_lost_frames_and_pings_are_answered() {
        let shared = RefCell::new(Shared {
            measuring: true,
            ..Default::default()
        });
        let frame = |seq: u32| {
            let h = FrameHeader {
                source: Source::Interpreter,
                channel: 1,
                sequence: seq,
                capture_us: 1,
                relay_us: unix_micros(),
                rms: 30,
                peak: 12,
            };
            let body = h.frame(&[0xF8, 1, 2]);
            let mut f = vec![0x82, body.len() as u8];
            f.extend_from_slice(&body);
            f
        };
        let mut r = Reception::new(Vec::new());
        for seq in [7, 8, 11] {
            r.buf.extend(frame(seq));
        }
        r.buf.extend_from_slice(&[0x89, 2, b'h', b'i']);
        let mut out = Vec::new();
        assert_eq!(r.take(&shared, true, &mut out), None);
        let s = shared.borrow();
        assert_eq!((s.frames, s.lost, s.probe_frames), (3, 2, 3));
        assert_eq!(out, masked(opcode::PONG, b"hi"));
        drop(s);
        r.buf.extend_from_slice(&[0x88, 2, 0x0F, 0xA0]);
        assert_eq!(
            r.take(&shared, false, &mut out).as_deref(),
            Some("close 4000")
        );
    }
}
