//! The floor, booth and listener clients that work from and to audio files.
//!
//! Senders read a WAV, encode it with Opus and send one frame per frame duration, as a
//! microphone would: the capture time of a frame is when its first sample was "heard", and it
//! leaves once its last sample was. Listeners decode and write what a delegate would hear,
//! placed in time by the frames' sequence numbers behind a small jitter margin, gaps kept.
//!
//! Every client prints what happens as JSON lines on standard output (the relay's messages as
//! they come, plus `started`, `summary` and `disconnected` of its own), so scripts and tests can
//! follow it; logs go to standard error.

use crate::audio::{self, encode, Decoder, Encoder, WavWriter};
use crate::device::{self, Capture, Player};
use crate::protocol::{
    level_byte, ClientMessage, ErrorCode, FrameHeader, Role, ServerMessage, Source, CHANNEL_UNSET,
    HEADER_LEN,
};
use crate::relay::unix_micros;
use futures_util::{SinkExt, StreamExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Longest wait for a connection to the relay: the TCP (and TLS) connection, the WebSocket
/// upgrade, the hello and the relay's welcome, all together. A path that dies while connecting
/// is given up after this long, and the next attempt follows the back-off.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a connected client sends the relay a WebSocket ping, which the relay's WebSocket
/// layer answers with a pong. It keeps something arriving on a working path even when the relay
/// has nothing to send (a listener's channel carrying silence), so that silence means a dead path.
pub const PING_EVERY: Duration = Duration::from_secs(1);
/// A connection from which nothing at all (a frame, a message, a pong) arrived for this long is
/// dead: the path died without a FIN or a RST (Wi-Fi out of range, a NAT entry gone, a cable
/// pulled), which TCP itself would notice only after many minutes. The client closes it and
/// reconnects with its back-off. 4 s spans three or four pings, and on a working path a pong
/// comes back within a round trip of each: only the answers to three pings in a row all lost
/// (or each held up for seconds; venue Wi-Fi delays a few packets by half a second) end a
/// connection that was alive. Detection, the first back-off and a new handshake still come
/// within about 5 s. It is longer than the relay's own deadline for booths and the floor (3 s),
/// so the relay has let go of a dead console (and started its channel's hold) by the time the
/// console comes back.
pub const DEAD_PATH: Duration = Duration::from_secs(4);
/// Reconnection back-off: doubles from the first to the last, each wait drawn at random
/// within ±50 % of it ([`Retry`]).
pub const BACKOFF_FIRST: Duration = Duration::from_millis(200);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The first attempt after a connection was lost comes within this long, at a random moment:
/// when a relay dies, the thousands of listeners it had arrive at the survivors spread over it
/// instead of all in the same millisecond.
pub const FIRST_RETRY_SPREAD: Duration = Duration::from_millis(300);
/// Most relay addresses a client keeps: those given, then those the relays told it in
/// `welcome` (a cluster has a handful of nodes).
pub const MAX_RELAYS: usize = 16;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("`{0}` is not a relay address: use ws://HOST:PORT, http://HOST:PORT, or wss:// / https:// for a relay serving TLS")]
    Url(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the relay refused: {message} ({code:?})")]
    Refused { code: ErrorCode, message: String },
    #[error("connection lost: {0}")]
    Lost(String),
    #[error(transparent)]
    Audio(#[from] audio::Error),
    #[error(transparent)]
    Device(#[from] device::Error),
    #[error(transparent)]
    Input(#[from] crate::input::Error),
}

impl Error {
    /// A refusal that a retry will not change (a wrong secret, an unknown booth, ...).
    fn is_final(&self) -> bool {
        matches!(
            self,
            Error::Url(_)
                | Error::Tls(_)
                | Error::Audio(_)
                | Error::Device(_)
                | Error::Input(_)
                | Error::Refused {
                    code: ErrorCode::Unauthorized
                        | ErrorCode::UnknownBooth
                        | ErrorCode::UnknownChannel
                        | ErrorCode::BadMessage
                        | ErrorCode::BadFrame
                        | ErrorCode::Forbidden
                        | ErrorCode::Replaced,
                    ..
                }
        )
    }
}

/// The WebSocket address of a relay given as `ws://` or `http://` (`wss://` or `https://` for
/// a relay serving TLS).
pub fn ws_url(server: &str) -> Result<String, Error> {
    let (scheme, rest) = server
        .split_once("://")
        .ok_or_else(|| Error::Url(server.to_string()))?;
    let scheme = match scheme {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        _ => return Err(Error::Url(server.to_string())),
    };
    // A base address (`/` or a path ending in `/`, as a relay behind a proxy tells its own)
    // gets `ws` added; any other path is the WebSocket's own.
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) if p.ends_with('/') => (h, format!("/{p}ws")),
        Some((h, p)) if !p.is_empty() => (h, format!("/{p}")),
        Some((h, _)) => (h, "/ws".to_string()),
        None => (rest, "/ws".to_string()),
    };
    if host.is_empty() {
        return Err(Error::Url(server.to_string()));
    }
    Ok(format!("{scheme}://{host}{path}"))
}

/// The relays a client may connect to, tried in turn: the addresses given (`--server`, once
/// or more), then those the relays told it in `welcome` (`relays`, the live nodes of a
/// cluster). A connection that fails or is lost moves the client on to the next one.
#[derive(Debug, Clone)]
pub struct Relays {
    /// WebSocket addresses (`ws_url`), no two alike; at most [`MAX_RELAYS`].
    urls: Vec<String>,
    current: usize,
}

impl Relays {
    /// The addresses given, as `ws://`, `http://`, `wss://` or `https://` URLs; at least one.
    /// Errors with [`Error::Url`] for an address that is not a relay's (or none at all).
    pub fn new<S: AsRef<str>>(servers: &[S]) -> Result<Relays, Error> {
        let mut relays = Relays {
            urls: Vec::new(),
            current: 0,
        };
        for s in servers {
            let url = ws_url(s.as_ref())?;
            if !relays.urls.contains(&url) && relays.urls.len() < MAX_RELAYS {
                relays.urls.push(url);
            }
        }
        if relays.urls.is_empty() {
            return Err(Error::Url(String::new()));
        }
        Ok(relays)
    }

    /// The WebSocket address to connect to now.
    pub fn current(&self) -> &str {
        &self.urls[self.current]
    }

    /// Moves on to the next address, round the list.
    pub fn advance(&mut self) {
        self.current = (self.current + 1) % self.urls.len();
    }

    /// Adds the addresses a relay told (`welcome`'s `relays`) that are not known yet, up to
    /// [`MAX_RELAYS`] in all; addresses that are not a relay's are left out.
    pub fn learn(&mut self, told: &[String]) {
        for t in told {
            if self.urls.len() >= MAX_RELAYS {
                break;
            }
            match ws_url(t) {
                Ok(url) if !self.urls.contains(&url) => self.urls.push(url),
                _ => {}
            }
        }
    }

    /// How many addresses there are.
    pub fn len(&self) -> usize {
        self.urls.len()
    }

    /// Never true (there is at least one address); for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }
}

/// When to try again: the first attempt after a loss within [`FIRST_RETRY_SPREAD`] at random,
/// then the back-off (doubling from [`BACKOFF_FIRST`] to [`BACKOFF_MAX`]) within ±50 % at
/// random. A connection the relay welcomed starts it over (`reset`).
#[derive(Debug, Clone)]
pub struct Retry {
    attempts: u32,
    backoff: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            attempts: 0,
            backoff: BACKOFF_FIRST,
        }
    }
}

impl Retry {
    /// The wait before the next attempt.
    pub fn next(&mut self, rng: &mut impl rand::Rng) -> Duration {
        self.attempts += 1;
        if self.attempts == 1 {
            return FIRST_RETRY_SPREAD.mul_f64(rng.random_range(0.0..1.0));
        }
        let wait = self.backoff.mul_f64(rng.random_range(0.5..1.5));
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        wait
    }

    /// A connection was welcomed: the next loss starts over.
    pub fn reset(&mut self) {
        *self = Retry::default();
    }
}

/// What a booth session tells a user interface in front of it (`tui`), instead of JSON lines.
#[derive(Debug, Clone)]
pub enum Report {
    Connecting,
    Connected,
    /// The connection was lost; the next attempt comes after `retry_in`.
    Disconnected {
        reason: String,
        retry_in: Duration,
    },
    Message(ServerMessage),
    /// The levels (-dBFS bytes) of a frame of the console's own sound, as it leaves.
    Sent {
        rms: u8,
        peak: u8,
    },
    /// The header of a frame of what the console hears (its input).
    Heard(FrameHeader),
    /// Capture overruns of the input device since the start.
    Overruns(u64),
}

/// A user interface in front of a booth console: its commands in, what happens out.
pub struct Ui {
    /// Commands to send to the relay; the end of the queue means quit.
    pub commands: mpsc::Receiver<ClientMessage>,
    /// Sent with `try_send`: a full queue drops reports, the sound never waits for a screen.
    pub reports: mpsc::Sender<Report>,
}

/// Who a sender tells what happens: standard output (JSON lines), or a user interface.
#[derive(Clone, Default)]
struct Front(Option<mpsc::Sender<Report>>);

impl Front {
    /// A message of the relay: a JSON line (on standard error when standard output carries
    /// sound), or a report.
    fn text(&self, text: &str) {
        match &self.0 {
            None => line(text),
            Some(tx) => {
                if let Ok(msg) = ServerMessage::parse(text) {
                    let _ = tx.try_send(Report::Message(msg));
                }
            }
        }
    }

    /// A JSON line of the client's own (a user interface gets a `report` instead).
    fn line(&self, value: serde_json::Value) {
        if self.0.is_none() {
            emit(value);
        }
    }

    fn report(&self, report: impl FnOnce() -> Report) {
        if let Some(tx) = &self.0 {
            let _ = tx.try_send(report());
        }
    }
}

/// Certificate authorities trusted for `wss://`: the system's, and the PEM file named by
/// `BOOTHCAST_CA_CERT` (a venue's own authority, or a relay's self-signed certificate).
pub const CA_CERT_ENV: &str = "BOOTHCAST_CA_CERT";

fn tls_config() -> Result<std::sync::Arc<tokio_rustls::rustls::ClientConfig>, Error> {
    let extra = std::env::var_os(CA_CERT_ENV).map(PathBuf::from);
    crate::tls::client_config(extra.as_deref()).map_err(|e| Error::Tls(e.to_string()))
}

/// A failed connection; a certificate that is not trusted is final (retrying will not change
/// it), a relay not answering is not.
fn connect_error(url: &str, e: tokio_tungstenite::tungstenite::Error) -> Error {
    use tokio_tungstenite::tungstenite::Error as WsError;
    if let WsError::Io(io) = &e {
        if let Some(tls) = io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<tokio_rustls::rustls::Error>())
        {
            let hint = if tls.to_string().contains("CaUsedAsEndEntity") {
                // openssl req -x509 marks a certificate a CA unless told otherwise.
                "the relay's certificate says it is a certificate authority: make it with \
                 `-addext basicConstraints=critical,CA:FALSE` (README, HTTPS)"
                    .to_string()
            } else {
                format!("trust the relay's certificate with {CA_CERT_ENV}=FILE")
            };
            return Error::Tls(format!("{url}: {tls} ({hint})"));
        }
    }
    Error::Connect {
        url: url.to_string(),
        reason: e.to_string(),
    }
}

/// Connects and says hello; returns once the relay welcomed us, all within `CONNECT_TIMEOUT`,
/// with the relay addresses the welcome told (a cluster's live nodes; none from a relay alone).
async fn open(
    url: &str,
    hello: &ClientMessage,
    front: &Front,
) -> Result<(Link, Vec<String>), Error> {
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    let timed_out = || Error::Connect {
        url: url.to_string(),
        reason: format!(
            "no answer from the relay within {} s",
            CONNECT_TIMEOUT.as_secs()
        ),
    };
    // No Nagle: a frame sent while the relay delays its ACK (it does once it has sent us
    // something, such as its ping each second) would otherwise wait up to 40 ms.
    let tls = match url.starts_with("wss://") {
        true => Some(tokio_tungstenite::Connector::Rustls(tls_config()?)),
        false => None,
    };
    let connect = tokio_tungstenite::connect_async_tls_with_config(url, None, true, tls);
    let (mut ws, _) = tokio::time::timeout_at(deadline, connect)
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| connect_error(url, e))?;
    tokio::time::timeout_at(deadline, ws.send(Message::Text(hello.to_json().into())))
        .await
        .map_err(|_| Error::Lost("the relay took no hello".into()))?
        .map_err(|e| Error::Lost(e.to_string()))?;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| Error::Lost("no welcome from the relay".into()))?;
        match msg {
            Some(Ok(Message::Text(text))) => {
                front.text(&text);
                match ServerMessage::parse(&text) {
                    Ok(ServerMessage::Welcome { relays, .. }) => {
                        return Ok((Link::new(ws), relays))
                    }
                    Ok(ServerMessage::Error { code, message, .. }) => {
                        return Err(Error::Refused { code, message })
                    }
                    _ => {}
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(Error::Lost(e.to_string())),
            None => return Err(Error::Lost("closed before welcome".into())),
        }
    }
}

/// A connection to the relay that notices a dead path. Every client reads and writes through
/// one: while it waits for the relay it pings it every `PING_EVERY`, and it ends the connection
/// once nothing at all arrived for `DEAD_PATH`, or a write could not be made before that.
struct Link {
    ws: Ws,
    /// When something (anything) last arrived.
    heard: tokio::time::Instant,
    ping: tokio::time::Interval,
}

impl Link {
    fn new(ws: Ws) -> Link {
        let now = tokio::time::Instant::now();
        let mut ping = tokio::time::interval_at(now + PING_EVERY, PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Link {
            ws,
            heard: now,
            ping,
        }
    }

    /// The time by which something must arrive.
    fn deadline(&self) -> tokio::time::Instant {
        self.heard + DEAD_PATH
    }

    fn dead() -> Error {
        Error::Lost(format!(
            "no answer from the relay for {} s",
            DEAD_PATH.as_secs()
        ))
    }

    /// The next message from the relay: text, binary, or its own ping or pong (which need no
    /// answer from the caller: the WebSocket layer answers pings). Errors with `Error::Lost`
    /// when the relay closed, on a read error, and when the path is dead. Cancel-safe: a ping
    /// cut short by the caller's `select!` stays queued and leaves with the next write.
    async fn next(&mut self) -> Result<Message, Error> {
        loop {
            let deadline = self.deadline();
            tokio::select! {
                msg = self.ws.next() => {
                    self.heard = tokio::time::Instant::now();
                    return match msg {
                        Some(Ok(Message::Close(_))) | None => {
                            Err(Error::Lost("the relay closed the connection".into()))
                        }
                        Some(Ok(msg)) => Ok(msg),
                        Some(Err(e)) => Err(Error::Lost(e.to_string())),
                    };
                }
                _ = self.ping.tick() => self.send(Message::Ping(Default::default())).await?,
                _ = tokio::time::sleep_until(deadline) => return Err(Self::dead()),
            }
        }
    }

    /// Sends a message; a write that cannot be made before the deadline means a dead path.
    async fn send(&mut self, msg: Message) -> Result<(), Error> {
        tokio::time::timeout_at(self.deadline(), self.ws.send(msg))
            .await
            .map_err(|_| Self::dead())?
            .map_err(|e| Error::Lost(e.to_string()))
    }

    async fn text(&mut self, msg: &ClientMessage) -> Result<(), Error> {
        self.send(Message::Text(msg.to_json().into())).await
    }

    /// Closes the connection, waiting at most a second: on a dead path nothing would come.
    async fn close(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close(None)).await;
    }
}

/// The client's JSON lines go to standard error instead of standard output when standard
/// output carries sound (`listen --output-file -`).
static LINES_TO_STDERR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn emit(value: serde_json::Value) {
    line(&value.to_string());
}

/// A JSON line of the client: standard output, or standard error when that carries sound.
fn line(text: &str) {
    if LINES_TO_STDERR.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
}

/// Where a sender's sound comes from.
pub enum Input {
    /// A sound file (paced in real time) or a live stream: a pipe, a FIFO, or standard input
    /// (`-`), sent as it arrives (`input`).
    File { path: PathBuf, looped: bool },
    /// An audio input device by name (`boothcast devices`), or the default one.
    Device { name: Option<String> },
}

/// What a sender needs to produce frames.
pub struct SenderOptions {
    pub input: Input,
    pub encode: encode::Config,
}

/// The sender's microphone: a file paced as a microphone would deliver it, or a real device.
enum Mic {
    File(Box<crate::input::Feed>),
    /// `epoch`: the wall-clock time (µs) read once at an instant; capture times are it plus
    /// monotonic time, so a change of the system clock does not move them.
    Device {
        capture: Box<Capture>,
        frame: usize,
        epoch: (Instant, u64),
    },
}

/// How often a device microphone is looked at for a full frame: 1 ms is small beside a
/// 10-20 ms frame, and the ring between the device and here has no way to wake a task
/// without locking in the realtime callback.
const MIC_POLL: Duration = Duration::from_millis(1);

impl Mic {
    /// The next frame of sound and the wall-clock time of its first sample; `None` once a
    /// file has ended.
    async fn next(&mut self) -> Result<Option<(Vec<f32>, u64)>, Error> {
        match self {
            Mic::File(feed) => Ok(feed.next().await),
            Mic::Device {
                capture,
                frame,
                epoch,
            } => loop {
                if let Some(pcm) = capture.take(*frame)? {
                    let now_us = epoch.1 + epoch.0.elapsed().as_micros() as u64;
                    let capture_us = now_us.saturating_sub(*frame as u64 * 1000 / 48);
                    return Ok(Some((pcm, capture_us)));
                }
                tokio::time::sleep(MIC_POLL).await;
            },
        }
    }

    /// After an outage, what was said meanwhile is gone: move on to now.
    fn skip_to_now(&mut self) -> Result<(), Error> {
        match self {
            Mic::File(feed) => feed.skip_to_now(),
            Mic::Device { capture, .. } => capture.discard()?,
        }
        Ok(())
    }

    /// While not connected: a device keeps being read (and what it hears dropped), so its
    /// ring does not overflow and count overruns that no listener would have heard.
    async fn idle(&mut self) -> Result<(), Error> {
        match self {
            Mic::File(feed) => {
                feed.idle().await;
                Ok(())
            }
            Mic::Device { capture, .. } => loop {
                capture.discard()?;
                tokio::time::sleep(Duration::from_millis(10)).await;
            },
        }
    }

    /// Capture overruns so far, for a device.
    fn overruns(&self) -> Option<u64> {
        match self {
            Mic::File(feed) => (feed.kind() == crate::input::Kind::Live).then(|| feed.overruns()),
            Mic::Device { capture, .. } => Some(capture.overruns()),
        }
    }

    fn device(&self) -> Option<&str> {
        match self {
            Mic::File(_) => None,
            Mic::Device { capture, .. } => Some(capture.name()),
        }
    }
}

struct Sender {
    mic: Mic,
    encoder: Encoder,
    start_us: u64,
    sequence: u32,
}

impl Sender {
    fn new(opts: &SenderOptions) -> Result<Sender, Error> {
        let encoder = Encoder::new(&opts.encode)?;
        let frame = encoder.frame_samples();
        let mic = match &opts.input {
            Input::File { path, looped } => {
                Mic::File(Box::new(crate::input::open(path, *looped, frame)?))
            }
            Input::Device { name } => Mic::Device {
                capture: Box::new(Capture::open(name.as_deref())?),
                frame,
                epoch: (Instant::now(), unix_micros()),
            },
        };
        let start_us = match &mic {
            Mic::File(feed) => feed.start_us(),
            Mic::Device { epoch, .. } => epoch.1,
        };
        Ok(Sender {
            mic,
            encoder,
            start_us,
            sequence: 0,
        })
    }

    /// Waits for the next frame and returns it encoded, or `None` at the end of the file.
    async fn next_frame(&mut self, source: Source) -> Result<Option<bytes::Bytes>, Error> {
        let Some((pcm, capture_us)) = self.mic.next().await? else {
            return Ok(None);
        };
        let level = audio::level(&pcm);
        let opus = self.encoder.encode(&pcm)?;
        let header = FrameHeader {
            source,
            channel: CHANNEL_UNSET,
            sequence: self.sequence,
            capture_us,
            relay_us: 0,
            rms: level_byte(level.rms),
            peak: level_byte(level.peak),
        };
        self.sequence = self.sequence.wrapping_add(1);
        Ok(Some(header.frame(&opus)))
    }
}

/// Runs a sender (floor or booth) until its file ends, reconnecting with back-off, to the next
/// of `relays` each time. `commands` are console command lines (booth only); `go_live` is sent
/// once, on the first connection only: a reconnecting console never goes on air by itself.
#[allow(clippy::too_many_arguments)]
async fn run_sender(
    mut relays: Relays,
    hello: ClientMessage,
    source: Source,
    opts: SenderOptions,
    mut commands: Option<mpsc::Receiver<String>>,
    mut ui: Option<Ui>,
    mut go_live: Option<ClientMessage>,
    monitor: Option<Monitor>,
) -> Result<(), Error> {
    let mut sender = Sender::new(&opts)?;
    let mut player = open_monitor(monitor)?;
    let front = Front(ui.as_ref().map(|ui| ui.reports.clone()));
    front.line(serde_json::json!({
        "type": "started",
        "capture_start_us": sender.start_us,
        "frame_ms": opts.encode.frame.ms(),
        "input_device": sender.mic.device(),
        "output_device": player.as_ref().map(|p| p.name()),
    }));
    let mut retry = Retry::default();
    loop {
        front.report(|| Report::Connecting);
        let url = relays.current().to_string();
        let connect = async {
            tokio::select! {
                ws = open(&url, &hello, &front) => ws,
                e = sender.mic.idle() => Err(e.err().unwrap_or_else(|| Error::Lost("capture ended".into()))),
            }
        };
        let result = match connect.await {
            Ok((mut link, told)) => {
                relays.learn(&told);
                retry.reset();
                front.report(|| Report::Connected);
                sender.mic.skip_to_now()?;
                // Taken before it is sent: a connection lost right here does not send it again.
                let live = match go_live.take() {
                    Some(live) => link.text(&live).await,
                    None => Ok(()),
                };
                match live {
                    Ok(()) => {
                        sender_session(
                            &mut link,
                            &mut sender,
                            source,
                            commands.as_mut(),
                            ui.as_mut().map(|ui| &mut ui.commands),
                            &front,
                            player.as_mut(),
                        )
                        .await
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                front.line(serde_json::json!({"type": "ended", "overruns": sender.mic.overruns()}));
                return Ok(());
            }
            Err(e) if e.is_final() => return Err(e),
            Err(e) => {
                let wait = retry.next(&mut rand::rng());
                relays.advance();
                front.line(serde_json::json!({
                    "type": "disconnected",
                    "reason": e.to_string(),
                    "retry_in_ms": wait.as_millis() as u64,
                    "next": relays.current(),
                }));
                front.report(|| Report::Disconnected {
                    reason: e.to_string(),
                    retry_in: wait,
                });
                tracing::warn!(
                    next = relays.current(),
                    "{e}; reconnecting in {} ms",
                    wait.as_millis()
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    e = sender.mic.idle() => e?,
                }
            }
        }
    }
}

/// What the console plays in its headphones: its chosen input (the floor or a relay
/// channel), as the relay sends it.
pub struct Monitor {
    /// Output device by name (`boothcast devices`), or the default one.
    pub device: Option<String>,
    /// 0.0 to 2.0, and turned while it plays (the console's keys, `volume V` on stdin).
    pub volume: device::Volume,
}

fn open_monitor(monitor: Option<Monitor>) -> Result<Option<Player>, Error> {
    let Some(m) = monitor else {
        return Ok(None);
    };
    Ok(Some(Player::open(
        m.device.as_deref(),
        m.volume,
        crate::jitter::Config::default(),
    )?))
}

/// Capture overruns go to the relay (`stats`) and standard output at most this often.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// A timer for `select!` that never fires when `on` is false.
async fn tick_if(on: bool, interval: &mut tokio::time::Interval) {
    if on {
        interval.tick().await;
    } else {
        std::future::pending::<()>().await;
    }
}

fn interval(period: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval(period);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}

async fn sender_session(
    link: &mut Link,
    sender: &mut Sender,
    source: Source,
    mut commands: Option<&mut mpsc::Receiver<String>>,
    mut ui: Option<&mut mpsc::Receiver<ClientMessage>>,
    front: &Front,
    mut player: Option<&mut Player>,
) -> Result<(), Error> {
    let mut stats = interval(STATS_EVERY);
    let mut reported = None;
    // Ok: the file ended or the user quit; an error: the connection was lost or refused.
    loop {
        tokio::select! {
            _ = tick_if(sender.mic.overruns().is_some(), &mut stats) => {
                let overruns = sender.mic.overruns().unwrap_or(0);
                if reported != Some(overruns) {
                    reported = Some(overruns);
                    front.line(serde_json::json!({"type": "capture", "device": sender.mic.device(), "overruns": overruns}));
                    front.report(|| Report::Overruns(overruns));
                    let msg = ClientMessage::Stats { overruns };
                    link.text(&msg).await?;
                }
            }
            frame = sender.next_frame(source) => {
                let Some(frame) = frame? else {
                    link.close().await;
                    return Ok(());
                };
                if let Ok(h) = FrameHeader::parse(&frame) {
                    front.report(|| Report::Sent { rms: h.rms, peak: h.peak });
                }
                link.send(Message::Binary(frame)).await?;
            }
            command = async {
                match ui.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let Some(msg) = command else {
                    // The user interface quit.
                    link.close().await;
                    return Ok(());
                };
                link.text(&msg).await?;
            }
            line = async {
                match commands.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let Some(line) = line else {
                    // Standard input closed: keep sending, no more commands.
                    commands = None;
                    continue;
                };
                match parse_command(&line) {
                    Ok(Command::Relay(msg)) => link.text(&msg).await?,
                    Ok(Command::Volume(v)) => match player.as_deref() {
                        Some(p) => {
                            let set = p.volume().set(v);
                            emit(serde_json::json!({"type": "volume", "volume": set}));
                        }
                        None => emit(serde_json::json!({"type": "error", "code": "bad_command", "message": "no headphones to turn: start the booth with --output-device or --default-output", "fatal": false})),
                    },
                    Ok(Command::Quit) => {
                        link.close().await;
                        return Ok(());
                    }
                    Err(e) => emit(serde_json::json!({"type": "error", "code": "bad_command", "message": e, "fatal": false})),
                }
            }
            msg = link.next() => match msg? {
                Message::Text(text) => {
                    front.text(&text);
                    if let Ok(ServerMessage::Error { code, message, fatal: true }) = ServerMessage::parse(&text) {
                        return Err(Error::Refused { code, message });
                    }
                }
                Message::Binary(frame) => {
                    if let Ok(h) = FrameHeader::parse(&frame) {
                        front.report(|| Report::Heard(h));
                    }
                    // The console's chosen input, for its headphones.
                    if let Some(p) = player.as_deref_mut() {
                        p.frame(&frame);
                    }
                }
                _ => {}
            }
        }
    }
}

/// A console command typed on a line.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// A command for the relay.
    Relay(ClientMessage),
    /// The headphones' volume, 0.0 to 2.0.
    Volume(f32),
    Quit,
}

/// A console command typed on a line: `live [CHANNEL]`, `mute`, `cough on|off`, `handover`,
/// `accept`, `input floor|CHANNEL`, `volume V`, `quit`.
pub fn parse_command(line: &str) -> Result<Command, String> {
    let mut words = line.split_whitespace();
    let cmd = words.next().unwrap_or("");
    let arg = words.next();
    let msg = match (cmd, arg) {
        ("live", channel) => ClientMessage::Live {
            channel: channel.map(str::to_string),
        },
        ("mute", None) => ClientMessage::Mute,
        ("cough", Some("on" | "down")) => ClientMessage::Cough { down: true },
        ("cough", Some("off" | "up")) => ClientMessage::Cough { down: false },
        ("handover", None) => ClientMessage::Handover,
        ("accept", None) => ClientMessage::Accept,
        ("input", Some(ch)) => ClientMessage::Input {
            channel: ch.to_string(),
        },
        ("volume", Some(v)) => {
            return match v.parse::<f32>() {
                Ok(v) if (0.0..=device::MAX_VOLUME).contains(&v) => Ok(Command::Volume(v)),
                _ => Err(format!(
                    "`volume {v}`: the volume is a number from 0 to {}",
                    device::MAX_VOLUME
                )),
            }
        }
        ("quit", None) => return Ok(Command::Quit),
        _ => {
            return Err(format!(
                "`{}` is not a command: use live [CHANNEL], mute, cough on|off, handover, accept, input floor|CHANNEL, volume V, quit",
                line.trim()
            ))
        }
    };
    Ok(Command::Relay(msg))
}

/// The floor feed: sends a file as the original sound of a room.
pub struct FloorOptions {
    /// Relay addresses (at least one), tried in turn when a connection fails or is lost.
    pub servers: Vec<String>,
    pub secret: String,
    pub room: Option<String>,
    pub sender: SenderOptions,
}

pub async fn floor(opts: FloorOptions) -> Result<(), Error> {
    let relays = Relays::new(&opts.servers)?;
    let hello = ClientMessage::Hello {
        role: Role::Floor,
        booth: None,
        console: None,
        secret: Some(opts.secret),
        channel: None,
        room: opts.room,
        client: Some("boothcast floor".into()),
        delivery: None,
        floor_under: false,
    };
    run_sender(
        relays,
        hello,
        Source::Floor,
        opts.sender,
        None,
        None,
        None,
        None,
    )
    .await
}

/// A booth console: sends a file as the interpreter's microphone and takes commands.
pub struct BoothOptions {
    /// Relay addresses (at least one), tried in turn when a connection fails or is lost.
    pub servers: Vec<String>,
    pub secret: String,
    pub booth: String,
    pub console: String,
    /// Channel to go live on with `live` (default: the booth's first language).
    pub lang: Option<String>,
    /// Go live once connected (first connection only).
    pub live: bool,
    pub sender: SenderOptions,
    /// Command lines, e.g. from standard input.
    pub commands: Option<mpsc::Receiver<String>>,
    /// A user interface (the terminal console), instead of command lines and JSON lines.
    pub ui: Option<Ui>,
    /// Play the console's input (floor or relay) on an output device.
    pub monitor: Option<Monitor>,
}

pub async fn booth(opts: BoothOptions) -> Result<(), Error> {
    let relays = Relays::new(&opts.servers)?;
    let hello = ClientMessage::Hello {
        role: Role::Interpreter,
        booth: Some(opts.booth),
        console: Some(opts.console),
        secret: Some(opts.secret),
        channel: None,
        room: None,
        client: Some("boothcast booth".into()),
        delivery: None,
        floor_under: false,
    };
    let live = opts.live.then(|| ClientMessage::Live {
        channel: opts.lang.clone(),
    });
    run_sender(
        relays,
        hello,
        Source::Interpreter,
        opts.sender,
        opts.commands,
        opts.ui,
        live,
        opts.monitor,
    )
    .await
}

/// A listener writing what it hears to a WAV file.
pub struct ListenOptions {
    /// Relay addresses (at least one), tried in turn when a connection fails or is lost.
    pub servers: Vec<String>,
    /// The event's access code, if it has one.
    pub secret: Option<String>,
    pub channel: String,
    pub output: Output,
    /// Stop after this long; `None`: until the relay goes away for good or Ctrl-C.
    pub duration: Option<Duration>,
    /// Jitter margin: how far behind its arrival a frame is played into a file (40 ms when
    /// `None`); on a device, the least delay the adaptive jitter buffer keeps.
    pub buffer: Option<Duration>,
}

/// Where a listener's sound goes.
pub enum Output {
    /// A WAV file: what a delegate would hear, placed in time behind a fixed margin; `-` is
    /// standard output, a WAV stream (sizes `0xFFFFFFFF`) for other tools, the JSON lines then
    /// going to standard error.
    File(PathBuf),
    /// An audio output device (`boothcast devices`; the default one when `None`), through the
    /// adaptive jitter buffer.
    Device { name: Option<String>, volume: f32 },
}

/// What the jitter buffer and the output device of a listener measured.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PlayoutStats {
    #[serde(flatten)]
    pub jitter: crate::jitter::Stats,
    /// Device xruns: the device's own buffer ran dry and the listener heard a gap.
    pub device_underruns: u64,
    /// The device period in use (5 ms, longer after repeated xruns).
    pub device_period_ms: f64,
}

/// What a listener measured.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ListenSummary {
    pub frames: u64,
    /// Frames missing from the sequence (concealed when few, silence otherwise).
    pub lost: u64,
    /// Frames that arrived after their time to play: each restarted the timeline behind the
    /// margin (a gap of silence as long as the slip), or was dropped if older than what was
    /// already written.
    pub late: u64,
    pub concealed: u64,
    /// Packets that did not decode (concealed instead).
    pub undecodable: u64,
    pub reconnects: u64,
    /// Wall-clock time of the first sample of the output file, microseconds since the epoch.
    pub start_us: u64,
    /// Median of (arrival - capture time), over all frames, in milliseconds.
    pub median_network_delay_ms: f64,
    /// 99th percentile of (arrival - capture time), in milliseconds.
    pub p99_network_delay_ms: f64,
    /// Median of (arrival - relay receive time), in milliseconds.
    pub median_relay_to_listener_ms: f64,
    pub seconds_written: f64,
    /// With an output device: the jitter buffer's and the device's figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub playout: Option<PlayoutStats>,
}

/// Places decoded frames in time and writes them.
struct Playout {
    /// The WAV being written; `None` for standard output until a relay welcomed the listener
    /// (`welcomed`), so that a refusal writes nothing there.
    writer: Option<WavWriter>,
    decoder: Decoder,
    start: Instant,
    margin: usize,
    written: usize,
    /// (sequence, sample position, channel) of the frame expected next: frames are placed one
    /// after the other by sequence, whatever their length.
    next: Option<(u32, usize, u16)>,
    last_seq: Option<u32>,
    summary: ListenSummary,
    delays: Vec<f64>,
    relay_delays: Vec<f64>,
}

/// Missing frames concealed with Opus PLC; a longer gap is written as silence.
const MAX_CONCEAL_FRAMES: u32 = 5;
/// A frame due further ahead than this is part of a backlog: the timeline jumps back to live.
const MAX_AHEAD: usize = audio::SAMPLE_RATE as usize / 5;

impl Playout {
    fn pos(&self, at: Instant) -> usize {
        (at.saturating_duration_since(self.start).as_secs_f64() * audio::SAMPLE_RATE as f64)
            as usize
    }

    fn frame(&mut self, frame: &[u8], arrival: Instant) -> Result<(), Error> {
        let Ok(header) = FrameHeader::parse(frame) else {
            return Ok(());
        };
        let opus = &frame[HEADER_LEN..];
        let Ok(n) = audio::packet_samples(opus) else {
            // The relay checks only the first byte; a packet that does not parse is dropped
            // here (and concealed like a lost one) rather than ending the listener.
            self.summary.undecodable += 1;
            return Ok(());
        };
        self.summary.frames += 1;
        note_delays(&header, &mut self.delays, &mut self.relay_delays);
        let now = self.pos(arrival);
        let mut slot = self.next.and_then(|(seq, pos, ch)| {
            let d = header.sequence.wrapping_sub(seq) as i64;
            (ch == header.channel && (0..1 << 20).contains(&d)).then(|| pos + d as usize * n)
        });
        // Its time passed (the path slipped, a stall, or the channel was silent), or a backlog
        // far ahead: restart the timeline at live, behind the margin again. A slip within the
        // margin counts as late; the frames after it are not all dropped for it.
        if let Some(s) = slot {
            if s < now {
                if s + self.margin >= now {
                    self.summary.late += 1;
                }
                slot = None;
            } else if s > now + self.margin + MAX_AHEAD {
                slot = None;
            }
        }
        let slot = match slot {
            Some(s) => s,
            None => {
                let s = (now + self.margin).max(self.written);
                self.last_seq = None;
                s
            }
        };
        if slot < self.written || slot < now {
            // Its time to play has passed: too late.
            self.summary.late += 1;
            self.last_seq = Some(header.sequence);
            return Ok(());
        }
        let missing = self
            .last_seq
            .map(|l| header.sequence.wrapping_sub(l).wrapping_sub(1))
            .unwrap_or(0);
        if missing > 0 && missing < 1 << 20 {
            self.summary.lost += missing as u64;
        }
        if slot > self.written {
            let gap = slot - self.written;
            if missing > 0 && missing <= MAX_CONCEAL_FRAMES && gap == missing as usize * n {
                // A few frames lost: conceal them, the last one from this frame's FEC data.
                for i in 0..missing {
                    let pcm = if i + 1 == missing {
                        self.decoder.recover(opus, n)?
                    } else {
                        self.decoder.conceal(n)?
                    };
                    self.summary.concealed += 1;
                    self.write(&pcm)?;
                }
            } else {
                self.silence(gap)?;
            }
        }
        let pcm = match self.decoder.decode(opus) {
            Ok(pcm) => pcm,
            Err(_) => {
                self.summary.undecodable += 1;
                self.summary.concealed += 1;
                self.decoder.conceal(n)?
            }
        };
        self.write(&pcm)?;
        self.next = Some((
            header.sequence.wrapping_add(1),
            self.written,
            header.channel,
        ));
        self.last_seq = Some(header.sequence);
        Ok(())
    }

    /// The WAV, opened on standard output if it was not yet.
    fn welcomed(&mut self) -> Result<&mut WavWriter, Error> {
        let writer = match self.writer.take() {
            Some(w) => w,
            None => WavWriter::stdout()?,
        };
        Ok(self.writer.insert(writer))
    }

    fn write(&mut self, pcm: &[f32]) -> Result<(), Error> {
        self.welcomed()?.write(pcm)?;
        self.written += pcm.len();
        Ok(())
    }

    fn silence(&mut self, samples: usize) -> Result<(), Error> {
        static CHUNK: [f32; 4800] = [0.0; 4800];
        let mut left = samples;
        while left > 0 {
            let k = left.min(CHUNK.len());
            self.write(&CHUNK[..k])?;
            left -= k;
        }
        Ok(())
    }

    fn finish(mut self, total: Option<usize>) -> Result<ListenSummary, Error> {
        if let Some(total) = total {
            if total > self.written {
                self.silence(total - self.written)?;
            }
        }
        self.summary.seconds_written = self.written as f64 / audio::SAMPLE_RATE as f64;
        self.summary.median_network_delay_ms = median(&mut self.delays);
        self.summary.p99_network_delay_ms = percentile(&self.delays, 99);
        self.summary.median_relay_to_listener_ms = median(&mut self.relay_delays);
        self.welcomed()?;
        if let Some(writer) = self.writer.take() {
            writer.finish()?;
        }
        Ok(self.summary)
    }
}

/// Records a frame's capture-to-arrival and relay-to-arrival delays. The lists hold a value per
/// frame for the summary's medians: 50 values a second, about 1.4 MiB an hour each.
fn note_delays(header: &FrameHeader, delays: &mut Vec<f64>, relay_delays: &mut Vec<f64>) {
    let now_us = unix_micros();
    delays.push(now_us.saturating_sub(header.capture_us) as f64 / 1000.0);
    if header.relay_us > 0 {
        relay_delays.push(now_us.saturating_sub(header.relay_us) as f64 / 1000.0);
    }
}

/// What a listener plays into: a WAV file or an output device.
enum Ear {
    File(Playout),
    Device {
        player: Box<Player>,
        summary: ListenSummary,
        delays: Vec<f64>,
        relay_delays: Vec<f64>,
    },
}

impl Ear {
    fn summary(&self) -> &ListenSummary {
        match self {
            Ear::File(p) => &p.summary,
            Ear::Device { summary, .. } => summary,
        }
    }

    /// A relay welcomed the listener: a WAV on standard output starts with its header now.
    fn welcomed(&mut self) -> Result<(), Error> {
        if let Ear::File(p) = self {
            p.welcomed()?;
        }
        Ok(())
    }

    fn reconnected(&mut self) {
        match self {
            Ear::File(p) => p.summary.reconnects += 1,
            Ear::Device { summary, .. } => summary.reconnects += 1,
        }
    }

    fn frame(&mut self, frame: &bytes::Bytes, arrival: Instant) -> Result<(), Error> {
        match self {
            Ear::File(p) => p.frame(frame, arrival),
            Ear::Device {
                player,
                summary,
                delays,
                relay_delays,
            } => {
                if let Ok(header) = FrameHeader::parse(frame) {
                    summary.frames += 1;
                    note_delays(&header, delays, relay_delays);
                    player.frame(frame);
                }
                Ok(())
            }
        }
    }

    fn is_device(&self) -> bool {
        matches!(self, Ear::Device { .. })
    }

    fn playout(&self) -> Option<PlayoutStats> {
        match self {
            Ear::File(_) => None,
            Ear::Device { player, .. } => Some(PlayoutStats {
                jitter: player.stats(),
                device_underruns: player.underruns(),
                device_period_ms: player.period_ms(),
            }),
        }
    }

    fn finish(self, total: Option<usize>) -> Result<ListenSummary, Error> {
        match self {
            Ear::File(p) => p.finish(total),
            Ear::Device {
                player,
                mut summary,
                mut delays,
                mut relay_delays,
            } => {
                let stats = player.stats();
                summary.lost = stats.concealed;
                summary.late = stats.late;
                summary.concealed = stats.concealed;
                summary.undecodable = player.undecodable();
                summary.median_network_delay_ms = median(&mut delays);
                summary.p99_network_delay_ms = percentile(&delays, 99);
                summary.median_relay_to_listener_ms = median(&mut relay_delays);
                summary.seconds_written =
                    (unix_micros().saturating_sub(summary.start_us)) as f64 / 1e6;
                summary.playout = Some(PlayoutStats {
                    jitter: stats,
                    device_underruns: player.underruns(),
                    device_period_ms: player.period_ms(),
                });
                Ok(summary)
            }
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The `p`th percentile of values sorted ascending (`median` sorts them); 0 when none.
fn percentile(sorted: &[f64], p: usize) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n => sorted[((n - 1) * p.min(100)) / 100],
    }
}

/// A file listener's jitter margin when none is given: absorbs network jitter within the
/// lip-sync budget.
const FILE_MARGIN: Duration = Duration::from_millis(40);

/// The device player's jitter buffer: the default, or one that never goes below `floor`.
fn jitter_config(floor: Option<Duration>) -> crate::jitter::Config {
    let mut config = crate::jitter::Config::default();
    if let Some(floor) = floor {
        let floor = floor.as_micros() as u64;
        config.min_target_us = floor.min(config.max_target_us);
        // Frames later than the floor are still jitter, not a stall.
        config.catch_up_us = config.catch_up_us.max(floor * 2);
    }
    config
}

/// Listens to a channel and writes what is heard, in real time, gaps kept.
pub async fn listen(opts: ListenOptions) -> Result<ListenSummary, Error> {
    let mut relays = Relays::new(&opts.servers)?;
    let start = Instant::now();
    let summary = ListenSummary {
        start_us: unix_micros(),
        ..Default::default()
    };
    let mut playout = match &opts.output {
        Output::File(path) => Ear::File(Playout {
            writer: if crate::input::is_stdin(path) {
                LINES_TO_STDERR.store(true, std::sync::atomic::Ordering::Relaxed);
                None
            } else {
                Some(WavWriter::create(path)?)
            },
            decoder: Decoder::new()?,
            start,
            margin: (opts.buffer.unwrap_or(FILE_MARGIN).as_secs_f64() * audio::SAMPLE_RATE as f64)
                as usize,
            written: 0,
            next: None,
            last_seq: None,
            summary,
            delays: Vec::new(),
            relay_delays: Vec::new(),
        }),
        Output::Device { name, volume } => Ear::Device {
            player: Box::new(Player::open(
                name.as_deref(),
                device::Volume::new(*volume),
                jitter_config(opts.buffer),
            )?),
            summary,
            delays: Vec::new(),
            relay_delays: Vec::new(),
        },
    };
    let device = match &playout {
        Ear::Device { player, .. } => Some(player.name().to_string()),
        Ear::File(_) => None,
    };
    emit(
        serde_json::json!({"type": "started", "start_us": playout.summary().start_us, "output_device": device}),
    );
    let deadline = opts
        .duration
        .map(|d| tokio::time::Instant::from_std(start) + d);
    let hello = ClientMessage::Hello {
        role: Role::Listener,
        booth: None,
        console: None,
        secret: opts.secret.clone(),
        channel: Some(opts.channel.clone()),
        room: None,
        client: Some("boothcast listen".into()),
        delivery: None,
        floor_under: false,
    };
    let mut retry = Retry::default();
    // Until a relay first welcomes it, a listener gives up once every address refused to connect.
    let mut welcomed = false;
    let mut unreachable = 0;
    loop {
        let mut conn: Option<Link> = None;
        let url = relays.current().to_string();
        let mut told = Vec::new();
        let session = async {
            let (link, t) = open(&url, &hello, &Front::default()).await?;
            told = t;
            playout.welcomed()?;
            let link = conn.insert(link);
            let mut report = interval(STATS_EVERY);
            // The first frame of each connection is told (`hearing`), with where it came from.
            let mut hearing = false;
            loop {
                let msg = tokio::select! {
                    msg = link.next() => msg?,
                    _ = tick_if(playout.is_device(), &mut report) => {
                        emit(serde_json::json!({"type": "playout", "playout": playout.playout()}));
                        continue;
                    }
                };
                match msg {
                    Message::Binary(frame) => {
                        if !hearing {
                            hearing = true;
                            let seq = FrameHeader::parse(&frame).map(|h| h.sequence).ok();
                            emit(serde_json::json!({"type": "hearing", "relay": url, "seq": seq}));
                        }
                        playout.frame(&frame, Instant::now())?
                    }
                    Message::Text(text) => {
                        line(&text);
                        if let Ok(ServerMessage::Error {
                            code,
                            message,
                            fatal: true,
                        }) = ServerMessage::parse(&text)
                        {
                            return Err::<(), _>(Error::Refused { code, message });
                        }
                    }
                    _ => {}
                }
            }
        };
        let result = match deadline {
            Some(d) => tokio::time::timeout_at(d, session).await.ok(),
            None => tokio::select! {
                r = session => Some(r),
                _ = tokio::signal::ctrl_c() => None,
            },
        };
        let Some(result) = result else {
            if let Some(mut link) = conn.take() {
                link.close().await;
            }
            break;
        };
        // A connection the relay welcomed starts the back-off over.
        if conn.is_some() {
            relays.learn(&told);
            retry.reset();
            welcomed = true;
            unreachable = 0;
        }
        match result {
            Ok(()) => break,
            Err(e) if e.is_final() => return Err(e),
            Err(e @ Error::Connect { .. })
                if !welcomed && {
                    unreachable += 1;
                    unreachable >= relays.len()
                } =>
            {
                return Err(e)
            }
            Err(e) => {
                let wait = retry.next(&mut rand::rng());
                relays.advance();
                emit(serde_json::json!({
                    "type": "disconnected",
                    "reason": e.to_string(),
                    "retry_in_ms": wait.as_millis() as u64,
                    "next": relays.current(),
                }));
                tracing::warn!(
                    next = relays.current(),
                    "{e}; reconnecting in {} ms",
                    wait.as_millis()
                );
                playout.reconnected();
                tokio::time::sleep(wait).await;
            }
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
    }
    let total = opts
        .duration
        .map(|d| (d.as_secs_f64() * audio::SAMPLE_RATE as f64) as usize);
    let summary = playout.finish(total)?;
    emit(serde_json::json!({"type": "summary", "summary": summary}));
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_addresses() {
        assert_eq!(
            ws_url("http://127.0.0.1:8080").unwrap(),
            "ws://127.0.0.1:8080/ws"
        );
        assert_eq!(ws_url("ws://h:1/").unwrap(), "ws://h:1/ws");
        assert_eq!(ws_url("https://h").unwrap(), "wss://h/ws");
        assert_eq!(ws_url("wss://h:8443/ws").unwrap(), "wss://h:8443/ws");
        assert_eq!(ws_url("https://h/hall/").unwrap(), "wss://h/hall/ws");
        assert!(ws_url("127.0.0.1:8080").is_err());
        assert!(ws_url("ftp://h").is_err());
    }

    #[test]
    fn relays_round_robin_and_learn_from_welcome() {
        assert!(Relays::new::<&str>(&[]).is_err());
        assert!(Relays::new(&["ws://a:1", "b:2"]).is_err());
        let mut r = Relays::new(&["ws://a:1", "http://a:1/", "ws://b:2"]).unwrap();
        assert_eq!(r.len(), 2, "the same relay given twice is kept once");
        assert_eq!(r.current(), "ws://a:1/ws");
        r.advance();
        assert_eq!(r.current(), "ws://b:2/ws");
        r.learn(&[
            "ws://b:2/".into(),
            "ws://c:3/".into(),
            "not an address".into(),
        ]);
        assert_eq!(r.len(), 3);
        r.advance();
        assert_eq!(r.current(), "ws://c:3/ws");
        r.advance();
        assert_eq!(r.current(), "ws://a:1/ws");
        let many: Vec<String> = (0..100).map(|i| format!("ws://n{i}:1/")).collect();
        r.learn(&many);
        assert_eq!(r.len(), MAX_RELAYS);
    }

    #[test]
    fn retries_are_spread_at_random() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let firsts: Vec<Duration> = (0..1000).map(|_| Retry::default().next(&mut rng)).collect();
        assert!(firsts.iter().all(|d| *d < FIRST_RETRY_SPREAD));
        // Spread over the whole window, not bunched: each tenth of it gets some.
        for tenth in 0..10u32 {
            let (lo, hi) = (
                FIRST_RETRY_SPREAD * tenth / 10,
                FIRST_RETRY_SPREAD * (tenth + 1) / 10,
            );
            assert!(firsts.iter().filter(|d| **d >= lo && **d < hi).count() > 50);
        }
        let mut retry = Retry::default();
        retry.next(&mut rng);
        let mut backoff = BACKOFF_FIRST;
        for _ in 0..10 {
            let wait = retry.next(&mut rng);
            assert!(
                wait >= backoff / 2 && wait <= backoff * 3 / 2,
                "{wait:?} for {backoff:?}"
            );
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        retry.reset();
        assert!(retry.next(&mut rng) < FIRST_RETRY_SPREAD);
    }

    #[test]
    fn console_command_lines() {
        assert_eq!(
            parse_command("live en").unwrap(),
            Command::Relay(ClientMessage::Live {
                channel: Some("en".into())
            })
        );
        assert_eq!(
            parse_command("live").unwrap(),
            Command::Relay(ClientMessage::Live { channel: None })
        );
        assert_eq!(
            parse_command(" cough on ").unwrap(),
            Command::Relay(ClientMessage::Cough { down: true })
        );
        assert_eq!(parse_command("volume 0.5").unwrap(), Command::Volume(0.5));
        let e = parse_command("volume 3").unwrap_err();
        assert!(e.contains("a number from 0 to 2"), "{e}");
        assert_eq!(parse_command("quit").unwrap(), Command::Quit);
        let e = parse_command("dance").unwrap_err();
        assert!(e.contains("`dance` is not a command"), "{e}");
    }
}
