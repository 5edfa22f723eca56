//! Channels as Icecast-style HTTP streams, for any player: `GET /listen/<room>/<lang>.opus`
//! (the floor: `/listen/<room>/floor.opus`) answers with an endless Ogg Opus stream of the
//! channel that VLC, mpv, ffplay/ffmpeg and an `<audio>` element play.
//!
//! - **As carried.** The channel's Opus packets are framed into Ogg pages (one page per
//!   packet), never decoded or re-encoded, and written every 200 ms ([`WRITE_EVERY`]: the
//!   relaxed class, a tenth of the writes; players buffer far more).
//! - **One stream through every switch.** The stream follows the channel, not a source: when
//!   the channel goes from the floor to an interpreter and back, the packets simply continue in
//!   the same logical stream, its granule positions counting every sample sent, so a player
//!   never sees a new stream or a jump. Where the channel carries nothing (an interpreter's
//!   hold, a channel set to silence), silence packets keep the stream going in real time, so
//!   players do not run dry and rebuffer.
//! - **Live.** A listener starts at the next frame (no backlog); one that falls behind skips to
//!   live, like a relaxed WebSocket listener, and one that takes nothing for [`WRITE_TIMEOUT`]
//!   is dropped.
//! - **Counted and bounded.** A stream listener is in the channel's audience and its metrics
//!   like a delegate on the page, and takes a listener's place in the gate (`admission`): the
//!   same per-address bound, the same reserve kept for senders, the same slowing of wrong
//!   access codes (`attempts`).
//! - **The page's access code.** When the event has an access code, the stream asks for it with
//!   HTTP Basic authentication (any user name, the code as the password): players take it in
//!   the address (`http://listener:CODE@relay:8080/listen/plenary/en.opus`) and send it as a
//!   header, a browser asks for it in its own dialog. A query parameter was not chosen: proxies
//!   and access logs keep addresses, not `Authorization` headers.

use crate::admission::{Denied, Gate, Ticket};
use crate::attempts::Attempts;
use crate::config::secret_matches;
use crate::ogg;
use crate::protocol::{FrameHeader, HEADER_LEN};
use crate::relay::Relay;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, watch};

/// How often a stream's pages are written: players buffer seconds of sound, so a stream
/// listener is of the relaxed class (docs/PROTOCOL.md, hello's `delivery`): one write of about
/// ten pages every 200 ms instead of one a frame.
pub const WRITE_EVERY: Duration = crate::server::RELAXED_EVERY;
/// Writes waiting for the listener's socket: about 800 ms of sound. A listener that cannot
/// take them skips packets (counted) rather than hearing them late.
pub const BODY_QUEUE: usize = 4;
/// A listener whose queue stayed full this long is not reading, and its stream ends.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames come in the channel's queue between two writes (ten at 20 ms frames); past this
/// many the listener skips to the newest [`KEEP`], as a relaxed WebSocket listener does.
pub const BACKLOG: usize = crate::server::RELAXED_BACKLOG;
pub const KEEP: usize = crate::server::RELAXED_KEEP;
/// With no frame for this long the channel is carrying nothing: silence is sent in its place.
pub const SILENCE_AFTER: Duration = Duration::from_millis(100);
/// The pre-skip announced: libopus's encoder look-ahead at 48 kHz, as the booths encode.
const PRE_SKIP: u16 = 312;

/// What a stream needs of the server: the relay, its shutdown, and the bounds every listener
/// is under.
pub struct Context {
    pub relay: Arc<Relay>,
    pub shutdown: watch::Receiver<bool>,
    pub gate: Arc<Gate>,
    pub attempts: Arc<Attempts>,
}

/// Answers `GET /listen/{room}/{file}` from `peer` (whose connection holds `ticket` in the
/// gate) with the channel's stream, or a refusal in words: 404 for a channel that does not
/// exist (or a name not ending in `.opus`); 401 with a Basic challenge when the event's access
/// code is missing or wrong; 429 after too many wrong codes from the address or when it has
/// as many listeners as it may; 503 when the relay keeps its last places for senders.
pub async fn listen(
    cx: Context,
    peer: SocketAddr,
    ticket: Option<Ticket>,
    room: String,
    file: String,
    headers: HeaderMap,
) -> Response {
    let Context {
        relay,
        shutdown,
        gate,
        attempts,
    } = cx;
    let ticket = match ticket {
        Some(t) => t,
        // Only a router served without the accept loop has none: admit here.
        None => match gate.admit(peer.ip()) {
            Ok(t) => t,
            Err(r) => return busy(StatusCode::SERVICE_UNAVAILABLE, r.reason().to_string()),
        },
    };
    let client =
        crate::admission::host_key(crate::admission::client_addr(peer.ip(), &headers, &gate));
    let event = relay.event().clone();
    let Some(lang) = file.strip_suffix(".opus") else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("no stream {file}: streams are named <lang>.opus or floor.opus\n"),
        );
    };
    let id = format!("{room}/{lang}");
    let Some(channel) = event.channel_index(&id) else {
        return refuse(StatusCode::NOT_FOUND, format!("there is no channel {id}\n"));
    };
    if let Some(code) = &event.access_code {
        let now = Instant::now();
        // Counted as the WebSocket hello counts them: per host (an IPv6 /64) and target.
        let host = crate::admission::host_key(client);
        if let Err(wait) = attempts.check(host, "access code", now) {
            return busy(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many wrong access codes from this address: try again in {} s\n",
                    wait.as_secs_f64().ceil() as u64
                ),
            );
        }
        match basic_password(&headers) {
            Some(given) if secret_matches(code, &given) => attempts.succeeded(host, "access code"),
            given => {
                if given.is_some() {
                    attempts.failed(host, "access code", now);
                }
                relay.stats.refused_auth.fetch_add(1, Ordering::Relaxed);
                let why = if given.is_some() {
                    "wrong access code"
                } else {
                    "this event needs an access code"
                };
                let mut r = refuse(
                    StatusCode::UNAUTHORIZED,
                    format!("{why}: give it as the password (any user name)\n"),
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"boothcast\", charset=\"UTF-8\""),
                );
                return r;
            }
        }
    }
    if let Err(denied) = ticket.listener(client) {
        let status = match denied {
            Denied::Full => StatusCode::SERVICE_UNAVAILABLE,
            Denied::PerAddress(_) => StatusCode::TOO_MANY_REQUESTS,
        };
        return busy(status, format!("{denied}\n"));
    }
    let ch = &event.channels[channel as usize];
    let comments = vec![
        format!("TITLE={} ({})", ch.native, ch.id),
        format!("ALBUM={}", event.name),
        format!("LANGUAGE={}", ch.lang),
    ];
    let writer = match ogg::Writer::new(Vec::new(), rand::random(), 1, PRE_SKIP, &comments) {
        Ok(w) => w,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(BODY_QUEUE);
    let subscription = Subscription::new(relay.clone(), channel);
    tracing::debug!(peer = %client, channel = %ch.id, "stream listener");
    tokio::spawn(async move {
        run(subscription, writer, tx, shutdown).await;
        // The listener's place in the gate is given back with its stream.
        drop(ticket);
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    let name = HeaderValue::from_str(&format!("{} ({})", ch.name, ch.id))
        .unwrap_or_else(|_| HeaderValue::from_static("boothcast"));
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("audio/ogg")),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-cache, no-store"),
            ),
            (header::HeaderName::from_static("icy-name"), name),
            (
                header::HeaderName::from_static("icy-pub"),
                HeaderValue::from_static("0"),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// A refusal that a later try may not meet: with `Retry-After`.
fn busy(status: StatusCode, text: String) -> Response {
    let mut r = refuse(status, text);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    r
}

fn refuse(status: StatusCode, text: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

/// The password of an `Authorization: Basic` header.
fn basic_password(headers: &HeaderMap) -> Option<String> {
    use base64::Engine;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    Some(password.to_string())
}

/// A listener's place in a channel's audience, given back when the stream ends.
struct Subscription {
    relay: Arc<Relay>,
    channel: u16,
    rx: broadcast::Receiver<Bytes>,
}

impl Subscription {
    fn new(relay: Arc<Relay>, channel: u16) -> Subscription {
        let rx = relay.subscribe(channel, true);
        Subscription { relay, channel, rx }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.relay.unsubscribe(self.channel, true);
    }
}

/// Moves one listener's frames into Ogg pages until the listener goes, stops reading, or the
/// relay shuts down. Every [`WRITE_EVERY`] what the channel carried since the last write (or
/// silence in its place) goes out as one piece.
async fn run(
    mut sub: Subscription,
    mut writer: ogg::Writer<Vec<u8>>,
    tx: mpsc::Sender<Bytes>,
    mut shutdown: watch::Receiver<bool>,
) {
    let fan = sub.relay.clone();
    let fanout = fan.fanout(sub.channel);
    // The headers, at once: a player knows what it plays before the first frame.
    if writer.flush().is_err() || tx.send(take(&mut writer)).await.is_err() {
        return;
    }
    // The time up to which sound has been sent: frames and silence keep it near now.
    let mut sent_until = Instant::now();
    let mut full_since: Option<Instant> = None;
    let mut frames: Vec<Bytes> = Vec::with_capacity(BACKLOG);
    let mut tick = tokio::time::interval(WRITE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            _ = tx.closed() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        // What came since the last write; past BACKLOG, only the newest KEEP (live again).
        let mut skipped = 0;
        loop {
            match sub.rx.try_recv() {
                Ok(f) => frames.push(f),
                Err(broadcast::error::TryRecvError::Lagged(n)) => skipped += n,
                Err(broadcast::error::TryRecvError::Empty) => break,
                Err(broadcast::error::TryRecvError::Closed) => return,
            }
        }
        if frames.len() > BACKLOG {
            let cut = frames.len() - KEEP;
            frames.drain(..cut);
            skipped += cut as u64;
        }
        if tx.capacity() == 0 {
            // The listener is not taking what it was sent: skip rather than queue late sound.
            let since = *full_since.get_or_insert(now);
            skipped += frames.len() as u64;
            frames.clear();
            fanout.frames_skipped.fetch_add(skipped, Ordering::Relaxed);
            if since.elapsed() > WRITE_TIMEOUT {
                fan.stats.slow_closed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(channel = sub.channel, "stream listener not reading: closed");
                return;
            }
            sent_until = now;
            continue;
        }
        full_since = None;
        if skipped > 0 {
            fanout.frames_skipped.fetch_add(skipped, Ordering::Relaxed);
        }
        let mut delivered = 0;
        for f in frames.drain(..) {
            if FrameHeader::parse(&f).is_err() {
                continue;
            }
            let packet = &f[HEADER_LEN..];
            let Ok(samples) = opus::packet::get_nb_samples(packet, 48_000) else {
                continue;
            };
            if writer.packet(packet, samples as u32).is_err() {
                return;
            }
            delivered += 1;
            sent_until = sent_until.max(now.checked_sub(SILENCE_AFTER).unwrap_or(now))
                + Duration::from_micros(samples as u64 * 1000 / 48);
        }
        if delivered == 0 {
            // Nothing on the channel for a while: silence, so the player keeps playing.
            let behind = now.saturating_duration_since(sent_until);
            if behind < SILENCE_AFTER {
                continue;
            }
            let samples = ((behind.as_micros() as u64 * 48 / 1000) / 960 * 960) as u32;
            if writer.silence(samples).is_err() {
                return;
            }
            sent_until = sent_until.max(now.checked_sub(SILENCE_AFTER).unwrap_or(now))
                + Duration::from_micros(u64::from(samples) * 1000 / 48);
        }
        if writer.flush().is_err() || tx.try_send(take(&mut writer)).is_err() {
            return;
        }
        fanout
            .frames_delivered
            .fetch_add(delivered, Ordering::Relaxed);
    }
}

/// The pages written so far.
fn take(writer: &mut ogg::Writer<Vec<u8>>) -> Bytes {
    Bytes::from(std::mem::take(writer.get_mut()))
}
