//! The accept loop: every TCP connection passes the [`Gate`](crate::admission::Gate), then
//! TLS (when set up) and HTTP/1.1 with deadlines, and is closed when it has not finished its
//! request in time or the gate needs its place.
//!
//! HTTP/1.1 only: browsers open WebSockets over HTTP/1.1, and hyper's HTTP/1 server has the
//! header-read deadline that closes a connection which sends nothing, sends its request a byte
//! at a time, or sits idle between requests.

use crate::admission::{Gate, Quiet, Refused, Ticket};
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

/// Time a connection has to send a complete HTTP request head, from its first byte or from
/// the end of the previous response (a keep-alive connection idle for longer is closed). A
/// phone on a poor venue network sends a request head (under 2 KiB) in well under a second.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Time a client has to complete its TLS handshake.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);
/// Longest request head taken (the page's requests are far smaller).
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// Time a connection taken into the reserve (the relay is full of listeners) has to become a
/// sender or an engineer, WebSocket upgrade and `hello` included: a booth needs a few round
/// trips; whoever only holds the place gives it back soon.
pub const RESERVE_DEADLINE: Duration = Duration::from_secs(2);

/// How long, at shutdown, a connection in the middle of an HTTP request may take to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Connections the kernel may hold, handshake done, before the relay accepts them. A burst of
/// new connections (a hall of phones after a Wi-Fi blip, or a script) past the queue has its
/// handshakes dropped and retried a second later: keep it deep (Linux caps it at
/// `net.core.somaxconn`, 4096 by default).
pub const ACCEPT_BACKLOG: u32 = 4096;

/// Binds `addr` (`host:port`, resolved) for [`run`], with [`ACCEPT_BACKLOG`] and
/// `SO_REUSEADDR` (a restarted relay gets its port back at once). Errors are the socket's.
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|_| socket.listen(ACCEPT_BACKLOG)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other(format!("{addr} names no address"))))
}

/// Counters of the accept loop, for `/metrics`.
#[derive(Default)]
pub struct Counters {
    /// Connections closed because their request did not come in time.
    pub request_timeouts: AtomicU64,
    /// TLS handshakes that failed or did not finish in time.
    pub handshake_failures: AtomicU64,
    /// `accept()` failures (out of file descriptors and the like).
    pub accept_errors: AtomicU64,
}

/// A request's connection's socket, and its TLS session if it has one: its WebSocket, if it
/// becomes a delegate's, may be written by a channel's writer (`direct.rs`). Put in every
/// request's extensions.
#[derive(Clone)]
pub struct DirectSocket {
    pub fd: std::os::fd::RawFd,
    pub tls: Option<crate::tls::Session>,
}

/// What the accept loop needs.
pub struct Accept {
    pub gate: Arc<Gate>,
    pub counters: Arc<Counters>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Sets socket options on each connection.
    pub configure: fn(&TcpStream),
}

/// Accepts connections on `listener` and serves `app` on each until `stop` turns true.
pub async fn run(
    listener: TcpListener,
    app: Router,
    accept: Accept,
    mut stop: watch::Receiver<bool>,
) {
    let accept = Arc::new(accept);
    let quiet = Quiet::new(Duration::from_secs(10));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(REQUEST_DEADLINE)
        .max_buf_size(MAX_REQUEST_HEAD);
    let http = Arc::new(http);
    let mut last_error: Option<Instant> = None;
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    accept.counters.accept_errors.fetch_add(1, Ordering::Relaxed);
                    if last_error.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        tracing::error!(error = %e, open = accept.gate.open(), "accept failed; the open-file limit may be too low (ulimit -n)");
                        last_error = Some(Instant::now());
                    }
                    // Out of file descriptors and the like: wait for some to be freed.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let ticket = match accept.gate.admit(peer.ip()) {
            Ok(t) => t,
            Err(refused) => {
                refuse(tcp, refused, accept.tls.is_some());
                if quiet.allow(peer.ip(), refused.label(), Instant::now()) {
                    tracing::warn!(peer = %peer.ip(), reason = refused.label(), open = accept.gate.open(), "connection refused: {} (said once per address per 10 s)", refused.reason());
                }
                continue;
            }
        };
        (accept.configure)(&tcp);
        let app = app.clone();
        let accept = accept.clone();
        let http = http.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let evicted = ticket.clone();
            // The HTTP state (5 KiB) in a box of its own rather than in the task: a task is
            // allocated on a 128-byte boundary, and glibc cannot reuse the block of a finished
            // one for the next (it needs room to align it), so each upgraded connection left
            // one behind in the heap.
            let http_connection =
                Box::pin(connection(tcp, peer, ticket, app, &accept, &http, stop));
            tokio::select! {
                _ = http_connection => {}
                // The gate gave this connection's place to a newer one: dropping the task
                // closes the socket.
                _ = evicted.evicted() => {}
            }
        });
    }
}

/// The answer to a request other than a WebSocket upgrade on a connection in the reserve.
fn reserve_only() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        [("retry-after", "2"), ("connection", "close")],
        "the relay is full: its last places are kept for booths, the floor and engineers\n",
    )
        .into_response()
}

/// Tells a refused connection why, if it can be done at once, and closes it.
fn refuse(tcp: TcpStream, refused: Refused, tls: bool) {
    if !tls {
        let body = format!("{}\n", refused.reason());
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: 2\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        // A new socket's send buffer is empty: the answer goes out in one write, or not at all.
        let _ = tcp.try_write(response.as_bytes());
    }
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    ticket: Ticket,
    app: Router,
    accept: &Accept,
    http: &http1::Builder,
    stop: watch::Receiver<bool>,
) {
    use std::os::fd::AsRawFd;
    let fd = tcp.as_raw_fd();
    // Every byte from the client is read within its address's budget until it proves to be a
    // sender (`admission::READ_RATE`).
    let tcp = ticket.paced(tcp);
    let conn = (peer, ticket);
    match &accept.tls {
        None => {
            let direct = DirectSocket { fd, tls: None };
            serve_http(tcp, conn, direct, app, accept, http, stop).await
        }
        Some(tls) => match tokio::time::timeout(HANDSHAKE_DEADLINE, tls.accept(tcp)).await {
            Ok(Ok(stream)) => {
                // Its session shared, so that a channel's writer can encrypt for it.
                let (io, session) = stream.into_inner();
                let stream = crate::tls::Shared::new(io, session);
                let direct = DirectSocket {
                    fd,
                    tls: Some(stream.session()),
                };
                serve_http(stream, conn, direct, app, accept, http, stop).await
            }
            Ok(Err(e)) => {
                accept
                    .counters
                    .handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
            }
            Err(_) => {
                accept
                    .counters
                    .handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %peer, "TLS handshake timed out");
            }
        },
    }
}

async fn serve_http<I>(
    io: I,
    (peer, ticket): (SocketAddr, Ticket),
    direct: DirectSocket,
    app: Router,
    accept: &Accept,
    http: &http1::Builder,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let reserved = ticket.is_reserved();
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            let app = app.clone();
            let ticket = ticket.clone();
            let direct = direct.clone();
            async move {
                // A place in the reserve is for a booth, the floor or an engineer, which come
                // through /ws: anything else there is refused and the place given back.
                if ticket.is_reserved() && req.uri().path() != "/ws" {
                    ticket.count_reserve_refusal();
                    return Ok(reserve_only());
                }
                req.extensions_mut().insert(ConnectInfo(peer));
                req.extensions_mut().insert(ticket);
                req.extensions_mut().insert(direct);
                app.oneshot(req).await
            }
        });
    let conn = http
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let deadline = async {
        if reserved {
            tokio::time::sleep(RESERVE_DEADLINE).await
        } else {
            std::future::pending().await
        }
    };
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = deadline => {
            tracing::debug!(peer = %peer, "closed: a reserve place not taken by a sender in time");
            return;
        }
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            accept
                .counters
                .request_timeouts
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %peer, "closed: no complete request within {} s", REQUEST_DEADLINE.as_secs());
        } else {
            tracing::debug!(peer = %peer, error = %e, "HTTP connection ended with an error");
        }
    }
}
