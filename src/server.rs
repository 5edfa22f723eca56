//! HTTP and WebSocket transport: accepts connections, authenticates them, and runs a task per
//! connection that moves control messages and audio frames between the socket and the relay
//! (`relay.rs`): one for a delegate, a reader and a writer for a sender or an engineer. A relay
//! holds tens of thousands of delegates: what each connection keeps (its task's future, its
//! buffers and queues) is kept small on purpose, and `docs/BENCHMARKS.md` section 2 says where
//! its bytes go.
//!
//! Routes: `/ws` (the protocol of `docs/PROTOCOL.md`), `/` (the delegate's page from
//! `web-client/`), `/console` (the engineer's page), `/join` and `/qr.svg` (the join address),
//! `/healthz`, `/metrics`. Plain HTTP, or HTTPS with `Options::tls`. Connections come through
//! the accept loop of `accept.rs` and the bounds of `admission.rs`.
//!
//! Liveness: the relay pings every connection and closes one from which nothing came (no
//! frame, message or pong) within its role's deadline ([`SENDER_DEADLINE`],
//! [`LISTENER_DEADLINE`]); a booth console or floor feed closed so is treated exactly as one
//! that disconnected.

use crate::admission::{Gate, Limits, Ticket};
use crate::attempts::Attempts;
use crate::config::secret_matches;
use crate::protocol::{
    ClientMessage, Delivery, ErrorCode, LogKind, Role, ServerMessage, MAX_CONTROL_LEN,
    MAX_FRAME_LEN,
};
use crate::record::Recorder;
use crate::relay::{Outbound, Relay};
use crate::rules::{Command, Refusal, Session};
use axum::extract::{ConnectInfo, State};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tower::ServiceExt;
use tower_http::compression::Compression;
use tower_http::services::ServeFile;

/// Time a new WebSocket connection has to say `hello` (every client sends it at once).
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// A booth console or floor feed from which nothing came for this long (it sends frames
/// every 20 ms and is pinged every second) is taken to be on a dead path and treated as
/// disconnected: with a channel's hold (1.5 s by default) the floor is back on its channel
/// within about 4.5 s, and the partner can go live.
pub const SENDER_DEADLINE: Duration = Duration::from_secs(3);
/// Listeners and engineers are pinged this often: a channel carrying nothing does not look
/// idle to a proxy, and a phone that left is noticed.
pub const LISTENER_PING: Duration = Duration::from_secs(5);
/// A listener or engineer from which nothing came for this long (three pings unanswered) is
/// closed; its client reconnects to live if it is still there.
pub const LISTENER_DEADLINE: Duration = Duration::from_secs(15);
/// A listener that has not taken a single frame for this long is not reading at all: it is
/// closed (its client reconnects to live). Shorter stalls only skip frames.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames a listener may have waiting before it is moved on to live. At 20 ms frames this is
/// 160 ms: a listener further behind skips to the newest `LIVE_KEEP` frames.
pub const MAX_BACKLOG: usize = 8;
pub const LIVE_KEEP: usize = 2;
/// Unsent bytes the kernel may hold per socket before a write waits (TCP_NOTSENT_LOWAT).
/// Keeps a stalled listener's backlog in the relay's queue, where it can be skipped, rather
/// than in the kernel, where it would be played late.
pub const NOTSENT_LOWAT: u32 = 8 * 1024;
/// WebSocket read buffer per connection, to start with: a delegate sends little after
/// `hello`, and there may be tens of thousands of them (the library's default is 128 KiB). A
/// longer message grows it (messages are at most 4 KiB); a read takes at most this much.
pub const READ_BUFFER: usize = 256;
/// Text messages longer than this are sent in fragments of at most this many bytes, each
/// written at once: the WebSocket's write buffer keeps the capacity of the longest write it
/// made, and the channel list alone is over a kilobyte.
pub const FRAGMENT: usize = 512;

/// A client's WebSocket, straight on the upgraded connection (tungstenite's, without axum's
/// wrapper: the relay writes some messages in fragments).
type WebSocket =
    tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;
type WsError = tokio_tungstenite::tungstenite::Error;

/// How `serve` is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// Directory of the delegate's page.
    pub web_dir: PathBuf,
    /// A connection that cannot take a single write for this long is closed.
    pub write_timeout: Duration,
    /// Where recordings go; without it, engineers cannot record.
    pub record_dir: Option<PathBuf>,
    /// Start recording as the relay starts (`serve --record`).
    pub record_at_start: bool,
    /// Serve HTTPS and WSS instead of HTTP and WS.
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// The address delegates join at (default: from the bound address, see `join::url`).
    pub join_url: Option<String>,
    /// Connection bounds (default: from the open-file limit and the event, see
    /// [`Limits::for_event`]).
    pub limits: Option<Limits>,
}

impl Default for Options {
    fn default() -> Self {
        let local = PathBuf::from("web-client");
        let web_dir = if local.is_dir() {
            local
        } else {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/web-client"))
        };
        Options {
            web_dir,
            write_timeout: WRITE_TIMEOUT,
            record_dir: None,
            record_at_start: false,
            tls: None,
            join_url: None,
            limits: None,
        }
    }
}

/// What every request handler shares, behind one pointer: a WebSocket connection's task keeps
/// a copy for its whole life, and there may be tens of thousands of them.
#[derive(Clone)]
struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

struct Shared {
    relay: Arc<Relay>,
    shutdown: watch::Receiver<bool>,
    write_timeout: Duration,
    recorder: Recorder,
    join_url: Arc<str>,
    gate: Arc<Gate>,
    attempts: Arc<Attempts>,
    /// Refusals of secrets are logged once per address per interval.
    quiet: Arc<crate::admission::Quiet>,
    accept: Arc<crate::accept::Counters>,
    /// Tick every [`LISTENER_PING`], each at its own phase: listeners and engineers are pinged
    /// on the one their session falls on (one timer for all of them, not one each, and never
    /// all of them at once: a ping to twenty thousand listeners at the same moment would hold
    /// up everyone's audio).
    ping: Arc<[watch::Receiver<bool>]>,
    /// Tick every [`RELAXED_EVERY`], at phases spread the same way: listeners of the relaxed
    /// class are written to on theirs.
    relaxed: Arc<[watch::Receiver<bool>]>,
    web_dir: Arc<PathBuf>,
}

/// `phases` watches that each tick every `period`, one after the other `period / phases`
/// apart, from one timer: many tasks wake on few timers, a share of them at a time. With
/// `stop`, every watch turns `true` once `stop` does (the relay is shutting down) and the
/// timer ends: whoever waits for its tick learns of the shutdown without waiting on it too.
fn ticker(
    period: Duration,
    phases: usize,
    mut stop: Option<watch::Receiver<bool>>,
) -> Arc<[watch::Receiver<bool>]> {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..phases.max(1)).map(|_| watch::channel(false)).unzip();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period / txs.len() as u32);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        for k in 0.. {
            let stopping = async {
                match stop.as_mut() {
                    Some(stop) => {
                        let _ = stop.wait_for(|stopping| *stopping).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopping => {
                    for tx in &txs {
                        tx.send_replace(true);
                    }
                    return;
                }
            }
            // Everyone gone (the relay stopped): so does the timer.
            if txs[k % txs.len()].send(false).is_err() && txs.iter().all(|t| t.is_closed()) {
                return;
            }
        }
    });
    rxs.into()
}

/// Phases of the listeners' pings (100 ms apart) and of the relaxed writes (10 ms apart): a
/// tick wakes a fiftieth or a twentieth of the listeners, not all of them at once.
const PING_PHASES: usize = 50;
const RELAXED_PHASES: usize = 20;

/// Serves the relay on an already-bound listener until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    relay: Arc<Relay>,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(relay.clone().run_timers(stop_rx.clone()));
    let recorder = Recorder::new(options.record_dir.clone());
    if let Some(link) = relay.cluster() {
        // In a cluster one node records at a time: the cluster link chooses.
        link.attach_recorder(&relay, recorder.clone(), options.record_at_start);
    } else if options.record_at_start {
        recorder
            .set(&relay, true)
            .await
            .map_err(|r| std::io::Error::other(r.message))?;
    }
    let join_url = match &options.join_url {
        Some(u) => u.clone(),
        None => crate::join::url(listener.local_addr()?, options.tls.is_some()),
    };
    let limits = options.limits.clone().unwrap_or_else(|| {
        Limits::for_event(crate::admission::open_file_limit(), senders(relay.event()))
    });
    tracing::info!(
        max_connections = limits.max_open,
        reserved_for_senders = limits.reserve,
        listeners_per_address = limits.listeners_per_address,
        trusted_proxies = limits.trusted_proxies.len(),
        "connection bounds"
    );
    let gate = Gate::new(limits);
    let accept_counters = Arc::new(crate::accept::Counters::default());
    let ping_rx = ticker(LISTENER_PING, PING_PHASES, Some(stop_rx.clone()));
    let relaxed_rx = ticker(RELAXED_EVERY, RELAXED_PHASES, None);
    let state = AppState(Arc::new(Shared {
        relay: relay.clone(),
        shutdown: stop_rx.clone(),
        write_timeout: options.write_timeout,
        recorder: recorder.clone(),
        join_url: join_url.into(),
        gate: gate.clone(),
        attempts: Arc::new(Attempts::new()),
        quiet: Arc::new(crate::admission::Quiet::new(AUTH_LOG_INTERVAL)),
        accept: accept_counters.clone(),
        ping: ping_rx,
        relaxed: relaxed_rx,
        web_dir: Arc::new(options.web_dir.clone()),
    }));
    let app = Router::new()
        .route("/ws", get(ws_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/join", get(join))
        .route("/qr.svg", get(qr_svg))
        .route(
            "/listen/{room}/{file}",
            get(
                |State(s): State<AppState>,
                 ConnectInfo(peer): ConnectInfo<SocketAddr>,
                 ticket: Option<axum::Extension<Ticket>>,
                 axum::extract::Path((room, file)): axum::extract::Path<(String, String)>,
                 headers: axum::http::HeaderMap| {
                    let cx = crate::stream::Context {
                        relay: s.relay.clone(),
                        shutdown: s.shutdown.clone(),
                        gate: s.gate.clone(),
                        attempts: s.attempts.clone(),
                    };
                    crate::stream::listen(cx, peer, ticket.map(|t| t.0), room, file, headers)
                },
            ),
        )
        .route("/console", get(page_file))
        .fallback(page_file)
        .with_state(state);
    let accept = crate::accept::Accept {
        gate,
        counters: accept_counters,
        tls: options.tls.map(tokio_rustls::TlsAcceptor::from),
        configure: configure_socket,
    };
    let server = tokio::spawn(crate::accept::run(listener, app, accept, stop_rx));
    shutdown.await;
    // Every connection's task sees this and closes with `shutting_down`.
    let _ = stop_tx.send(true);
    let _ = server.await;
    // WebSocket connections outlive the accept loop: give each a moment to send its close
    // frame, so clients learn why rather than seeing a reset.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while relay.session_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A recording still running is closed properly: every file ends, the index is written
    // (and in a cluster, its claim is given up, so another node may record at once).
    match relay.cluster() {
        Some(link) => link.stop_recording_here(&relay).await,
        None => {
            let _ = recorder.set(&relay, false).await;
        }
    }
    Ok(())
}

/// How often a refusal of a secret is written to the log and the engineer's event log per
/// address (a guessing script makes thousands; one line per address and interval is enough).
pub const AUTH_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Booth consoles and floor feeds the event can have at once.
fn senders(event: &crate::config::Event) -> usize {
    event.booths.len() * crate::rules::MAX_CONSOLES_PER_BOOTH + event.rooms.len()
}

/// Whether a path of the page's directory may be served: the delegate's page and the
/// engineer's console (HTML, scripts, styles, translations, images) and the WASM Opus decoder
/// they load; nothing of the build tooling (`package.json`, `node_modules/` but the decoder,
/// dot files).
pub fn servable(path: &str) -> bool {
    const DECODER: &str = "/node_modules/opus-decoder/dist/opus-decoder.min.js";
    const TYPES: [&str; 9] = [
        "html",
        "js",
        "mjs",
        "css",
        "json",
        "svg",
        "png",
        "ico",
        "webmanifest",
    ];
    if path == "/" || path == DECODER {
        return true;
    }
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let name = segments.last().copied().unwrap_or("");
    let ext = name.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    segments.iter().all(|s| {
        // A name longer than any of the page's is not one of them (and past 255 bytes
        // the file system would refuse it with an error, not a 404).
        !s.is_empty()
            && s.len() <= 128
            && !s.starts_with('.')
            && *s != "node_modules"
            && !s.contains('\\')
    }) && !matches!(name, "package.json" | "package-lock.json")
        && TYPES.contains(&ext)
}

/// The page's files (compressed for browsers that take it: a phone on a busy venue network
/// loads the page several times faster); 404 for anything else in its directory. A connection
/// in the reserve of the gate is for senders only: 503.
async fn page_file(
    State(state): State<AppState>,
    ticket: Option<axum::Extension<Ticket>>,
    req: axum::extract::Request,
) -> axum::response::Response {
    use axum::http::StatusCode;
    let path = match req.uri().path() {
        "/console" => "/console.html".to_string(),
        p => p.to_string(),
    };
    if !servable(&path) {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    }
    if ticket.is_some_and(|t| t.is_reserved()) {
        state
            .gate
            .counters
            .denied_full
            .fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "2"), ("connection", "close")],
            "the relay is full: try again in a moment\n",
        )
            .into_response();
    }
    let file = if path == "/" {
        state.web_dir.join("index.html")
    } else {
        state.web_dir.join(&path[1..])
    };
    let service = Compression::new(ServeFile::new(file));
    match service.oneshot(req).await {
        Ok(r) => r.into_response(),
        Err(e) => match e {},
    }
}

/// Socket options of every connection: no Nagle delay on audio, a small kernel send queue.
fn configure_socket(tcp: &tokio::net::TcpStream) {
    let _ = tcp.set_nodelay(true);
    set_notsent_lowat(tcp, NOTSENT_LOWAT);
}

/// `/join[?room=ID]`: the address to join at, every hall's own address and the page's default
/// language (`join::page_info`); an unknown room is a 404 saying so.
async fn join(
    State(state): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<crate::join::Query>,
) -> axum::response::Response {
    let event = state.relay.event();
    match crate::join::page_info(event, &state.join_url, q.room.as_deref()) {
        Ok(info) => axum::Json(info).into_response(),
        Err(e) => (axum::http::StatusCode::NOT_FOUND, format!("{e}\n")).into_response(),
    }
}

/// `/qr.svg[?room=ID]`: the QR code of the join address, or of a hall's own address.
async fn qr_svg(
    State(state): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<crate::join::Query>,
) -> axum::response::Response {
    let event = state.relay.event();
    let url = match crate::join::join_url(event, &state.join_url, q.room.as_deref()) {
        Ok(url) => url,
        Err(e) => return (axum::http::StatusCode::NOT_FOUND, format!("{e}\n")).into_response(),
    };
    match crate::join::svg(&url) {
        Ok(svg) => ([("content-type", "image/svg+xml")], svg).into_response(),
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("no QR code for {url}: {e}\n"),
        )
            .into_response(),
    }
}

fn set_notsent_lowat(tcp: &tokio::net::TcpStream, bytes: u32) {
    use std::os::fd::AsRawFd;
    let value = bytes as libc::c_int;
    // SAFETY: a valid socket descriptor and a pointer to a c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(
            "TCP_NOTSENT_LOWAT not set: {}",
            std::io::Error::last_os_error()
        );
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    use std::fmt::Write;
    let mut out = state.relay.metrics();
    let g = &state.gate;
    let limits = g.limits();
    let gauges = [
        (
            "boothcast_connections_open",
            g.open() as u64,
            "Connections open now (all kinds).",
        ),
        (
            "boothcast_connections_limit",
            limits.max_open as u64,
            "Connections the relay holds at most (from the open-file limit).",
        ),
        (
            "boothcast_connections_reserved",
            limits.reserve as u64,
            "Of those, kept back for booth consoles, floor feeds and engineers.",
        ),
        (
            "boothcast_secret_waiting_addresses",
            state.attempts.waiting(std::time::Instant::now()) as u64,
            "Addresses that must wait after wrong secrets.",
        ),
    ];
    for (name, v, help) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    let c = &g.counters;
    let a = &state.accept;
    let _ = writeln!(
        out,
        "# HELP boothcast_refused_connections_total Connections refused or closed by the admission bounds, by reason.\n# TYPE boothcast_refused_connections_total counter"
    );
    for (reason, v) in [
        ("full", &c.refused_full),
        ("per_address", &c.refused_per_address),
        ("listener_full", &c.denied_full),
        ("listeners_per_address", &c.denied_per_address),
        ("evicted", &c.evicted),
        ("request_timeout", &a.request_timeouts),
        ("tls_handshake", &a.handshake_failures),
        ("hello_timeout", &state.relay.stats.hello_timeouts),
        ("too_many_attempts", &state.relay.stats.refused_attempts),
        ("dead_path", &state.relay.stats.dead_paths),
    ] {
        let _ = writeln!(
            out,
            "boothcast_refused_connections_total{{reason=\"{reason}\"}} {}",
            v.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP boothcast_paced_reads_total Reads that waited because the client's address sent more than its read budget (16 KiB a second).\n# TYPE boothcast_paced_reads_total counter\nboothcast_paced_reads_total {}",
        c.paced_reads.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP boothcast_accept_errors_total Failed accept() calls (out of file descriptors).\n# TYPE boothcast_accept_errors_total counter\nboothcast_accept_errors_total {}",
        a.accept_errors.load(Ordering::Relaxed)
    );
    ([("content-type", "text/plain; version=0.0.4")], out)
}

async fn ws_handler(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ticket: Option<axum::Extension<Ticket>>,
    socket: Option<axum::Extension<crate::accept::DirectSocket>>,
    State(state): State<AppState>,
    mut req: axum::extract::Request,
) -> axum::response::Response {
    let (on_upgrade, accept) = match upgrade(&mut req) {
        Ok(u) => u,
        Err(refusal) => return refusal.into_response(),
    };
    let ticket = match ticket {
        Some(axum::Extension(t)) => t,
        // Only a router served without the accept loop has none: admit here.
        None => match state.gate.admit(peer.ip()) {
            Ok(t) => t,
            Err(r) => {
                return (axum::http::StatusCode::SERVICE_UNAVAILABLE, r.reason()).into_response()
            }
        },
    };
    let client = crate::admission::client_addr(peer.ip(), req.headers(), &state.gate);
    let peer = SocketAddr::new(client, if client == peer.ip() { peer.port() } else { 0 });
    let socket = socket.map(|axum::Extension(p)| p);
    tokio::spawn(connection(on_upgrade, state, (peer, socket), ticket));
    (
        axum::http::StatusCode::SWITCHING_PROTOCOLS,
        [
            (axum::http::header::CONNECTION, "upgrade".to_string()),
            (axum::http::header::UPGRADE, "websocket".to_string()),
            (axum::http::header::SEC_WEBSOCKET_ACCEPT, accept),
        ],
    )
        .into_response()
}

/// Checks a WebSocket upgrade request as axum's `WebSocketUpgrade` does, with its answers to a
/// bad one; the connection's upgrade to come and the `Sec-WebSocket-Accept` value.
fn upgrade(
    req: &mut axum::extract::Request,
) -> Result<(hyper::upgrade::OnUpgrade, String), (axum::http::StatusCode, &'static str)> {
    use axum::http::{header, Method, StatusCode};
    let refuse = |status: StatusCode, body: &'static str| Err((status, body));
    let headers = req.headers();
    let has = |name: header::HeaderName, value: &str| {
        headers
            .get(name)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
    };
    if req.method() != Method::GET {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "Request method must be `GET`",
        );
    }
    let connection_upgrade = headers
        .get(header::CONNECTION)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"));
    if !connection_upgrade {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Connection header did not include 'upgrade'",
        );
    }
    if !has(header::UPGRADE, "websocket") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "`Upgrade` header did not include 'websocket'",
        );
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "`Sec-WebSocket-Key` header missing",
        );
    };
    if !has(header::SEC_WEBSOCKET_VERSION, "13") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "`Sec-WebSocket-Version` header did not include '13'",
        );
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    match req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() {
        Some(on_upgrade) => Ok((on_upgrade, accept)),
        None => refuse(
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket request couldn't be upgraded since no upgrade state was present",
        ),
    }
}

/// The WebSocket settings of every connection.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(Some(MAX_CONTROL_LEN.max(MAX_FRAME_LEN)))
        .max_frame_size(Some(MAX_CONTROL_LEN.max(MAX_FRAME_LEN)))
}

/// Why a connection ends, with what the client is told.
struct Ending {
    code: ErrorCode,
    message: String,
}

impl Ending {
    fn new(code: ErrorCode, message: impl Into<String>) -> Ending {
        Ending {
            code,
            message: message.into(),
        }
    }
}

impl From<Refusal> for Ending {
    fn from(r: Refusal) -> Self {
        Ending::new(r.code, r.message)
    }
}

/// WebSocket close code for an ending (RFC 6455 section 7.4; 4000 is ours: replaced).
fn close_code(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::BadFrame | ErrorCode::BadMessage => 1007,
        ErrorCode::ShuttingDown => 1001,
        ErrorCode::ServerFull => 1013,
        ErrorCode::Replaced => 4000,
        ErrorCode::TooManyConnections => 4008,
        ErrorCode::Timeout => 4010,
        ErrorCode::TooManyAttempts => 4029,
        _ => 1008,
    }
}

/// Who is on the other end, once `hello` was accepted.
#[derive(Debug, Clone)]
enum Peer {
    Listener,
    Engineer,
    Floor,
    Console { booth: String, console: String },
}

/// A channel heard, with the connection's place in its queue.
type Heard = (u16, broadcast::Receiver<Bytes>);

struct Connection {
    relay: Arc<Relay>,
    session: Session,
    peer: Peer,
    addr: SocketAddr,
    /// The channel this connection hears, with its place in the channel's queue.
    audio: Option<(u16, broadcast::Receiver<Bytes>)>,
    /// Whether the floor of the heard channel's room is wanted too (`floor_under`).
    wants_floor_under: bool,
    /// That floor, with its place in the floor's queue (none while a floor is heard).
    under: Option<(u16, broadcast::Receiver<Bytes>)>,
    /// A delegate's place with its channel's writers (`direct.rs`): delegates of the live
    /// class only.
    direct: Option<crate::direct::Listener>,
    skipped: u64,
    delivered: u64,
    write_timeout: Duration,
    /// Already left the relay (see [`Connection::release`]).
    released: bool,
}

impl Connection {
    fn hear(&mut self, channel: Option<u16>) {
        if self.audio.as_ref().map(|(c, _)| *c) != channel {
            // Another channel's numbering: what was written of this one no longer matters,
            // but a message begun must still be finished.
            if let Some(d) = &self.direct {
                d.leave();
                d.take_resume();
            }
            if let Some((old, _)) = self.audio.take() {
                self.relay.unsubscribe(old, self.counted());
            }
            if let Some(ch) = channel {
                self.audio = Some((ch, self.relay.subscribe(ch, self.counted())));
            }
        }
        // The floor under it follows the channel heard; it never counts in an audience.
        let under = channel
            .filter(|_| self.wants_floor_under)
            .and_then(|ch| self.relay.event().floor_under(ch));
        if self.under.as_ref().map(|(c, _)| *c) != under {
            self.under = under.map(|f| (f, self.relay.subscribe(f, false)));
        }
    }

    /// On closing a connection that stopped reading: what its queue held, or lost while it
    /// was stuck, counts as skipped.
    fn count_undelivered(&mut self) {
        let Some((ch, rx)) = &mut self.audio else {
            return;
        };
        let mut n = 0;
        loop {
            match rx.try_recv() {
                Ok(_) => n += 1,
                Err(broadcast::error::TryRecvError::Lagged(k)) => n += k,
                Err(_) => break,
            }
        }
        self.skipped += n;
        self.relay
            .fanout(*ch)
            .frames_skipped
            .fetch_add(n, Ordering::Relaxed);
    }

    /// Delegates count in a channel's audience; consoles hearing a relay and engineers
    /// monitoring do not.
    fn counted(&self) -> bool {
        matches!(self.peer, Peer::Listener)
    }

    fn channel_id(&self) -> Option<String> {
        self.audio
            .as_ref()
            .map(|(c, _)| self.relay.event().channels[*c as usize].id.clone())
    }

    /// The `welcome` this connection gets once its hello is accepted.
    fn welcome(&self) -> ServerMessage {
        let relay = &self.relay;
        let (booth, console) = match &self.peer {
            Peer::Console { booth, console } => (Some(booth.clone()), Some(console.clone())),
            _ => (None, None),
        };
        let role = match self.peer {
            Peer::Listener => Role::Listener,
            Peer::Engineer => Role::Engineer,
            Peer::Floor => Role::Floor,
            Peer::Console { .. } => Role::Interpreter,
        };
        ServerMessage::Welcome {
            role,
            event: relay.event().name.clone(),
            booth,
            console,
            listener_delay_ms: matches!(self.peer, Peer::Listener)
                .then_some(relay.event().listener_delay_ms),
            relays: relay.cluster().map(|c| c.relays()).unwrap_or_default(),
        }
    }

    /// What `subscribed` says: the channel heard and the floor under it.
    fn subscribed(&self) -> ServerMessage {
        ServerMessage::Subscribed {
            channel: self.channel_id(),
            floor_under: self
                .under
                .as_ref()
                .map(|(c, _)| self.relay.event().channels[*c as usize].id.clone()),
        }
    }
}

impl Connection {
    /// Leaves the channel heard and the relay, saying why in the engineer's log when the
    /// connection was a sender's. Done before the close handshake, so that a dead path's
    /// channel goes to its hold at once rather than after the close times out.
    fn release(&mut self, reason: Option<&str>) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        self.hear(None);
        self.relay.unregister_because(self.session, reason);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.release(None);
    }
}

/// A WebSocket connection from its upgrade to its end.
// Not an `async fn`: its arguments would each be stored twice in the task (a WebSocket is over
// 300 bytes), and a relay holds tens of thousands of these tasks.
#[allow(clippy::manual_async_fn)]
fn connection(
    on_upgrade: hyper::upgrade::OnUpgrade,
    state: AppState,
    (addr, socket): (SocketAddr, Option<crate::accept::DirectSocket>),
    ticket: Ticket,
) -> impl Future<Output = ()> + Send {
    async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(peer = %addr, error = %e, "WebSocket upgrade failed");
                return;
            }
        };
        let mut ws = WebSocket::from_raw_socket(
            hyper_util::rt::TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            Some(ws_config()),
        )
        .await;
        // Declared after `ws`, and so dropped before it: a channel's writer may be writing to
        // this socket until the delegate leaves it (`direct.rs`), which dropping it does.
        let Some(mut admitted) = hello(&mut ws, &state, (addr, socket), &ticket).await else {
            return;
        };
        if matches!(admitted.conn.peer, Peer::Listener) {
            // Delegates come by the thousand: one task each, and nothing in it they do not use.
            listener(&mut ws, &mut admitted).await;
        } else {
            // Few, and with more to follow: kept off the delegates' (smaller) task.
            let (shutdown, recorder) = (state.shutdown.clone(), state.recorder.clone());
            Box::pin(talker(ws, admitted, shutdown, recorder)).await;
        }
        drop(ticket);
    }
}

/// A connection whose hello was accepted, with all it needs from then on.
struct Accepted {
    conn: Connection,
    reader: Reader,
    /// The relay's messages for this connection.
    ctl: crate::relay::Controls,
    first_channel: Option<u16>,
    ticks: Ticks,
}

/// Waits for the connection's hello and admits it; `None` if it was refused (the client is
/// told why), did not come in time, or the client left.
async fn hello(
    ws: &mut WebSocket,
    state: &AppState,
    (addr, socket): (SocketAddr, Option<crate::accept::DirectSocket>),
    ticket: &Ticket,
) -> Option<Accepted> {
    let relay = state.relay.clone();
    let (session, ctl) = relay.register();
    // A place in the reserve is given back soon if no sender or engineer takes it.
    let hello_within = if ticket.is_reserved() {
        crate::accept::RESERVE_DEADLINE
    } else {
        HELLO_TIMEOUT
    };
    let first = async {
        tokio::select! {
            m = tokio::time::timeout(hello_within, first_message(ws)) => Some(m),
            // The gate needs this place for a newer connection.
            _ = ticket.evicted() => None,
        }
    };
    let hello = match first.await {
        None => {
            relay.unregister(session);
            return None;
        }
        Some(Ok(Some(Ok(text)))) => ClientMessage::parse(&text)
            .map_err(|e| Ending::new(ErrorCode::BadMessage, e.to_string())),
        Some(Ok(Some(Err(ending)))) => Err(ending),
        Some(Ok(None)) => {
            relay.unregister(session);
            return None;
        }
        Some(Err(_)) => {
            state
                .relay
                .stats
                .hello_timeouts
                .fetch_add(1, Ordering::Relaxed);
            Err(Ending::new(
                ErrorCode::NotHello,
                format!("no hello within {} s", hello_within.as_secs()),
            ))
        }
    };
    let accepted = hello.and_then(|h| admit(state, ticket, addr, session, h));
    let ((peer, first_channel), (delivery, floor_under)) = match accepted {
        Ok(p) => p,
        Err(ending) => {
            match ending.code {
                ErrorCode::Unauthorized => {
                    relay.stats.refused_auth.fetch_add(1, Ordering::Relaxed);
                }
                ErrorCode::TooManyAttempts => {
                    relay.stats.refused_attempts.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
            let label = match ending.code {
                ErrorCode::Unauthorized => "unauthorized",
                ErrorCode::TooManyAttempts => "too_many_attempts",
                ErrorCode::ServerFull => "server_full",
                ErrorCode::TooManyConnections => "too_many_connections",
                _ => "other",
            };
            // A script refused a thousand times is one line per address per interval.
            if state
                .quiet
                .allow(addr.ip(), label, std::time::Instant::now())
            {
                tracing::warn!(peer = %addr.ip(), code = ?ending.code, reason = %ending.message, "refused");
                if label != "other" {
                    relay.log(
                        LogKind::Refused,
                        format!("{}: {}", addr.ip(), ending.message),
                    );
                }
            }
            relay.unregister(session);
            close(ws, ending, CLOSE_WITHIN).await;
            return None;
        }
    };
    // Delegates come and go by the thousand (and a script by the hundred thousand): their
    // comings and goings are debug lines; senders' and engineers' are worth a line each.
    if matches!(peer, Peer::Listener) {
        tracing::debug!(peer = %addr, session, who = ?peer, "connected");
    } else {
        tracing::info!(peer = %addr, session, who = ?peer, "connected");
    }
    // A channel's writers send to delegates of the live class (`direct.rs`); the relaxed
    // class has its tick.
    let direct = socket
        .filter(|_| matches!(peer, Peer::Listener) && delivery == Delivery::Live)
        .map(|p| crate::direct::Listener::new(p.fd, p.tls));
    let conn = Connection {
        relay,
        session,
        direct,
        peer,
        addr,
        audio: None,
        wants_floor_under: floor_under,
        under: None,
        skipped: 0,
        delivered: 0,
        write_timeout: state.write_timeout,
        released: false,
    };
    let ticks = Ticks {
        ping: state.ping[session as usize % state.ping.len()].clone(),
        relaxed: (delivery == Delivery::Relaxed)
            .then(|| state.relaxed[session as usize % state.relaxed.len()].clone()),
    };
    let reader = Reader::new(&conn, state.quiet.clone());
    Some(Accepted {
        conn,
        reader,
        ctl,
        first_channel,
        ticks,
    })
}

/// A delegate's connection: one task writes its frames and messages and reads what it sends
/// (pongs, `subscribe`, `ping`), with the same bounds as a sender's reader task.
async fn listener(ws: &mut WebSocket, a: &mut Accepted) {
    let ending = listen(ws, a).await;
    // The close goes after whatever a channel's writer began, or not at all.
    if hold_within(ws, &mut a.conn, CLOSE_WITHIN).await.is_err() {
        a.conn.release(None);
        return;
    }
    if !end(ws, &mut a.conn, ending).await {
        drain(ws).await;
    }
}

/// A booth console's, floor feed's or engineer's connection. Reading has its own task: a
/// console's microphone frames go on to the relay even while a write to it is waiting.
async fn talker(ws: WebSocket, a: Accepted, shutdown: watch::Receiver<bool>, recorder: Recorder) {
    let Accepted {
        mut conn,
        reader,
        ctl,
        first_channel,
        ticks,
    } = a;
    match &conn.peer {
        Peer::Console { booth, console } => conn
            .relay
            .sender_connected(conn.session, &format!("{booth}/{console}")),
        Peer::Floor => conn.relay.sender_connected(conn.session, "floor"),
        _ => {}
    }
    let (mut sink, stream) = ws.split();
    let (incoming_tx, incoming) = mpsc::channel(INCOMING_QUEUE);
    let (stop_reading, stop) = watch::channel(false);
    let mut reading = tokio::spawn(read_loop(stream, reader, incoming_tx, stop));
    let ending = serve(
        &mut sink,
        &mut conn,
        ctl,
        incoming,
        first_channel,
        ticks,
        (shutdown, recorder),
    )
    .await;
    let _ = stop_reading.send(true);
    // The reader takes what the client still sends until it closes (briefly), so the socket is
    // not closed with unread data: that would reset the connection, and the reset can destroy
    // the error message before the client has read it.
    if end(&mut sink, &mut conn, ending).await
        || tokio::time::timeout(DRAIN, &mut reading).await.is_err()
    {
        reading.abort();
    }
}

/// Logs why a connection ends, leaves the relay and tells the client. True on a dead path:
/// nothing more will come from it, so nobody waits for its close.
async fn end<S>(ws: &mut S, conn: &mut Connection, ending: Option<Ending>) -> bool
where
    S: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    let reason = ending
        .as_ref()
        .map(|e| e.message.as_str())
        .unwrap_or("closed by the client");
    let session = conn.session;
    if matches!(conn.peer, Peer::Listener) {
        let (d, s) = conn.direct.as_ref().map_or((0, 0), |d| d.counts());
        let (delivered, skipped) = (conn.delivered + d, conn.skipped + s);
        tracing::debug!(peer = %conn.addr, session, delivered, skipped, reason, "disconnected");
    } else {
        tracing::info!(peer = %conn.addr, session, delivered = conn.delivered, skipped = conn.skipped, reason, "disconnected");
    }
    let dead = ending
        .as_ref()
        .is_some_and(|e| e.code == ErrorCode::Timeout);
    conn.release(ending.as_ref().map(|e| e.message.as_str()));
    if let Some(ending) = ending {
        // On a dead path nothing would arrive: close without waiting on it.
        let limit = if dead {
            Duration::from_millis(100)
        } else {
            CLOSE_WITHIN
        };
        close(ws, ending, limit).await;
    }
    dead
}

/// How often booth consoles and floor feeds are pinged to measure their round-trip time.
pub const PING_EVERY: Duration = Duration::from_secs(1);

/// How long a closing connection may take to write why it closes.
const CLOSE_WITHIN: Duration = Duration::from_secs(2);

/// How long a closing connection keeps reading, waiting for the client's close.
const DRAIN: Duration = Duration::from_secs(1);

/// The first text message (WebSocket pings before it are fine); `None` if the client left.
async fn first_message(ws: &mut WebSocket) -> Option<Result<Utf8Bytes, Ending>> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(text)) => return Some(Ok(text)),
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
            Ok(Message::Close(_)) => return None,
            Ok(Message::Binary(_)) => {
                return Some(Err(Ending::new(
                    ErrorCode::NotHello,
                    "the first message must be a JSON hello",
                )))
            }
            Err(e) => return input_error(e).map(Err),
        }
    }
}

/// A read error: a message over the size limit is refused with the reason; anything else
/// means the client is gone (reset, closed without a handshake) and nothing is sent.
fn input_error(e: WsError) -> Option<Ending> {
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    match e {
        WsError::Capacity(c) => Some(Ending::new(
            ErrorCode::BadMessage,
            format!("message too long: {c} (limit {MAX_CONTROL_LEN} bytes)"),
        )),
        WsError::Utf8(_) => Some(Ending::new(
            ErrorCode::BadMessage,
            "text message is not valid UTF-8",
        )),
        WsError::Protocol(p) if !matches!(p, ProtocolError::ResetWithoutClosingHandshake) => {
            Some(Ending::new(
                ErrorCode::BadMessage,
                format!("WebSocket protocol error: {p}"),
            ))
        }
        _ => None,
    }
}

/// Tells the client why its connection ends (an `error`, then a close frame), within `limit`.
async fn close<S>(ws: &mut S, ending: Ending, limit: Duration)
where
    S: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    let code = CloseCode::from(close_code(ending.code));
    let reason = serde_json::to_value(ending.code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let msg = ServerMessage::error(ending.code, ending.message, true).to_json();
    let mut frames = [
        Some(Message::Text(msg.into())),
        Some(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from(reason),
        }))),
    ];
    // Written by hand rather than with two `send` futures: this is part of every
    // connection's task, and so is its size.
    let send = std::future::poll_fn(|cx| {
        for frame in frames.iter_mut() {
            if frame.is_some() {
                std::task::ready!(std::pin::Pin::new(&mut *ws).poll_ready(cx))?;
                let message = frame.take().expect("a frame to send");
                std::pin::Pin::new(&mut *ws).start_send(message)?;
            }
        }
        std::pin::Pin::new(&mut *ws).poll_flush(cx)
    });
    let _ = tokio::time::timeout(limit, send).await;
}

/// Checks a secret given by `addr` for `target`, slowing down guessing (see `attempts.rs`):
/// an address that must wait is refused without the secret being compared.
fn check_secret(
    state: &AppState,
    addr: SocketAddr,
    target: &str,
    expected: &str,
    given: &str,
    wrong: &str,
) -> Result<(), Ending> {
    let now = std::time::Instant::now();
    let host = crate::admission::host_key(addr.ip());
    if let Err(wait) = state.attempts.check(host, target, now) {
        return Err(too_many_attempts(wait));
    }
    if secret_matches(expected, given) {
        state.attempts.succeeded(host, target);
        return Ok(());
    }
    let wait = state.attempts.failed(host, target, now);
    if !wait.is_zero() {
        // Counted once per address and interval in the engineer's log by the caller.
        tracing::debug!(peer = %addr.ip(), target, wait_s = wait.as_secs(), "wrong secret; the address waits");
    }
    Err(Ending::new(ErrorCode::Unauthorized, wrong))
}

fn too_many_attempts(wait: Duration) -> Ending {
    Ending::new(
        ErrorCode::TooManyAttempts,
        format!(
            "too many wrong secrets from this address: try again in {} s",
            wait.as_secs_f64().ceil() as u64
        ),
    )
}

/// Who a hello made the connection and the channel it hears first; how its frames are written
/// and whether the floor comes under that channel.
type Admitted = ((Peer, Option<u16>), (Delivery, bool));

/// Checks a hello; takes the connection's place in the gate by its role; registers the
/// console or floor with the rules.
fn admit(
    state: &AppState,
    ticket: &Ticket,
    addr: SocketAddr,
    session: Session,
    hello: ClientMessage,
) -> Result<Admitted, Ending> {
    let relay = &state.relay;
    let ClientMessage::Hello {
        role,
        booth,
        console,
        secret,
        channel,
        room,
        delivery,
        floor_under,
        ..
    } = hello
    else {
        return Err(Ending::new(
            ErrorCode::NotHello,
            "the first message must be hello",
        ));
    };
    // Only delegates may take the relaxed class: a console hearing a relay and an engineer
    // monitoring hear live.
    let delivery = match role {
        Role::Listener => delivery.unwrap_or_default(),
        _ => Delivery::Live,
    };
    let event = relay.event().clone();
    let secret = secret.unwrap_or_default();
    let channel = match channel {
        Some(c) => Some(event.resolve_channel(&c).ok_or_else(|| {
            Ending::new(
                ErrorCode::UnknownChannel,
                format!("there is no channel {c}"),
            )
        })?),
        None => None,
    };
    match role {
        Role::Listener => {
            if let Some(code) = &event.access_code {
                if secret.is_empty() {
                    return Err(Ending::new(
                        ErrorCode::Unauthorized,
                        "this event needs an access code",
                    ));
                }
                check_secret(
                    state,
                    addr,
                    "access code",
                    code,
                    &secret,
                    "wrong access code",
                )?;
            }
            ticket.listener(addr.ip()).map_err(|d| match d {
                crate::admission::Denied::Full => Ending::new(ErrorCode::ServerFull, d.to_string()),
                crate::admission::Denied::PerAddress(_) => {
                    Ending::new(ErrorCode::TooManyConnections, d.to_string())
                }
            })?;
            Ok(((Peer::Listener, channel), (delivery, floor_under)))
        }
        Role::Engineer => {
            check_secret(
                state,
                addr,
                "engineer",
                &event.engineer_secret,
                &secret,
                "wrong or missing engineer secret",
            )?;
            ticket.sender();
            Ok(((Peer::Engineer, channel), (delivery, floor_under)))
        }
        Role::Floor => {
            let room = match room {
                Some(r) => event.rooms.iter().position(|x| x.id == r).ok_or_else(|| {
                    Ending::new(ErrorCode::UnknownChannel, format!("there is no room {r}"))
                })?,
                None => 0,
            };
            check_secret(
                state,
                addr,
                "floor",
                &event.floor_secret,
                &secret,
                "wrong or missing floor secret",
            )?;
            ticket.sender();
            relay.floor_connect(session, room);
            Ok(((Peer::Floor, None), (delivery, false)))
        }
        Role::Interpreter => {
            let Some(booth) = booth else {
                return Err(Ending::new(
                    ErrorCode::UnknownBooth,
                    "an interpreter's hello must name its booth",
                ));
            };
            let Some(index) = event.booths.iter().position(|b| b.id == booth) else {
                return Err(Ending::new(
                    ErrorCode::UnknownBooth,
                    format!("there is no booth {booth}"),
                ));
            };
            check_secret(
                state,
                addr,
                &format!("booth {booth}"),
                &event.booths[index].secret,
                &secret,
                &format!("wrong or missing secret for booth {booth}"),
            )?;
            let console = console.unwrap_or_else(|| "1".to_string());
            let valid = !console.is_empty()
                && console.len() <= 16
                && console
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid {
                return Err(Ending::new(
                    ErrorCode::BadMessage,
                    "a console name is 1 to 16 letters, digits, `-` or `_`",
                ));
            }
            ticket.sender();
            relay.console_connect(session, index, &console)?;
            Ok(((Peer::Console { booth, console }, None), (delivery, false)))
        }
    }
}

type Sink = futures_util::stream::SplitSink<WebSocket, Message>;

/// What a connection's writer wakes up for besides its own queues: shared, one timer each.
struct Ticks {
    /// Every [`LISTENER_PING`]: listeners and engineers are pinged. Turns `true` when the
    /// relay shuts down (a delegate's task has one wake-up less to wait on).
    ping: watch::Receiver<bool>,
    /// Every [`RELAXED_EVERY`], for a listener of the relaxed class.
    relaxed: Option<watch::Receiver<bool>>,
}

/// What the reader task passes to the connection's task.
enum Incoming {
    Control(Box<ClientMessage>),
    /// The reader stopped: the client left (`None`) or sent what ends the connection.
    Ended(Option<Ending>),
}

/// Control messages read ahead of the connection's task. A client that sends faster than its
/// replies can be written waits (its socket is not read meanwhile).
const INCOMING_QUEUE: usize = 16;

async fn serve(
    ws: &mut Sink,
    conn: &mut Connection,
    mut ctl: crate::relay::Controls,
    mut incoming: mpsc::Receiver<Incoming>,
    first_channel: Option<u16>,
    ticks: Ticks,
    (mut shutdown, recorder): (watch::Receiver<bool>, Recorder),
) -> Option<Ending> {
    let Ticks {
        ping: mut slow_ping,
        mut relaxed,
    } = ticks;
    let relay = conn.relay.clone();
    let mut channels = relay.channels_watch();
    let mut audience = relay.audience_watch();
    let wants_audience = matches!(conn.peer, Peer::Console { .. } | Peer::Engineer);
    let is_engineer = matches!(conn.peer, Peer::Engineer);
    let mut levels = relay.levels_watch();
    let mut health = relay.health_watch();
    let is_sender = matches!(conn.peer, Peer::Console { .. } | Peer::Floor);
    // Senders are pinged once a second: the pong's delay is their round-trip time.
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut recording = relay.recording_watch();
    // In a cluster, engineers see its nodes.
    let mut nodes = relay
        .cluster()
        .filter(|_| is_engineer)
        .map(|c| c.view_watch());
    let channels_now = channels.borrow_and_update().clone();
    if send_text(ws, conn.welcome().to_json().into())
        .await
        .is_err()
        || send_bytes_text(ws, channels_now).await.is_err()
    {
        return None;
    }
    // Engineers get the log so far, then each new entry; others never subscribe.
    let mut log = None;
    if is_engineer {
        let json = recording.borrow_and_update().clone();
        if send_bytes_text(ws, json).await.is_err() {
            return None;
        }
        if let Some(nodes) = nodes.as_mut() {
            let json = nodes.borrow_and_update().clone();
            if !json.is_empty() && send_bytes_text(ws, json).await.is_err() {
                return None;
            }
        }
        let (entries, rx) = relay.log_subscribe();
        log = Some(rx);
        if send_text(ws, ServerMessage::Log { entries }.to_json().into())
            .await
            .is_err()
        {
            return None;
        }
    }
    if wants_audience {
        let json = ServerMessage::Audience {
            listeners: relay.audience(),
        }
        .to_json();
        if send_text(ws, json.into()).await.is_err() {
            return None;
        }
    }
    if first_channel.is_some() {
        conn.hear(first_channel);
        let msg = conn.subscribed();
        if send_text(ws, msg.to_json().into()).await.is_err() {
            return None;
        }
    }
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        tokio::select! {
            // Audio first: it is what every wake-up is for, nearly always.
            biased;
            n = next_frames((&mut conn.audio, &mut conn.under), &mut batch, &mut relaxed, (&relay, &None)) => {
                if let Err(ending) = deliver(ws, conn, n, &mut batch).await {
                    return ending;
                }
            }
            msg = ctl.recv() => {
                if let Err(ending) = outbound(ws, conn, msg).await {
                    return ending;
                }
            }
            msg = incoming.recv() => match msg {
                Some(Incoming::Control(msg)) => {
                    let reply = match *msg {
                        ClientMessage::Record { start } if is_engineer => {
                            tracing::info!(peer = %conn.addr, start, "recording asked");
                            match relay.cluster() {
                                // Moving a recording may wait on another node: the answer
                                // (a refusal, or `recording` from wherever it runs) comes later.
                                Some(link) => {
                                    link.record(&relay, conn.session, start);
                                    Ok(None)
                                }
                                None => recorder.set(&relay, start).await.map(|_| None),
                            }
                        }
                        msg => control(conn, msg),
                    };
                    if let Some(text) = answer(conn, reply) {
                        if send_text(ws, text.into()).await.is_err() { return None; }
                    }
                }
                Some(Incoming::Ended(ending)) => return ending,
                None => return None,
            },
            r = channels.changed() => {
                if r.is_err() { return None; }
                let json = channels.borrow_and_update().clone();
                if send_bytes_text(ws, json).await.is_err() { return None; }
            }
            _ = ping.tick(), if is_sender => {
                let stamp = crate::relay::unix_micros().to_be_bytes();
                if ws.send(Message::Ping(Bytes::copy_from_slice(&stamp))).await.is_err() { return None; }
            }
            r = slow_ping.changed(), if !is_sender => {
                if r.is_err() { return None; }
                if *slow_ping.borrow_and_update() {
                    return Some(Ending::new(ErrorCode::ShuttingDown, "the relay is shutting down"));
                }
                // Not timed: a listener's reader notices a missing pong by its deadline.
                if send_within(ws, Message::Ping(Bytes::new())).await.is_err() { return None; }
            }
            r = health.changed(), if is_engineer => {
                if r.is_err() { return None; }
                let json = health.borrow_and_update().clone();
                if !json.is_empty() && send_bytes_text(ws, json).await.is_err() { return None; }
            }
            r = levels.changed(), if is_engineer => {
                if r.is_err() { return None; }
                let json = levels.borrow_and_update().clone();
                if !json.is_empty() && send_bytes_text(ws, json).await.is_err() { return None; }
            }
            r = recording.changed(), if is_engineer => {
                if r.is_err() { return None; }
                let json = recording.borrow_and_update().clone();
                if send_bytes_text(ws, json).await.is_err() { return None; }
            }
            json = next_change(&mut nodes) => {
                if !json.is_empty() && send_bytes_text(ws, json).await.is_err() { return None; }
            }
            entry = next_log(&mut log) => {
                if let Some(json) = entry {
                    if send_bytes_text(ws, json).await.is_err() { return None; }
                }
            }
            r = audience.changed(), if wants_audience => {
                if r.is_err() { return None; }
                let json = audience.borrow_and_update().clone();
                if !json.is_empty() && send_bytes_text(ws, json).await.is_err() { return None; }
            }
            _ = shutdown.changed() => {
                return Some(Ending::new(ErrorCode::ShuttingDown, "the relay is shutting down"));
            }
        }
    }
}

/// A delegate's writer and reader in one loop: frames of the channel heard, the relay's
/// messages, what the client sends (read by its [`Reader`], with its bounds), the channel list,
/// pings and shutdown. What it returns ends the connection.
async fn listen(ws: &mut WebSocket, a: &mut Accepted) -> Option<Ending> {
    // Reset by every message: one timer per connection, moved rather than made anew.
    let silence = tokio::time::sleep(a.reader.deadline());
    let mut silence = std::pin::pin!(silence);
    let mut channels = a.conn.relay.channels_watch();
    let text = a.conn.welcome().to_json();
    if send_text(ws, text.into()).await.is_err() {
        return None;
    }
    let json = channels.borrow_and_update().clone();
    if send_bytes_text(ws, json).await.is_err() {
        return None;
    }
    if a.first_channel.is_some() {
        a.conn.hear(a.first_channel);
        let text = a.conn.subscribed().to_json();
        if send_text(ws, text.into()).await.is_err() {
            return None;
        }
    }
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        let conn = &mut a.conn;
        tokio::select! {
            // Audio first: it is what every wake-up is for, nearly always.
            biased;
            n = next_frames((&mut conn.audio, &mut conn.under), &mut batch, &mut a.ticks.relaxed, (&conn.relay, &conn.direct)) => {
                if let Err(ending) = hold(ws, conn).await { return ending; }
                if let Err(ending) = deliver(ws, conn, n, &mut batch).await {
                    return ending;
                }
            }
            msg = a.ctl.recv() => {
                if let Err(ending) = hold(ws, conn).await { return ending; }
                if let Err(ending) = outbound(ws, conn, msg).await {
                    return ending;
                }
            }
            read = a.reader.next(ws, silence.as_mut()) => match read {
                Read::Control(msg) => {
                    if let Err(ending) = hold(ws, conn).await { return ending; }
                    let reply = control(conn, *msg);
                    if let Some(text) = answer(conn, reply) {
                        if send_text(ws, text.into()).await.is_err() { return None; }
                    }
                }
                Read::Pinged => {
                    // Its pong waits in the WebSocket, to go before anything more is read.
                    if let Err(ending) = hold(ws, conn).await { return ending; }
                    if send_flush(ws).await.is_err() { return None; }
                }
                Read::Ended(ending) => return ending,
            },
            r = channels.changed() => {
                if r.is_err() { return None; }
                if let Err(ending) = hold(ws, conn).await { return ending; }
                let json = channels.borrow_and_update().clone();
                if send_bytes_text(ws, json).await.is_err() { return None; }
            }
            r = a.ticks.ping.changed() => {
                if r.is_err() { return None; }
                if *a.ticks.ping.borrow_and_update() {
                    return Some(Ending::new(ErrorCode::ShuttingDown, "the relay is shutting down"));
                }
                if let Err(ending) = hold(ws, conn).await { return ending; }
                // Not timed: a missing pong is noticed by the reader's deadline.
                if send_within(ws, Message::Ping(Bytes::new())).await.is_err() { return None; }
            }
        }
    }
}

/// Counts what [`next_frames`] took and writes the batch. `Err` ends the connection: `None`
/// when the write failed (the client is gone), `too_slow` when not a single frame could be
/// written within the write timeout.
async fn deliver<S>(
    ws: &mut S,
    conn: &mut Connection,
    taken: Taken,
    batch: &mut Vec<Bytes>,
) -> Result<(), Option<Ending>>
where
    S: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    let Taken {
        delivered,
        skipped,
        under,
        under_skipped,
    } = taken;
    let relay = &conn.relay;
    if skipped > 0 {
        conn.skipped += skipped;
        if let Some((ch, _)) = &conn.audio {
            relay
                .fanout(*ch)
                .frames_skipped
                .fetch_add(skipped, Ordering::Relaxed);
        }
    }
    if let Some((floor, _)) = conn.under.as_ref().filter(|_| under + under_skipped > 0) {
        let fan = relay.fanout(*floor);
        fan.frames_skipped
            .fetch_add(under_skipped, Ordering::Relaxed);
        fan.frames_delivered.fetch_add(under, Ordering::Relaxed);
        conn.skipped += under_skipped;
    }
    let delivered_all = delivered + under;
    if delivered_all == 0 {
        return Ok(());
    }
    let mut next = 0;
    let written = write_within(conn.write_timeout, |cx| {
        poll_batch(ws, batch, &mut next, cx)
    })
    .await;
    batch.clear();
    match written {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err(None),
        Err(_) => {
            conn.relay.stats.slow_closed.fetch_add(1, Ordering::Relaxed);
            conn.count_undelivered();
            return Err(Some(Ending::new(
                ErrorCode::TooSlow,
                format!(
                    "not reading: no frame could be written for {:.1} s",
                    conn.write_timeout.as_secs_f64()
                ),
            )));
        }
    }
    conn.delivered += delivered_all;
    if let Some((ch, _)) = &conn.audio {
        conn.relay
            .fanout(*ch)
            .frames_delivered
            .fetch_add(delivered, Ordering::Relaxed);
    }
    Ok(())
}

/// Acts on what the relay has for this connection (`None`: its queue was dropped, the client
/// was too slow to take it). `Err` ends the connection as [`deliver`]'s does.
async fn outbound<S>(
    ws: &mut S,
    conn: &mut Connection,
    msg: Option<Outbound>,
) -> Result<(), Option<Ending>>
where
    S: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    let text = match msg {
        Some(Outbound::Message(m)) => m.to_json(),
        Some(Outbound::Console(state, input)) => {
            conn.hear(Some(input));
            ServerMessage::Console(*state).to_json()
        }
        Some(Outbound::Close(m)) => {
            let ServerMessage::Error { code, message, .. } = *m else {
                return Err(Some(Ending::new(
                    ErrorCode::TooSlow,
                    "too slow to take the relay's messages",
                )));
            };
            return Err(Some(Ending::new(code, message)));
        }
        None => {
            return Err(Some(Ending::new(
                ErrorCode::TooSlow,
                "too slow to take the relay's messages",
            )))
        }
    };
    send_text(ws, text.into()).await.map_err(|_| None)
}

/// The text of the reply to a control message, if it has one; a refusal is logged and
/// answered with an `error` that leaves the connection open.
fn answer(conn: &Connection, reply: Result<Option<ServerMessage>, Refusal>) -> Option<String> {
    match reply {
        Ok(Some(m)) => Some(m.to_json()),
        Ok(None) => None,
        Err(r) => {
            tracing::info!(peer = %conn.addr, session = conn.session, code = ?r.code, reason = %r.message, "refused");
            Some(ServerMessage::error(r.code, r.message, false).to_json())
        }
    }
}

/// The next value of a watch, when there is one to follow; pending forever otherwise (and
/// once the watch's sender is gone).
async fn next_change(watch: &mut Option<watch::Receiver<Bytes>>) -> Bytes {
    let Some(w) = watch else {
        return std::future::pending().await;
    };
    if w.changed().await.is_err() {
        return std::future::pending().await;
    }
    w.borrow_and_update().clone()
}

/// The next event-log entry for an engineer (`None` after skipping entries it was too slow
/// for); pending forever for everyone else.
async fn next_log(log: &mut Option<broadcast::Receiver<Bytes>>) -> Option<Bytes> {
    let Some(rx) = log else {
        return std::future::pending().await;
    };
    match rx.recv().await {
        Ok(json) => Some(json),
        Err(broadcast::error::RecvError::Lagged(_)) => None,
        Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
    }
}

/// What [`next_frames`] put in the batch: frames of the channel heard and of the floor under
/// it, and frames of each skipped to stay live.
struct Taken {
    delivered: u64,
    skipped: u64,
    under: u64,
    under_skipped: u64,
}

/// Waits for the next frame of the channel heard (or of the floor under it), then takes what
/// else is queued (up to `MAX_BACKLOG` of each), skipping to live if the listener is further
/// behind than that. A listener of the relaxed class waits instead for the next tick of
/// `relaxed` (every [`RELAXED_EVERY`], one timer for all of them) and takes what came
/// meanwhile (up to `RELAXED_BACKLOG` of each). The channel's frames come first in `batch`,
/// then the floor's. Pending forever when no channel is heard.
///
/// A delegate with a [`Direct`] listener that is caught up joins the channel's writer instead
/// of waiting on its queue, and returns once handed back: with the end of a message to write
/// first, or with the frames its writer did not write.
async fn next_frames(
    (audio, under): (&mut Option<Heard>, &mut Option<Heard>),
    batch: &mut Vec<Bytes>,
    relaxed: &mut Option<watch::Receiver<bool>>,
    (relay, direct): (&Relay, &Option<crate::direct::Listener>),
) -> Taken {
    let Some((channel, rx)) = audio else {
        return std::future::pending().await;
    };
    batch.clear();
    // The first frame of the channel goes straight into `batch`; one of the floor waits here
    // for the channel's queued frames to go before it.
    let mut first_under = None;
    let (mut skipped, mut under_skipped) = (0, 0);
    let (backlog, keep) = match relaxed {
        Some(tick) => {
            // Boxed: one allocation every 200 ms, and the future of every delegate's task
            // stays the size of a plain queue wait.
            if Box::pin(tick.changed()).await.is_err() {
                return std::future::pending().await;
            }
            (RELAXED_BACKLOG, RELAXED_KEEP)
        }
        None => {
            // Lagging is never fatal: the queue moved on without us; count and go on.
            loop {
                if let Some(next) = direct.as_ref().and_then(|d| d.take_resume()) {
                    skipped += resume(rx, next, batch);
                }
                if !batch.is_empty()
                    || first_under.is_some()
                    || direct.as_ref().is_some_and(|d| d.has_rest())
                {
                    break;
                }
                // Looked at first without a lock: a delegate on its own queue (one that fell
                // behind) has frames waiting at nearly every wake-up.
                if let Some(listener) = direct.as_ref().filter(|_| under.is_none() && rx.is_empty())
                {
                    if relay.fanout(*channel).join_direct(listener, rx) {
                        listener.handed_back().await;
                        listener.leave();
                        continue;
                    }
                }
                let (got, is_under) = match under {
                    None => (rx.recv().await, false),
                    // Boxed, as above: only delegates with the floor underneath wait on two
                    // queues.
                    Some((_, floor)) => {
                        Box::pin(async {
                            tokio::select! {
                                biased;
                                f = rx.recv() => (f, false),
                                f = floor.recv() => (f, true),
                            }
                        })
                        .await
                    }
                };
                match (got, is_under) {
                    (Ok(f), false) => batch.push(f),
                    (Ok(f), true) => first_under = Some(f),
                    (Err(broadcast::error::RecvError::Lagged(n)), false) => skipped += n,
                    (Err(broadcast::error::RecvError::Lagged(n)), true) => under_skipped += n,
                    (Err(broadcast::error::RecvError::Closed), _) => {
                        return std::future::pending().await
                    }
                }
            }
            (MAX_BACKLOG, LIVE_KEEP)
        }
    };
    skipped += take_queued(rx, batch, 0, backlog, keep);
    let mut taken = Taken {
        delivered: batch.len() as u64,
        skipped,
        under: 0,
        under_skipped,
    };
    if let Some((_, floor)) = under {
        let at = batch.len();
        batch.extend(first_under);
        taken.under_skipped += take_queued(floor, batch, at, backlog, keep);
        taken.under = (batch.len() - at) as u64;
    }
    taken
}

/// After a channel's writer wrote a delegate every frame before `next`: drops those from its
/// queue (`Lagged` there is no loss: they were written) and puts the first frame it still
/// needs in `batch`. Returns the frames it never got (they left the queue unwritten).
fn resume(rx: &mut broadcast::Receiver<Bytes>, next: u32, batch: &mut Vec<Bytes>) -> u64 {
    loop {
        match rx.try_recv() {
            Ok(f) => {
                let seq = crate::direct::sequence(&f);
                if crate::direct::before(seq, next) {
                    continue;
                }
                batch.push(f);
                return (seq.wrapping_sub(next) as u64).min(crate::relay::CHANNEL_QUEUE as u64);
            }
            Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
            Err(_) => return 0,
        }
    }
}

/// Takes a delegate's socket back from its channel's writer and writes what the writer began
/// (within the write timeout): from here on its task may write. `Err` ends the connection as
/// [`deliver`]'s does. A plain function: the write, rare, is boxed, and the future every
/// delegate's task holds for it is small.
fn hold<'a>(
    ws: &'a mut WebSocket,
    conn: &'a mut Connection,
) -> impl Future<Output = Result<(), Option<Ending>>> + 'a {
    let limit = conn.write_timeout;
    hold_within(ws, conn, limit)
}

/// [`hold`], the write given `limit`.
fn hold_within<'a>(
    ws: &'a mut WebSocket,
    conn: &'a mut Connection,
    limit: Duration,
) -> impl Future<Output = Result<(), Option<Ending>>> + 'a {
    use futures_util::future::Either;
    // The end of a message begun, or (over TLS) records the session holds for the socket.
    let rest = conn.direct.as_ref().and_then(|d| {
        d.leave();
        d.take_rest()
            .or_else(|| d.records_waiting().then(Bytes::new))
    });
    match rest {
        None => Either::Left(std::future::ready(Ok(()))),
        Some(rest) => Either::Right(Box::pin(write_rest(ws, conn, rest, limit))),
    }
}

/// Writes the end of a message the writer began, and sends what the connection holds (over
/// TLS, its session's records). What could not be written within `limit` is kept as the
/// delegate's rest: nothing else may be written before it (the close included).
async fn write_rest(
    ws: &mut WebSocket,
    conn: &mut Connection,
    rest: Bytes,
    limit: Duration,
) -> Result<(), Option<Ending>> {
    use tokio::io::AsyncWriteExt;
    // The WebSocket's own write buffer is empty: a delegate joins its writer only after a
    // write of its own completed.
    let mut at = 0;
    let write = async {
        let at = &mut at;
        while *at < rest.len() {
            match ws.get_mut().write(&rest[*at..]).await? {
                0 => return Err(std::io::ErrorKind::WriteZero.into()),
                n => *at += n,
            }
        }
        ws.get_mut().flush().await
    };
    match tokio::time::timeout(limit, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(None),
        Err(_) => {
            if let Some(d) = &conn.direct {
                d.keep_rest(rest.slice(at..));
            }
            conn.relay.stats.slow_closed.fetch_add(1, Ordering::Relaxed);
            Err(Some(Ending::new(
                ErrorCode::TooSlow,
                format!(
                    "not reading: no frame could be written for {:.1} s",
                    limit.as_secs_f64()
                ),
            )))
        }
    }
}

/// Appends what `rx` has queued to `batch` (whose frames from `start` on are this queue's),
/// up to `backlog` of them; past `backlog` the frames are dropped but the newest `keep`.
/// Returns the frames skipped.
fn take_queued(
    rx: &mut broadcast::Receiver<Bytes>,
    batch: &mut Vec<Bytes>,
    start: usize,
    backlog: usize,
    keep: usize,
) -> u64 {
    let mut skipped = 0u64;
    if rx.len() + batch.len() - start > backlog {
        // Too far behind to be live: keep the newest frames only.
        skipped += (batch.len() - start) as u64;
        batch.truncate(start);
        let drop = rx.len().saturating_sub(keep);
        for _ in 0..drop {
            match rx.try_recv() {
                Ok(_) => skipped += 1,
                Err(broadcast::error::TryRecvError::Lagged(n)) => skipped += n,
                Err(_) => break,
            }
        }
    }
    while batch.len() - start < backlog {
        match rx.try_recv() {
            Ok(f) => batch.push(f),
            Err(broadcast::error::TryRecvError::Lagged(n)) => skipped += n,
            Err(_) => break,
        }
    }
    skipped
}

/// How often frames are written to listeners of the relaxed class.
pub const RELAXED_EVERY: Duration = Duration::from_millis(200);
/// Frames a relaxed listener may have waiting before it is moved on to live: 960 ms at 20 ms
/// frames, room for a tick that comes late (under the channel queue's 64); past it the newest
/// `RELAXED_KEEP` (one write's worth) are kept.
pub const RELAXED_BACKLOG: usize = 48;
pub const RELAXED_KEEP: usize = 10;

/// Runs a write (`write` polls it), arming the timeout only if the write does not complete at
/// once: nearly every write does, and a timer per frame per listener is a cost paid thousands
/// of times a frame.
async fn write_within<T>(
    limit: Duration,
    mut write: impl FnMut(&mut std::task::Context<'_>) -> std::task::Poll<T>,
) -> Result<T, tokio::time::error::Elapsed> {
    let first = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match write(cx) {
            std::task::Poll::Ready(out) => Some(out),
            std::task::Poll::Pending => None,
        })
    })
    .await;
    match first {
        Some(out) => Ok(out),
        None => tokio::time::timeout(limit, std::future::poll_fn(write)).await,
    }
}

/// Feeds the frames of `batch` from `*next` on to `ws` and flushes them (what `feed` for each
/// and `flush` would do, without a future holding a message of its own).
fn poll_batch<S>(
    ws: &mut S,
    batch: &mut [Bytes],
    next: &mut usize,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<Result<(), WsError>>
where
    S: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    while let Some(frame) = batch.get_mut(*next) {
        std::task::ready!(std::pin::Pin::new(&mut *ws).poll_ready(cx))?;
        std::pin::Pin::new(&mut *ws).start_send(Message::Binary(std::mem::take(frame)))?;
        *next += 1;
    }
    std::pin::Pin::new(&mut *ws).poll_flush(cx)
}

// The three below are plain functions returning the future of the send, not `async fn`s, and
// so add nothing to it: they are part of every connection's task.

fn send_text<'a, S>(
    ws: &'a mut S,
    text: Utf8Bytes,
) -> impl Future<Output = Result<(), WsError>> + 'a
where
    S: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    use futures_util::future::Either;
    if text.len() <= FRAGMENT {
        Either::Left(send_within(ws, Message::Text(text)))
    } else {
        Either::Right(send_fragments(ws, text))
    }
}

/// Sends a long text message in fragments of at most [`FRAGMENT`] bytes (cut between
/// characters), each written at once, all within the write timeout.
async fn send_fragments<S>(ws: &mut S, text: Utf8Bytes) -> Result<(), WsError>
where
    S: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    let send = async {
        let mut at = 0;
        while at < text.len() {
            let mut end = (at + FRAGMENT).min(text.len());
            while !text.as_str().is_char_boundary(end) {
                end -= 1;
            }
            let opcode = if at == 0 { Data::Text } else { Data::Continue };
            let bytes = Bytes::from(text.clone()).slice(at..end);
            let frame = Frame::message(bytes, OpCode::Data(opcode), end == text.len());
            ws.send(Message::Frame(frame)).await?;
            at = end;
        }
        Ok(())
    };
    tokio::time::timeout(WRITE_TIMEOUT, send)
        .await
        .unwrap_or_else(|_| Err(write_timed_out()))
}

fn write_timed_out() -> WsError {
    WsError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "write timed out",
    ))
}

/// Writes what the WebSocket has queued of its own (a pong), within the write timeout.
fn send_flush<'a, S>(ws: &'a mut S) -> impl Future<Output = Result<(), WsError>> + 'a
where
    S: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    use futures_util::{FutureExt, SinkExt};
    tokio::time::timeout(WRITE_TIMEOUT, ws.flush())
        .map(|r| r.unwrap_or_else(|_| Err(write_timed_out())))
}

fn send_within<'a, S>(ws: &'a mut S, msg: Message) -> impl Future<Output = Result<(), WsError>> + 'a
where
    S: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    use futures_util::FutureExt;
    tokio::time::timeout(WRITE_TIMEOUT, ws.send(msg))
        .map(|r| r.unwrap_or_else(|_| Err(write_timed_out())))
}

fn send_bytes_text<'a, S>(
    ws: &'a mut S,
    json: Bytes,
) -> impl Future<Output = Result<(), WsError>> + 'a
where
    S: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    use futures_util::future::Either;
    match Utf8Bytes::try_from(json) {
        Ok(text) => Either::Left(send_text(ws, text)),
        Err(e) => Either::Right(std::future::ready(Err(WsError::Utf8(e.to_string())))),
    }
}

/// Frames a sender may send ahead of real time: a burst after a network hiccup passes, a client
/// sending far faster than any audio does is refused before it floods its listeners.
pub const FRAME_BURST: f64 = 100.0;
/// Sustained frames a second a sender may send: one per 2.5 ms, the shortest Opus frame.
pub const FRAME_RATE: f64 = 400.0;

/// Control messages (text, and WebSocket pings and pongs) a client may send at once: far
/// more than any page or console sends after waking from a phone's sleep.
pub const CONTROL_BURST: f64 = 40.0;
/// Sustained control messages a second a client is read at: a person presses a key, a page
/// pings once a second. Past it the relay reads the connection at this pace, so a flood backs
/// up in the client's own socket instead of costing every listener's frames.
pub const CONTROL_RATE: f64 = 20.0;

/// A token bucket: `burst` at once, `rate` a second sustained (given at each take: they are
/// constants, and every connection holds two buckets).
struct Budget {
    tokens: f64,
    last: std::time::Instant,
}

impl Budget {
    fn new(burst: f64) -> Budget {
        Budget {
            tokens: burst,
            last: std::time::Instant::now(),
        }
    }

    /// Takes a token; `Err` with how long until the next one when there is none.
    fn take(&mut self, burst: f64, rate: f64) -> Result<(), Duration> {
        let now = std::time::Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * rate;
        self.tokens = (self.tokens + refill).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

/// What reading a client brings its connection's task.
enum Read {
    /// A control message to act on.
    Control(Box<ClientMessage>),
    /// A WebSocket ping: its pong is queued in the WebSocket, written by its next read,
    /// write or flush.
    Pinged,
    /// The client left (`None`) or sent what ends the connection.
    Ended(Option<Ending>),
}

/// What a client may send besides control messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sends {
    Nothing,
    ConsoleFrames,
    FloorFrames,
}

/// The reading side of a connection: audio frames go straight to the relay, control messages
/// to the connection's task; the client's budgets and the dead-path deadline apply. All its
/// state is here rather than in [`Reader::next`]'s future, which may be dropped between any
/// two messages (a delegate's task drops it whenever it writes a frame).
struct Reader {
    relay: Arc<Relay>,
    quiet: Arc<crate::admission::Quiet>,
    session: Session,
    addr: SocketAddr,
    /// Refusals are said in the log once per address and kind per 10 s: a script repeating
    /// one must not fill the disk.
    host: std::net::IpAddr,
    sends: Sends,
    frames: Budget,
    control: Budget,
    /// A control message read past the budget, waiting for its turn.
    held: Option<Box<Message>>,
}

impl Reader {
    fn new(conn: &Connection, quiet: Arc<crate::admission::Quiet>) -> Reader {
        Reader {
            relay: conn.relay.clone(),
            quiet,
            session: conn.session,
            addr: conn.addr,
            host: crate::admission::host_key(conn.addr.ip()),
            sends: match conn.peer {
                Peer::Console { .. } => Sends::ConsoleFrames,
                Peer::Floor => Sends::FloorFrames,
                Peer::Listener | Peer::Engineer => Sends::Nothing,
            },
            frames: Budget::new(FRAME_BURST),
            control: Budget::new(CONTROL_BURST),
            held: None,
        }
    }

    /// How long nothing may come from this client before its path is taken to be dead.
    fn deadline(&self) -> Duration {
        match self.sends {
            Sends::ConsoleFrames | Sends::FloorFrames => SENDER_DEADLINE,
            Sends::Nothing => LISTENER_DEADLINE,
        }
    }

    /// Reads until there is something for the connection's task. `silence` is the
    /// connection's one timer: the dead-path deadline, reset by every message, or while a
    /// control message waits for its turn, that turn.
    async fn next<S>(
        &mut self,
        stream: &mut S,
        mut silence: std::pin::Pin<&mut tokio::time::Sleep>,
    ) -> Read
    where
        S: futures_util::Stream<Item = Result<Message, WsError>> + Unpin,
    {
        loop {
            if self.held.is_some() {
                // Paced, not dropped: the message waits its turn, and while it does nothing
                // more is read from this client.
                silence.as_mut().await;
                if let Err(wait) = self.control.take(CONTROL_BURST, CONTROL_RATE) {
                    silence.as_mut().reset(tokio::time::Instant::now() + wait);
                    continue;
                }
                silence
                    .as_mut()
                    .reset(tokio::time::Instant::now() + self.deadline());
                let msg = *self.held.take().expect("a held message");
                match self.take(msg) {
                    Some(read) => return read,
                    None => continue,
                }
            }
            let next = tokio::select! {
                // What has come counts before the deadline.
                biased;
                next = stream.next() => next,
                _ = silence.as_mut() => return self.dead(),
            };
            silence
                .as_mut()
                .reset(tokio::time::Instant::now() + self.deadline());
            let msg = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Read::Ended(input_error(e)),
                None => return Read::Ended(None),
            };
            if !matches!(msg, Message::Binary(_)) {
                if let Err(wait) = self.control.take(CONTROL_BURST, CONTROL_RATE) {
                    self.relay
                        .stats
                        .paced_messages
                        .fetch_add(1, Ordering::Relaxed);
                    if self
                        .quiet
                        .allow(self.host, "paced", std::time::Instant::now())
                    {
                        tracing::warn!(peer = %self.addr.ip(), session = self.session, rate = CONTROL_RATE, "control messages faster than a person sends them: read at that pace");
                    }
                    self.held = Some(Box::new(msg));
                    silence.as_mut().reset(tokio::time::Instant::now() + wait);
                    continue;
                }
            }
            if let Some(read) = self.take(msg) {
                return read;
            }
        }
    }

    /// Nothing came within the deadline: the path is taken to be dead.
    fn dead(&self) -> Read {
        let deadline = self.deadline();
        self.relay.stats.dead_paths.fetch_add(1, Ordering::Relaxed);
        // A sender's is worth a line each; delegates' once per address per 10 s.
        if self.sends != Sends::Nothing
            || self
                .quiet
                .allow(self.host, "dead_path", std::time::Instant::now())
        {
            tracing::warn!(peer = %self.addr, session = self.session, deadline_s = deadline.as_secs(), "no answer: path taken to be dead");
        }
        Read::Ended(Some(Ending::new(
            ErrorCode::Timeout,
            format!("no answer for {} s (path dead)", deadline.as_secs()),
        )))
    }

    /// Takes one message within the budgets: what the connection's task must know, if anything.
    fn take(&mut self, msg: Message) -> Option<Read> {
        let (relay, session, addr, host) = (&self.relay, self.session, self.addr, self.host);
        match msg {
            Message::Binary(frame) => {
                if self.frames.take(FRAME_BURST, FRAME_RATE).is_err() {
                    relay.stats.refused_frames.fetch_add(1, Ordering::Relaxed);
                    if self
                        .quiet
                        .allow(host, "frames_too_fast", std::time::Instant::now())
                    {
                        tracing::warn!(peer = %addr, session, "frames faster than real time");
                    }
                    return Some(Read::Ended(Some(Ending::new(
                        ErrorCode::BadFrame,
                        format!(
                            "frames sent faster than real time (more than {FRAME_RATE} a second)"
                        ),
                    ))));
                }
                let result = match self.sends {
                    Sends::ConsoleFrames => relay.console_frame(session, &frame),
                    Sends::FloorFrames => relay.floor_frame(session, &frame),
                    Sends::Nothing => {
                        return Some(Read::Ended(Some(Ending::new(
                            ErrorCode::Forbidden,
                            "only booth consoles and the floor send audio",
                        ))))
                    }
                };
                if let Err(e) = result {
                    relay.stats.refused_frames.fetch_add(1, Ordering::Relaxed);
                    if self
                        .quiet
                        .allow(host, "bad_frame", std::time::Instant::now())
                    {
                        tracing::warn!(peer = %addr, session, error = %e, "bad frame");
                    }
                    return Some(Read::Ended(Some(Ending::new(
                        ErrorCode::BadFrame,
                        e.to_string(),
                    ))));
                }
                None
            }
            Message::Text(text) => match ClientMessage::parse(&text) {
                Ok(msg) => Some(Read::Control(Box::new(msg))),
                Err(e) => {
                    relay.stats.refused_messages.fetch_add(1, Ordering::Relaxed);
                    if self
                        .quiet
                        .allow(host, "bad_message", std::time::Instant::now())
                    {
                        tracing::warn!(peer = %addr, session, error = %e, "bad message");
                    }
                    Some(Read::Ended(Some(Ending::new(
                        ErrorCode::BadMessage,
                        e.to_string(),
                    ))))
                }
            },
            Message::Close(_) => Some(Read::Ended(None)),
            Message::Pong(payload) => {
                // Our own ping's send time came back: the round trip.
                if let Ok(sent) = <[u8; 8]>::try_from(payload.as_ref()) {
                    let rtt = crate::relay::unix_micros().saturating_sub(u64::from_be_bytes(sent));
                    relay.health_update(session, |h| h.rtt_ms = Some(rtt as f64 / 1000.0));
                }
                None
            }
            Message::Ping(_) => Some(Read::Pinged),
            // Reading yields whole messages, never raw frames.
            Message::Frame(_) => None,
        }
    }
}

/// A sender's or engineer's reader task: reads the client's messages until it leaves or sends
/// what ends the connection, or until the connection's task stops it.
async fn read_loop(
    mut stream: futures_util::stream::SplitStream<WebSocket>,
    mut reader: Reader,
    tx: mpsc::Sender<Incoming>,
    mut stop: watch::Receiver<bool>,
) {
    let silence = tokio::time::sleep(reader.deadline());
    let mut silence = std::pin::pin!(silence);
    loop {
        let read = tokio::select! {
            read = reader.next(&mut stream, silence.as_mut()) => read,
            // The connection's task is ending it: take nothing more from this client.
            _ = stop.changed() => {
                drain(&mut stream).await;
                return;
            }
        };
        match read {
            Read::Control(msg) => {
                if tx.send(Incoming::Control(msg)).await.is_err() {
                    return;
                }
            }
            // Its pong goes with the next read.
            Read::Pinged => {}
            Read::Ended(ending) => {
                // After a dead path nothing more will come; after a refusal the client's
                // remaining messages are read until it closes.
                let closing = ending
                    .as_ref()
                    .is_some_and(|e| e.code != ErrorCode::Timeout);
                let _ = tx.send(Incoming::Ended(ending)).await;
                if closing {
                    drain(&mut stream).await;
                }
                return;
            }
        }
    }
}

/// Reads and drops what a client sends until it closes, for at most `DRAIN`.
async fn drain<S>(stream: &mut S)
where
    S: futures_util::Stream<Item = Result<Message, WsError>> + Unpin,
{
    let _ = tokio::time::timeout(DRAIN, async {
        while let Some(Ok(m)) = stream.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// A control message after hello: the reply to send, if any.
fn control(conn: &mut Connection, msg: ClientMessage) -> Result<Option<ServerMessage>, Refusal> {
    let relay = conn.relay.clone();
    let event = relay.event().clone();
    let resolve = |c: &str| {
        event.resolve_channel(c).ok_or_else(|| Refusal {
            code: ErrorCode::UnknownChannel,
            message: format!("there is no channel {c}"),
        })
    };
    let forbid = |what: &str| Refusal {
        code: ErrorCode::Forbidden,
        message: format!("{what} is for booth consoles"),
    };
    let is_console = matches!(conn.peer, Peer::Console { .. });
    let command = match msg {
        ClientMessage::Ping { t } => return Ok(Some(ServerMessage::Pong { t })),
        ClientMessage::Stats { overruns } => {
            if !matches!(conn.peer, Peer::Floor | Peer::Console { .. }) {
                return Err(Refusal {
                    code: ErrorCode::Forbidden,
                    message: "stats are for booth consoles and the floor".into(),
                });
            }
            relay.health_update(conn.session, |h| h.overruns = overruns);
            return Ok(None);
        }
        ClientMessage::Hello { .. } => {
            return Err(Refusal {
                code: ErrorCode::NotHello,
                message: "hello was already accepted on this connection".into(),
            })
        }
        ClientMessage::Subscribe {
            channel,
            floor_under,
        } => {
            if matches!(conn.peer, Peer::Floor | Peer::Console { .. }) {
                return Err(Refusal {
                    code: ErrorCode::Forbidden,
                    message: "consoles choose what they hear with input".into(),
                });
            }
            let ch = resolve(&channel)?;
            conn.wants_floor_under = floor_under;
            conn.hear(Some(ch));
            tracing::debug!(peer = %conn.addr, channel = %channel, floor_under, "subscribed");
            return Ok(Some(conn.subscribed()));
        }
        ClientMessage::Unsubscribe => {
            if is_console {
                return Err(forbid("unsubscribe"));
            }
            conn.hear(None);
            return Ok(Some(conn.subscribed()));
        }
        ClientMessage::Record { .. } => {
            return Err(Refusal {
                code: ErrorCode::Forbidden,
                message: "recording is for the sound engineer".into(),
            })
        }
        ClientMessage::ForceMute { booth, console } => {
            if !matches!(conn.peer, Peer::Engineer) {
                return Err(Refusal {
                    code: ErrorCode::Forbidden,
                    message: "force-mute is for the sound engineer".into(),
                });
            }
            tracing::info!(peer = %conn.addr, booth = %booth, console = %console, "force-mute");
            relay.force_mute(&booth, &console)?;
            return Ok(None);
        }
        _ if !is_console => return Err(forbid("this command")),
        ClientMessage::Live { channel } => {
            Command::Live(channel.as_deref().map(resolve).transpose()?)
        }
        ClientMessage::Mute => Command::Mute,
        ClientMessage::Cough { down } => Command::Cough(down),
        ClientMessage::Handover => Command::Handover,
        ClientMessage::Accept => Command::Accept,
        ClientMessage::Input { channel } => Command::Input(resolve(&channel)?),
    };
    if let Peer::Console { booth, console } = &conn.peer {
        tracing::info!(peer = %conn.addr, booth = %booth, console = %console, command = ?command, "console command");
    }
    relay.command(conn.session, command)?;
    Ok(None)
}
