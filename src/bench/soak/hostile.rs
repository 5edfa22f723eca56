//! The hostile part of the soak: what a careless or unfriendly crowd on the venue network does
//! to the relay, as fast as the load generator's core allows.
//!
//! - `idle` connections that never send a byte, kept up: each is opened again as soon as the
//!   relay closes it (after its 5 s request deadline). `idle_per_address` to a source address
//!   (the relay lets an address hold 64 connections that have not said who they are).
//! - `slow` connections that send a request line, then one byte of header every `slow_every`.
//! - `ping_floods` delegates sending valid `ping` messages as fast as the connection takes
//!   them, reading the `pong`s.
//! - `garbage` clients sending a message the relay refuses (not JSON before `hello`, an
//!   unknown type after it, audio from a delegate), reading the refusal and coming again.
//! - `guess_loops` connections from each of `guess_addresses` addresses saying `hello` as an
//!   interpreter of booth `b0`.. with a wrong secret, one after another, as fast as answered.
//!
//! Everything is counted over the whole run.

use super::{block, connect_from, listener, masked, masked_into, next_frame, opcode, source};
use super::{summary_ms, upgrade, Frame, Tally, CONNECT_TIMEOUT};
use crate::bench::{proc_stat, Histogram};
use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub addr: SocketAddr,
    /// The load stops by itself after this long (or sooner, see [`run`]).
    pub seconds: f64,
    pub idle: usize,
    pub idle_per_address: usize,
    /// The idle connections are first opened over this time, so that their reopening is
    /// spread out rather than in waves.
    pub ramp: Duration,
    pub slow: usize,
    pub slow_every: Duration,
    pub ping_floods: usize,
    pub garbage: usize,
    pub guess_addresses: usize,
    pub guess_loops: usize,
    /// Booths `b0`.. whose secrets are guessed.
    pub booths: usize,
}

impl Options {
    /// The load of `docs/BENCHMARKS.md` section 9 against `addr`, for at most `seconds`.
    pub fn new(addr: SocketAddr, seconds: f64) -> Options {
        Options {
            addr,
            seconds,
            idle: 5000,
            idle_per_address: 50,
            ramp: Duration::from_secs(5),
            slow: 200,
            slow_every: Duration::from_secs(2),
            ping_floods: 1,
            garbage: 1,
            guess_addresses: 4,
            guess_loops: 4,
            booths: 10,
        }
    }
}

#[derive(Default)]
struct Counts {
    idle_open: usize,
    idle_opened: u64,
    idle_503: u64,
    idle_failed: Tally,
    idle_life: Histogram,
    /// Idle connections open, sampled every second once the ramp is over.
    idle_held: Vec<usize>,
    slow_open: usize,
    slow_opened: u64,
    slow_bytes: u64,
    slow_failed: Tally,
    slow_life: Histogram,
    pings: u64,
    pongs: u64,
    flood_ended: Tally,
    garbage_sent: u64,
    garbage_answers: Tally,
    guesses: u64,
    guess_answers: Tally,
}

type Shared = Rc<RefCell<Counts>>;

/// The result of a run.
#[derive(Clone, Default)]
pub struct Report {
    pub seconds: f64,
    pub idle: usize,
    pub idle_opened: u64,
    pub idle_503: u64,
    pub idle_failed: Tally,
    pub idle_life: Histogram,
    pub idle_held_min: usize,
    pub idle_held_mean: f64,
    pub slow: usize,
    pub slow_opened: u64,
    pub slow_bytes: u64,
    pub slow_failed: Tally,
    pub slow_life: Histogram,
    pub pings: u64,
    pub pongs: u64,
    pub flood_ended: Tally,
    pub garbage_sent: u64,
    pub garbage_answers: Tally,
    pub guesses: u64,
    pub guess_answers: Tally,
    /// This process's CPU time, as a share of one core.
    pub own_cpu: Option<f64>,
}

impl Report {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "part": "hostile",
            "seconds": self.seconds,
            "idle": self.idle,
            "idle_opened": self.idle_opened,
            "idle_503": self.idle_503,
            "idle_failed": self.idle_failed.to_json(),
            "idle_life": summary_ms(&self.idle_life),
            "idle_held_min": self.idle_held_min,
            "idle_held_mean": self.idle_held_mean.round(),
            "slow": self.slow,
            "slow_opened": self.slow_opened,
            "slow_bytes": self.slow_bytes,
            "slow_failed": self.slow_failed.to_json(),
            "slow_life": summary_ms(&self.slow_life),
            "pings": self.pings,
            "pongs": self.pongs,
            "flood_ended": self.flood_ended.to_json(),
            "garbage_sent": self.garbage_sent,
            "garbage_answers": self.garbage_answers.to_json(),
            "guesses": self.guesses,
            "guess_answers": self.guess_answers.to_json(),
            "own_cpu": self.own_cpu,
        })
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = |us: u64| us as f64 / 1e6;
        let rate = |n: u64| n as f64 / self.seconds.max(1e-9);
        writeln!(f, "hostile load, {:.0} s:", self.seconds)?;
        writeln!(
            f,
            "  idle connections: {} kept up (open, sampled each second: at least {}, {:.0} on average); {} opened ({:.0} a second); closed by the relay after p50 {:.2} s, max {:.2} s; answered 503: {}; connects failed: {}",
            self.idle,
            self.idle_held_min,
            self.idle_held_mean,
            self.idle_opened,
            rate(self.idle_opened),
            s(self.idle_life.quantile(0.5)),
            s(self.idle_life.max()),
            self.idle_503,
            self.idle_failed
        )?;
        writeln!(
            f,
            "  slow requests: {} kept up, {} opened, {} bytes sent; closed by the relay after p50 {:.2} s, max {:.2} s; connects failed: {}",
            self.slow,
            self.slow_opened,
            self.slow_bytes,
            s(self.slow_life.quantile(0.5)),
            s(self.slow_life.max()),
            self.slow_failed
        )?;
        writeln!(
            f,
            "  ping flood: {} pings sent ({:.0} a second), {} pongs read; its connections ended: {}",
            self.pings,
            rate(self.pings),
            self.pongs,
            self.flood_ended
        )?;
        writeln!(
            f,
            "  garbage: {} refused messages sent ({:.0} a second); answers: {}",
            self.garbage_sent,
            rate(self.garbage_sent),
            self.garbage_answers
        )?;
        writeln!(
            f,
            "  guessed secrets: {} hellos ({:.0} a second); answers: {}",
            self.guesses,
            rate(self.guesses),
            self.guess_answers
        )?;
        if let Some(cpu) = self.own_cpu {
            writeln!(f, "  this load generator: {:.0} % of a core", 100.0 * cpu)?;
        }
        Ok(())
    }
}

/// Runs the hostile load on the current (single-threaded) runtime until `opts.seconds` have
/// passed or `stop` completes, whichever is first. Call inside a `LocalSet`.
pub async fn run(opts: Options, stop: impl std::future::Future<Output = ()>) -> Report {
    let opts = Rc::new(opts);
    let shared: Shared = Rc::default();
    let own = std::process::id();
    let own_before = proc_stat(own);
    let start = Instant::now();
    for i in 0..opts.idle {
        tokio::task::spawn_local(idle(opts.clone(), i, shared.clone()));
    }
    for i in 0..opts.slow {
        tokio::task::spawn_local(slow(opts.clone(), i, shared.clone()));
    }
    for i in 0..opts.ping_floods {
        tokio::task::spawn_local(ping_flood(opts.clone(), i, shared.clone()));
    }
    for i in 0..opts.garbage {
        tokio::task::spawn_local(garbage(opts.clone(), i, shared.clone()));
    }
    for a in 0..opts.guess_addresses {
        for l in 0..opts.guess_loops {
            tokio::task::spawn_local(guess(opts.clone(), a, l, shared.clone()));
        }
    }
    // Sample how many idle connections are held, once the first ramp and deadline are past.
    let sampler = {
        let (opts, shared) = (opts.clone(), shared.clone());
        async move {
            tokio::time::sleep(opts.ramp + Duration::from_secs(6)).await;
            loop {
                {
                    let mut c = shared.borrow_mut();
                    let held = c.idle_open;
                    c.idle_held.push(held);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs_f64(opts.seconds)) => {}
        _ = stop => {}
        _ = sampler => {}
    }
    let seconds = start.elapsed().as_secs_f64();
    let own_cpu = own_before
        .zip(proc_stat(own))
        .map(|(a, b)| (b.cpu_seconds - a.cpu_seconds) / seconds);
    let c = shared.borrow();
    Report {
        seconds,
        idle: opts.idle,
        idle_opened: c.idle_opened,
        idle_503: c.idle_503,
        idle_failed: c.idle_failed.clone(),
        idle_life: c.idle_life.clone(),
        idle_held_min: c.idle_held.iter().copied().min().unwrap_or(0),
        idle_held_mean: c.idle_held.iter().sum::<usize>() as f64 / c.idle_held.len().max(1) as f64,
        slow: opts.slow,
        slow_opened: c.slow_opened,
        slow_bytes: c.slow_bytes,
        slow_failed: c.slow_failed.clone(),
        slow_life: c.slow_life.clone(),
        pings: c.pings,
        pongs: c.pongs,
        flood_ended: c.flood_ended.clone(),
        garbage_sent: c.garbage_sent,
        garbage_answers: c.garbage_answers.clone(),
        guesses: c.guesses,
        guess_answers: c.guess_answers.clone(),
        own_cpu,
    }
}

/// Reads and drops what comes until the relay closes; returns whether the first bytes were
/// a `503` answer.
async fn until_closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    let mut first = true;
    let mut refused = false;
    while let Ok(n) = s.read(&mut buf).await {
        if n == 0 {
            break;
        }
        if first {
            refused = buf[..n].starts_with(b"HTTP/1.1 503");
            first = false;
        }
    }
    refused
}

/// One idle connection slot: a connection that never sends a byte, opened again whenever the
/// relay closes it.
async fn idle(opts: Rc<Options>, i: usize, shared: Shared) {
    let from = source(block::IDLE, i, opts.idle_per_address);
    tokio::time::sleep(opts.ramp.mul_f64(i as f64 / opts.idle.max(1) as f64)).await;
    loop {
        match connect_from(from, opts.addr).await {
            Ok(mut s) => {
                let t0 = Instant::now();
                {
                    let mut c = shared.borrow_mut();
                    c.idle_open += 1;
                    c.idle_opened += 1;
                }
                let refused = until_closed(&mut s).await;
                let mut c = shared.borrow_mut();
                c.idle_open -= 1;
                c.idle_life.record(t0.elapsed().as_micros() as u64);
                if refused {
                    c.idle_503 += 1;
                }
            }
            Err(e) => {
                shared
                    .borrow_mut()
                    .idle_failed
                    .add(&format!("{}", e.kind()));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One slow-request slot: a request line, then a byte of header every `slow_every`, until the
/// relay closes the connection; then again.
async fn slow(opts: Rc<Options>, i: usize, shared: Shared) {
    const HEAD: &[u8] = b"Host: relay\r\nX-Slow: ";
    let from = source(block::SLOW, i, opts.idle_per_address);
    tokio::time::sleep(opts.slow_every.mul_f64(i as f64 / opts.slow.max(1) as f64)).await;
    loop {
        let mut s = match connect_from(from, opts.addr).await {
            Ok(s) => s,
            Err(e) => {
                shared
                    .borrow_mut()
                    .slow_failed
                    .add(&format!("{}", e.kind()));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let t0 = Instant::now();
        {
            let mut c = shared.borrow_mut();
            c.slow_open += 1;
            c.slow_opened += 1;
        }
        let mut sent = 0usize;
        let mut buf = [0u8; 1024];
        let mut next: &[u8] = b"GET / HTTP/1.1\r\n";
        loop {
            if s.write_all(next).await.is_err() {
                break;
            }
            shared.borrow_mut().slow_bytes += next.len() as u64;
            next = match HEAD.get(sent) {
                Some(b) => std::slice::from_ref(b),
                None => b"a",
            };
            sent += 1;
            tokio::select! {
                r = s.read(&mut buf) => if !matches!(r, Ok(n) if n > 0) { break },
                _ = tokio::time::sleep(opts.slow_every) => {}
            }
        }
        let mut c = shared.borrow_mut();
        c.slow_open -= 1;
        c.slow_life.record(t0.elapsed().as_micros() as u64);
    }
}

/// A delegate that sends `ping` messages as fast as its connection takes them, and reads the
/// `pong`s; connects again when the relay closes it.
async fn ping_flood(opts: Rc<Options>, i: usize, shared: Shared) {
    const BATCH: usize = 256;
    let from = Ipv4Addr::new(127, block::FLOOD, 1, i as u8 + 1);
    loop {
        let o = match listener(from, opts.addr, None).await {
            Ok(o) => o,
            Err(e) => {
                shared
                    .borrow_mut()
                    .flood_ended
                    .add(&format!("connect: {e}"));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let (mut rd, mut wr) = o.stream.into_split();
        let write = async {
            let mut t: u64 = 0;
            let mut batch = Vec::with_capacity(BATCH * 40);
            loop {
                batch.clear();
                for _ in 0..BATCH {
                    t += 1;
                    masked_into(
                        &mut batch,
                        opcode::TEXT,
                        format!(r#"{{"type":"ping","t":{t}}}"#).as_bytes(),
                    );
                }
                if let Err(e) = wr.write_all(&batch).await {
                    return format!("write: {}", e.kind());
                }
                shared.borrow_mut().pings += BATCH as u64;
            }
        };
        let read = async {
            let mut buf = o.rest;
            let mut chunk = vec![0u8; 64 * 1024];
            let mut error = None;
            loop {
                let mut at = 0;
                let mut pongs = 0;
                loop {
                    match next_frame(&buf[at..]) {
                        Ok(Some((frame, used))) => {
                            match frame {
                                Frame::Text(t) if t.starts_with(br#"{"type":"pong""#) => pongs += 1,
                                Frame::Text(t) => error = super::message_kind(t).1.or(error),
                                Frame::Close(c) => {
                                    return error
                                        .unwrap_or_else(|| format!("close {}", c.unwrap_or(0)))
                                }
                                _ => {}
                            }
                            at += used;
                        }
                        Ok(None) => break,
                        Err(e) => return e,
                    }
                }
                buf.drain(..at);
                shared.borrow_mut().pongs += pongs;
                match rd.read(&mut chunk).await {
                    Ok(0) => return error.unwrap_or_else(|| "closed".into()),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) => return format!("read: {}", e.kind()),
                }
            }
        };
        let why = tokio::select! {
            w = write => w,
            r = read => r,
        };
        shared.borrow_mut().flood_ended.add(&why);
    }
}

/// A client that sends what the relay refuses, reads the refusal and comes again.
async fn garbage(opts: Rc<Options>, i: usize, shared: Shared) {
    let from = Ipv4Addr::new(127, block::FLOOD, 2, i as u8 + 1);
    let mut n: u64 = 0;
    loop {
        n += 1;
        let attempt = async {
            let (mut s, rest, msg) = match n % 3 {
                // Not JSON, as the first message.
                0 => {
                    let mut s = connect_from(from, opts.addr)
                        .await
                        .map_err(|e| format!("connect: {}", e.kind()))?;
                    let rest = upgrade(&mut s, opts.addr).await?;
                    (s, rest, masked(opcode::TEXT, b"\x7fnot json at all"))
                }
                // An unknown message type after hello.
                1 => {
                    let o = listener(from, opts.addr, None).await?;
                    (
                        o.stream,
                        o.rest,
                        masked(opcode::TEXT, br#"{"type":"shout","text":"aaaa"}"#),
                    )
                }
                // Audio from a delegate.
                _ => {
                    let o = listener(from, opts.addr, None).await?;
                    (o.stream, o.rest, masked(opcode::BINARY, &[1u8; 40]))
                }
            };
            s.write_all(&msg)
                .await
                .map_err(|e| format!("write: {}", e.kind()))?;
            shared.borrow_mut().garbage_sent += 1;
            Ok::<_, String>(refusal(&mut s, rest).await)
        };
        let answer = match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(a)) | Ok(Err(a)) => a,
            Err(_) => "timeout".into(),
        };
        shared.borrow_mut().garbage_answers.add(&answer);
    }
}

/// Reads until the relay closes; returns the code of the error it sent, else how it closed.
async fn refusal(s: &mut TcpStream, mut buf: Vec<u8>) -> String {
    let mut chunk = [0u8; 4096];
    let mut error = None;
    loop {
        let mut at = 0;
        while let Ok(Some((frame, used))) = next_frame(&buf[at..]) {
            match frame {
                Frame::Text(t) => error = super::message_kind(t).1.or(error),
                Frame::Close(c) => {
                    return error.unwrap_or_else(|| format!("close {}", c.unwrap_or(0)))
                }
                _ => {}
            }
            at += used;
        }
        buf.drain(..at);
        match s.read(&mut chunk).await {
            Ok(0) => return error.unwrap_or_else(|| "closed".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return format!("read: {}", e.kind()),
        }
    }
}

/// One guessing loop of address `a`: `hello` as an interpreter of a booth with a wrong secret,
/// the answer read, again at once.
async fn guess(opts: Rc<Options>, a: usize, l: usize, shared: Shared) {
    let from = Ipv4Addr::new(127, block::GUESS, 0, a as u8 + 1);
    let mut n = l as u64;
    loop {
        n += opts.guess_loops as u64;
        let booth = n % opts.booths.max(1) as u64;
        let attempt = async {
            let mut s = connect_from(from, opts.addr)
                .await
                .map_err(|e| format!("connect: {}", e.kind()))?;
            let rest = upgrade(&mut s, opts.addr).await?;
            let hello = serde_json::json!({"type": "hello", "role": "interpreter",
                "booth": format!("b{booth}"), "console": "g", "secret": format!("guess-{n:012}")})
            .to_string();
            s.write_all(&masked(opcode::TEXT, hello.as_bytes()))
                .await
                .map_err(|e| format!("write: {}", e.kind()))?;
            shared.borrow_mut().guesses += 1;
            Ok::<_, String>(refusal(&mut s, rest).await)
        };
        let answer = match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(a)) | Ok(Err(a)) => a,
            Err(_) => "timeout".into(),
        };
        let failed = answer.starts_with("connect");
        shared.borrow_mut().guess_answers.add(&answer);
        if failed {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
