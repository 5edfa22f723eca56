//! Test harness: a real relay on an ephemeral loopback port and real WebSocket clients.
//! Every wait has a timeout; tests wait for events, never for a fixed time.
#![allow(dead_code)]

pub mod shaper;

use boothcast::config::Event;
use boothcast::protocol::{FrameHeader, ServerMessage, Source, CHANNEL_UNSET, HEADER_LEN};
use boothcast::relay::{unix_micros, Relay};
use boothcast::server;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// How long any single expected event may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(5);

/// The test event: the default channels with short holds and known secrets.
pub const EVENT: &str = r#"
[event]
name = "Test Forum"

[secrets]
floor = "floor-secret"
engineer = "engineer-secret"

[[rooms]]
id = "plenary"

[[rooms.channels]]
lang = "az"
name = "Azerbaijani"
native = "Azərbaycanca"
hold_ms = 300

[[rooms.channels]]
lang = "en"
name = "English"
native = "English"
hold_ms = 300

[[rooms.channels]]
lang = "ru"
name = "Russian"
native = "Русский"
hold_ms = 300

[[rooms.channels]]
lang = "ar"
name = "Arabic"
native = "العربية"
hold_ms = 300

[[rooms.channels]]
lang = "fr"
name = "French"
native = "Français"
auto_floor = false

[[rooms.booths]]
id = "az"
languages = ["az", "en"]
secret = "secret-az"

[[rooms.booths]]
id = "en"
languages = ["en"]
secret = "secret-en"

[[rooms.booths]]
id = "ru"
languages = ["ru"]
secret = "secret-ru"

[[rooms.booths]]
id = "ar"
languages = ["ar"]
secret = "secret-ar"

[[rooms.booths]]
id = "fr"
languages = ["fr"]
secret = "secret-fr"
"#;

pub struct TestRelay {
    pub addr: SocketAddr,
    pub url: String,
    pub relay: Arc<Relay>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl TestRelay {
    pub async fn start() -> TestRelay {
        Self::start_with(EVENT, &|_| None).await
    }

    pub async fn start_with(text: &str, env: &dyn Fn(&str) -> Option<String>) -> TestRelay {
        Self::start_opts(text, env, server::Options::default()).await
    }

    pub async fn start_opts(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
        options: server::Options,
    ) -> TestRelay {
        let event = Event::parse(text, "test.toml", env).expect("test event is valid");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let relay = Relay::new(Arc::new(event));
        let (stop, stopped) = oneshot::channel::<()>();
        let r = relay.clone();
        let handle = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            server::run(listener, r, options, shutdown).await.unwrap();
        });
        TestRelay {
            addr,
            url: format!("ws://{addr}/ws"),
            relay,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    pub async fn metrics(&self) -> String {
        http_get(self.addr, "/metrics").await
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = tokio::time::timeout(WAIT, h).await;
        }
    }
}

/// A plain HTTP/1.1 GET over a fresh connection; returns the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out))
        .await
        .expect("HTTP response in time")
        .unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// The value of one metric line, e.g. `boothcast_frames_skipped_total{channel="plenary/floor"}`.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("metric {name} missing from:\n{text}"))
}

/// What a test client receives.
#[derive(Debug, Clone)]
pub enum In {
    Text(ServerMessage),
    Frame(FrameHeader, Bytes),
    Closed(Option<(u16, String)>),
}

enum Out {
    Text(String),
    Frame(Bytes),
    Raw(Message),
    Pump(Option<(u8, usize)>),
    Close,
}

/// A WebSocket client run by its own task: it sends what it is told, pumps synthetic frames
/// every 20 ms when asked (like a booth), and queues everything it receives.
pub struct Client {
    tx: mpsc::UnboundedSender<Out>,
    rx: mpsc::UnboundedReceiver<In>,
    /// Texts seen while waiting for something else.
    pub seen: Vec<ServerMessage>,
}

/// One Opus code-0 packet of a 20 ms fullband frame (TOC 0xF8) whose bytes carry `marker` and
/// `n`, padded to `size`: the relay only reads the TOC, so tests can tell who sent a frame.
pub fn fake_opus(marker: u8, n: u32, size: usize) -> Vec<u8> {
    let mut p = vec![0xF8, marker];
    p.extend_from_slice(&n.to_be_bytes());
    p.resize(size.max(6), 0x55);
    p
}

pub fn sender_frame(source: Source, marker: u8, n: u32, size: usize) -> Bytes {
    FrameHeader {
        source,
        channel: CHANNEL_UNSET,
        sequence: n,
        capture_us: unix_micros(),
        relay_us: 0,
        rms: 30,
        peak: 12,
    }
    .frame(&fake_opus(marker, n, size))
}

/// Who sent a frame received by a listener (see `fake_opus`).
pub fn marker(payload: &Bytes) -> u8 {
    payload[HEADER_LEN + 1]
}

/// A TCP connection to the `host:port` of `url` (`ws://host:port/path`) from the loopback
/// address `source` (any of 127.0.0.0/8: the relay sees a client of its own per address).
pub async fn tcp_from(source: std::net::IpAddr, url: &str) -> tokio::net::TcpStream {
    let authority = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("a ws:// address");
    let addr: SocketAddr = authority.parse().expect("host:port");
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    tokio::time::timeout(WAIT, socket.connect(addr))
        .await
        .expect("connect in time")
        .expect("connect")
}

impl Client {
    pub async fn connect(url: &str, hello: Value) -> Client {
        Client::connect_from(None, url, hello).await
    }

    /// As [`Client::connect`], from the loopback address `source` when given.
    pub async fn connect_from(source: Option<std::net::IpAddr>, url: &str, hello: Value) -> Client {
        let ws = match source {
            None => tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url)).await,
            Some(ip) => {
                let tcp = tcp_from(ip, url).await;
                tokio::time::timeout(
                    WAIT,
                    tokio_tungstenite::client_async(
                        url,
                        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
                    ),
                )
                .await
            }
        };
        let (ws, _) = ws.expect("connect in time").expect("connect");
        Client::from_ws(ws, hello)
    }

    /// A client on an open WebSocket, which sends `hello` first.
    pub fn from_ws(
        ws: tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        hello: Value,
    ) -> Client {
        let (tx, mut out_rx) = mpsc::unbounded_channel::<Out>();
        let (in_tx, rx) = mpsc::unbounded_channel::<In>();
        let source = match hello["role"].as_str() {
            Some("floor") => Source::Floor,
            _ => Source::Interpreter,
        };
        tokio::spawn(async move {
            let (mut sink, mut stream) = ws.split();
            let mut pump: Option<(u8, usize)> = None;
            let mut n = 0u32;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tokio::select! {
                    o = out_rx.recv() => match o {
                        Some(Out::Text(t)) => { if sink.send(Message::Text(t.into())).await.is_err() { break; } }
                        Some(Out::Frame(f)) => { if sink.send(Message::Binary(f)).await.is_err() { break; } }
                        Some(Out::Raw(m)) => { if sink.send(m).await.is_err() { break; } }
                        Some(Out::Pump(p)) => pump = p,
                        Some(Out::Close) | None => { let _ = sink.send(Message::Close(None)).await; break; }
                    },
                    _ = tick.tick(), if pump.is_some() => {
                        let (m, size) = pump.unwrap();
                        if sink.send(Message::Binary(sender_frame(source, m, n, size))).await.is_err() { break; }
                        n += 1;
                    }
                    m = stream.next() => match m {
                        Some(Ok(Message::Text(t))) => {
                            let msg = ServerMessage::parse(&t).unwrap_or_else(|e| panic!("relay sent bad JSON {t}: {e}"));
                            let _ = in_tx.send(In::Text(msg));
                        }
                        Some(Ok(Message::Binary(b))) => {
                            let h = FrameHeader::parse(&b).expect("relay sends valid frames");
                            let _ = in_tx.send(In::Frame(h, b));
                        }
                        Some(Ok(Message::Close(c))) => {
                            let _ = in_tx.send(In::Closed(c.map(|c| (u16::from(c.code), c.reason.to_string()))));
                            break;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => { let _ = in_tx.send(In::Closed(None)); break; }
                    }
                }
            }
        });
        let c = Client {
            tx,
            rx,
            seen: Vec::new(),
        };
        c.text(hello);
        c
    }

    pub async fn listener(url: &str, channel: &str) -> Client {
        let mut c = Client::connect(
            url,
            json!({"type": "hello", "role": "listener", "channel": channel}),
        )
        .await;
        c.welcome().await;
        c
    }

    pub async fn console(url: &str, booth: &str, console: &str) -> Client {
        let secret = format!("secret-{booth}");
        let mut c = Client::connect(
            url,
            json!({"type": "hello", "role": "interpreter", "booth": booth, "console": console, "secret": secret}),
        )
        .await;
        c.welcome().await;
        c
    }

    pub async fn floor(url: &str) -> Client {
        let mut c = Client::connect(
            url,
            json!({"type": "hello", "role": "floor", "secret": "floor-secret"}),
        )
        .await;
        c.welcome().await;
        c
    }

    pub fn text(&self, v: Value) {
        let _ = self.tx.send(Out::Text(v.to_string()));
    }

    /// Sends `m` as it is: a hand-made frame, say.
    pub fn raw(&self, m: Message) {
        let _ = self.tx.send(Out::Raw(m));
    }

    pub fn raw_text(&self, t: &str) {
        let _ = self.tx.send(Out::Text(t.to_string()));
    }

    /// A function that sends a binary message on this client's connection, for a task of the
    /// test's own.
    pub fn clone_sender(&self) -> impl Fn(Bytes) + Send + 'static {
        let tx = self.tx.clone();
        move |b| {
            let _ = tx.send(Out::Frame(b));
        }
    }

    pub fn binary(&self, b: Bytes) {
        let _ = self.tx.send(Out::Frame(b));
    }

    /// Start sending a synthetic frame every 20 ms carrying `marker`.
    pub fn pump(&self, marker: u8, size: usize) {
        let _ = self.tx.send(Out::Pump(Some((marker, size))));
    }

    pub fn stop_pump(&self) {
        let _ = self.tx.send(Out::Pump(None));
    }

    pub fn close(&self) {
        let _ = self.tx.send(Out::Close);
    }

    pub async fn recv(&mut self) -> In {
        match tokio::time::timeout(WAIT, self.rx.recv()).await {
            Ok(Some(m)) => m,
            Ok(None) => In::Closed(None),
            Err(_) => panic!(
                "nothing received within {WAIT:?}; texts seen: {:#?}",
                self.seen
            ),
        }
    }

    /// Waits for a text message for which `f` returns something.
    pub async fn wait_text<T>(
        &mut self,
        what: &str,
        mut f: impl FnMut(&ServerMessage) -> Option<T>,
    ) -> T {
        if let Some(i) = self.seen.iter().position(|m| f(m).is_some()) {
            let m = self.seen.remove(i);
            return f(&m).expect("matched above");
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let m = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("no {what} within {WAIT:?}; texts seen: {:#?}", self.seen)
                });
            match m {
                Some(In::Text(t)) => {
                    if let Some(v) = f(&t) {
                        return v;
                    }
                    self.seen.push(t);
                }
                Some(In::Frame(..)) => {}
                Some(In::Closed(c)) => {
                    panic!(
                        "closed ({c:?}) while waiting for {what}; texts seen: {:#?}",
                        self.seen
                    )
                }
                None => panic!(
                    "closed while waiting for {what}; texts seen: {:#?}",
                    self.seen
                ),
            }
        }
    }

    pub async fn welcome(&mut self) {
        self.wait_text("welcome", |m| {
            matches!(m, ServerMessage::Welcome { .. }).then_some(())
        })
        .await
    }

    /// Waits for an error message; returns (code as JSON string, message, fatal).
    pub async fn error(&mut self) -> (String, String, bool) {
        self.wait_text("error", |m| match m {
            ServerMessage::Error {
                code,
                message,
                fatal,
            } => Some((
                serde_json::to_value(code)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string(),
                message.clone(),
                *fatal,
            )),
            _ => None,
        })
        .await
    }

    /// Waits until the channel list shows `channel` in a state `f` accepts.
    pub async fn channel_state(
        &mut self,
        channel: &str,
        mut f: impl FnMut(&boothcast::protocol::ChannelInfo) -> bool,
    ) -> boothcast::protocol::ChannelInfo {
        // The newest channel list already received is the current state.
        let latest = self.seen.iter().rev().find_map(|m| match m {
            ServerMessage::Channels { channels } => Some(channels.clone()),
            _ => None,
        });
        if let Some(found) =
            latest.and_then(|list| list.into_iter().find(|c| c.id == channel && f(c)))
        {
            return found;
        }
        let (list, found) = self
            .wait_text(&format!("channel {channel} state"), |m| match m {
                ServerMessage::Channels { channels } => channels
                    .iter()
                    .find(|c| c.id == channel && f(c))
                    .map(|c| (channels.clone(), c.clone())),
                _ => None,
            })
            .await;
        // Keep it as the newest known state.
        self.seen.push(ServerMessage::Channels { channels: list });
        found
    }

    pub async fn console_state(
        &mut self,
        mut f: impl FnMut(&boothcast::protocol::ConsoleState) -> bool,
    ) {
        self.wait_text("console state", |m| match m {
            ServerMessage::Console(s) if f(s) => Some(()),
            _ => None,
        })
        .await
    }

    /// The next audio frame.
    pub async fn frame(&mut self) -> (FrameHeader, Bytes) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let m = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("no frame within {WAIT:?}; texts seen: {:#?}", self.seen)
                });
            match m {
                Some(In::Frame(h, b)) => return (h, b),
                Some(In::Text(t)) => self.seen.push(t),
                other => panic!(
                    "closed while waiting for a frame: {other:?}; texts seen: {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// Frames until one satisfies `f` (returned with all frames before it).
    pub async fn frames_until(
        &mut self,
        mut f: impl FnMut(&FrameHeader, &Bytes) -> bool,
    ) -> Vec<(FrameHeader, Bytes)> {
        let mut out = Vec::new();
        loop {
            let (h, b) = self.frame().await;
            let done = f(&h, &b);
            out.push((h, b));
            if done {
                return out;
            }
        }
    }

    /// Waits for the connection to close; returns the close code and reason.
    pub async fn closed(&mut self) -> Option<(u16, String)> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(In::Closed(c))) => return c,
                Ok(None) => return None,
                Ok(Some(In::Text(t))) => self.seen.push(t),
                Ok(Some(In::Frame(..))) => {}
                Err(_) => panic!("connection not closed within {WAIT:?}"),
            }
        }
    }
}

/// Asserts that frames carry consecutive sequence numbers.
pub fn assert_contiguous(frames: &[(FrameHeader, Bytes)]) {
    for w in frames.windows(2) {
        assert_eq!(
            w[1].0.sequence,
            w[0].0.sequence.wrapping_add(1),
            "gap or duplicate between frames {} and {}",
            w[0].0.sequence,
            w[1].0.sequence
        );
    }
}

/// How many seconds of `file` ffprobe reads; panics with ffprobe's words when it refuses it.
pub fn ffprobe_seconds(file: &std::path::Path) -> f64 {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "format=duration"])
        .args(["-of", "csv=p=0"])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffprobe refused {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Decodes `file` with ffmpeg to 48 kHz mono samples.
pub fn ffmpeg_decode(file: &std::path::Path) -> Vec<f32> {
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(file)
        .args(["-f", "s16le", "-ac", "1", "-ar", "48000", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffmpeg could not decode {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0)
        .collect()
}

/// A self-signed certificate for localhost and 127.0.0.1, made with openssl: (cert, key) paths.
pub fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success());
    (cert, key)
}

/// A TLS client over `tcp` trusting only `cert`, for the name localhost; panics if the
/// handshake fails or takes longer than the tests wait.
pub async fn tls_client(
    tcp: tokio::net::TcpStream,
    cert: &std::path::Path,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    // The configuration boothcast's own clients use, trusting the relay's certificate.
    let config = boothcast::tls::client_config(Some(cert)).expect("the certificate loads");
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("handshake in time")
    .expect("handshake")
}
