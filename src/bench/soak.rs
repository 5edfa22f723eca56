//! The soak benchmark: the relay carrying a show for minutes on end while hostile clients press
//! on its admission bounds, deadlines and slowed secrets (`docs/PROTOCOL.md` 1.1-1.3).
//!
//! Two parts, each meant to run as a process of its own (`boothcast bench-soak --part
//! healthy|hostile`; `scripts/soak.sh` runs them against a relay serving `config/bench.toml`):
//! - [`healthy`]: the floor and booths of two consoles each, handing the microphone over every
//!   few seconds; listeners that keep a channel and read every frame (a gap in a channel's
//!   sequence is a lost frame; one listener in `probe_every` measures the delay relay →
//!   listener from the relay's time stamped in each frame header); listeners that come and go;
//!   a console per booth that reconnects every few seconds and times TCP connect → `welcome`;
//!   the relay's CPU time and resident memory from `/proc`, its counters from `/metrics`.
//! - [`hostile`]: connections that never send a byte, requests sent a byte at a time, a client
//!   sending `ping` as fast as it can, one sending messages the relay refuses, and wrong booth
//!   secrets from a few addresses as fast as they are answered.
//!
//! Clients come from many loopback addresses (`127.B.x.y`, bound before connecting), so the
//! relay sees them as different hosts and applies its per-address bounds as on a venue LAN.
//! Nothing here asserts a time: it measures and reports.

pub mod healthy;
pub mod hostile;

pub use super::ws::{
    connect_from, masked, masked_into, next_frame, opcode, upgrade, Frame, CONNECT_TIMEOUT,
};
use super::Histogram;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Which load a process makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Healthy,
    Hostile,
}

impl std::str::FromStr for Part {
    type Err = String;

    fn from_str(s: &str) -> Result<Part, String> {
        match s {
            "healthy" => Ok(Part::Healthy),
            "hostile" => Ok(Part::Hostile),
            _ => Err(format!("`{s}`: the part is `healthy` or `hostile`")),
        }
    }
}

/// Second byte of the source addresses of each kind of client (`127.B.x.y`).
pub mod block {
    /// Listeners that keep their channel.
    pub const LISTENERS: u8 = 10;
    /// Listeners that come and go.
    pub const CHURN: u8 = 11;
    /// Booth consoles (one address per booth, as a booth's laptop) and the floor.
    pub const BOOTHS: u8 = 12;
    /// Connections that never send a byte.
    pub const IDLE: u8 = 20;
    /// Requests sent a byte at a time.
    pub const SLOW: u8 = 21;
    /// The `ping` flood and the garbage sender.
    pub const FLOOD: u8 = 22;
    /// Secret guessers.
    pub const GUESS: u8 = 23;
}

/// The source address of the `index`-th client of a kind, `per` clients to an address:
/// `127.block.x.y` with `y` in 1..=250.
pub fn source(block: u8, index: usize, per: usize) -> Ipv4Addr {
    let a = index / per.max(1);
    Ipv4Addr::new(127, block, (a / 250) as u8, (a % 250 + 1) as u8)
}

/// The `type` and, for an error, the `code` of a control message.
pub fn message_kind(text: &[u8]) -> (String, Option<String>) {
    let v: serde_json::Value = serde_json::from_slice(text).unwrap_or_default();
    let kind = v["type"].as_str().unwrap_or("?").to_string();
    let code = v["code"].as_str().map(str::to_string);
    (kind, code)
}

/// A delegate's connection that the relay welcomed.
pub struct Opened {
    pub stream: TcpStream,
    /// Bytes read past `welcome` (later messages, frames).
    pub rest: Vec<u8>,
    /// From the start of the TCP connect to `welcome`.
    pub took: Duration,
}

/// Opens a delegate's WebSocket from `from`, says `hello` (on `channel` when given) and waits
/// for `welcome`, within [`CONNECT_TIMEOUT`]. `Err` is a short label of what came instead
/// (the error code of a refusal, `503`, `closed`, `timeout`), for counting.
pub async fn listener(
    from: Ipv4Addr,
    relay: SocketAddr,
    channel: Option<&str>,
) -> Result<Opened, String> {
    let t0 = Instant::now();
    let open = async {
        let mut stream = connect_from(from, relay)
            .await
            .map_err(|e| format!("connect: {}", e.kind()))?;
        let mut buf = upgrade(&mut stream, relay).await.map_err(|e| {
            if e.contains(" 503 ") {
                "503".to_string()
            } else {
                e
            }
        })?;
        let hello = serde_json::json!({"type": "hello", "role": "listener", "channel": channel,
            "client": "boothcast bench-soak"})
        .to_string();
        stream
            .write_all(&masked(opcode::TEXT, hello.as_bytes()))
            .await
            .map_err(|e| format!("write: {}", e.kind()))?;
        let mut chunk = [0u8; 4096];
        loop {
            while let Some((frame, used)) = next_frame(&buf)? {
                match frame {
                    Frame::Text(t) => match message_kind(t) {
                        (k, _) if k == "welcome" => {
                            buf.drain(..used);
                            return Ok((stream, buf));
                        }
                        (_, Some(code)) => return Err(code),
                        _ => {}
                    },
                    Frame::Close(code) => {
                        return Err(format!("closed {}", code.unwrap_or_default()))
                    }
                    _ => {}
                }
                buf.drain(..used);
            }
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read: {}", e.kind()))?;
            if n == 0 {
                return Err("closed".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let (stream, rest) = tokio::time::timeout(CONNECT_TIMEOUT, open)
        .await
        .map_err(|_| "timeout".to_string())??;
    Ok(Opened {
        stream,
        rest,
        took: t0.elapsed(),
    })
}

/// Seconds the threads of process `pid` have spent runnable but waiting for a CPU (from
/// `/proc/PID/task/*/schedstat`, summed over the threads alive now): how much other load on
/// the machine held the process up.
pub fn run_queue_wait(pid: u32) -> Option<f64> {
    let mut ns: u64 = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        ns += stat
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(ns as f64 / 1e9)
}

/// `{count, p50, p99, max}` of a histogram of microseconds, in milliseconds.
pub fn summary_ms(h: &Histogram) -> serde_json::Value {
    let ms = |us: u64| (us as f64 / 10.0).round() / 100.0;
    serde_json::json!({
        "count": h.count(),
        "p50_ms": ms(h.quantile(0.5)),
        "p99_ms": ms(h.quantile(0.99)),
        "p999_ms": ms(h.quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

/// Counts by label, bounded: past 32 labels the rest are counted as `other`.
#[derive(Debug, Default, Clone)]
pub struct Tally(std::collections::BTreeMap<String, u64>);

impl Tally {
    pub fn add(&mut self, label: &str) {
        if self.0.len() >= 32 && !self.0.contains_key(label) {
            *self.0.entry("other".into()).or_default() += 1;
        } else {
            *self.0.entry(label.to_string()).or_default() += 1;
        }
    }

    pub fn get(&self, label: &str) -> u64 {
        self.0.get(label).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return write!(f, "none");
        }
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k} {v}")).collect();
        write!(f, "{}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_spread_over_addresses() {
        assert_eq!(source(10, 0, 10), Ipv4Addr::new(127, 10, 0, 1));
        assert_eq!(source(10, 9, 10), Ipv4Addr::new(127, 10, 0, 1));
        assert_eq!(source(10, 10, 10), Ipv4Addr::new(127, 10, 0, 2));
        assert_eq!(source(20, 250 * 50, 50), Ipv4Addr::new(127, 20, 1, 1));
    }

    #[test]
    fn run_queue_wait_reads_this_process() {
        assert!(run_queue_wait(std::process::id()).is_some());
    }

    #[test]
    fn masked_frames_carry_their_length() {
        let f = masked(opcode::PONG, b"abc");
        assert_eq!(f, vec![0x8A, 0x83, 0, 0, 0, 0, b'a', b'b', b'c']);
        let long = masked(opcode::TEXT, &[b'x'; 200]);
        assert_eq!(&long[..4], &[0x81, 0x80 | 126, 0, 200]);
    }
}
