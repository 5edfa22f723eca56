//! Show-day hardening against a real relay on loopback: floods of idle and slow connections,
//! listeners that fill the relay, one address taking more than its share, guessed secrets,
//! files that are not the page. Clients come from addresses of their own in 127.0.0.0/8, so
//! the relay sees them as different hosts.

mod proc;
mod support;

use boothcast::admission::{Limits, Network};
use boothcast::relay::unix_micros;
use boothcast::server;
use proc::Proc;
use serde_json::json;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_boothcast");
const FLOOR: u8 = 1;
const BOOTH: u8 = 2;

fn from(a: u8, b: u8, c: u8) -> Option<IpAddr> {
    Some(IpAddr::from([127, a, b, c]))
}

/// The status code of `GET path` over a fresh connection from 127.0.0.1.
async fn status(addr: std::net::SocketAddr, path: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("answered in time")
        .unwrap();
    let head = String::from_utf8_lossy(&buf);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {head:?}"))
}

/// Waits until the peer closes `s`; returns how long that took. Bytes it sends are read and
/// dropped.
async fn closed_within(s: &mut tokio::net::TcpStream, limit: Duration) -> Duration {
    let t0 = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t0.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return t0.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("still open after {limit:?}"),
        }
    }
}

#[tokio::test]
async fn only_the_pages_own_files_are_served() {
    let relay = TestRelay::start().await;
    for path in [
        "/",
        "/index.html",
        "/app.js",
        "/player.js",
        "/style.css",
        "/console",
        "/console.js",
        "/node_modules/opus-decoder/dist/opus-decoder.min.js",
    ] {
        assert_eq!(status(relay.addr, path).await, 200, "{path}");
    }
    for path in [
        "/package.json",
        "/package-lock.json",
        "/node_modules/.package-lock.json",
        "/node_modules/opus-decoder/package.json",
        "/node_modules/playwright-core/package.json",
        "/node_modules/opus-decoder/dist/opus-decoder.js",
        "/.gitignore",
        "/../Cargo.toml",
        "/%2e%2e/Cargo.toml",
        "/no-such-file.js",
    ] {
        assert_eq!(status(relay.addr, path).await, 404, "{path}");
    }
    relay.stop().await;
}

#[tokio::test]
async fn silent_and_slow_requests_are_closed_by_their_deadline() {
    let relay = TestRelay::start().await;
    let limit = boothcast::accept::REQUEST_DEADLINE + Duration::from_secs(2);
    // Sends nothing at all.
    let silent = async {
        let mut s = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
        closed_within(&mut s, limit).await
    };
    // A request line, then one header byte a second (slowloris).
    let slow = async {
        let s = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        let t0 = Instant::now();
        wr.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let trickle = async move {
            for b in b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter().cycle() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if wr.write_all(&[*b]).await.is_err() {
                    break;
                }
            }
            std::future::pending::<()>().await
        };
        let mut buf = [0u8; 64];
        let n = tokio::select! {
            r = rd.read(&mut buf) => r.unwrap_or(0),
            _ = trickle => unreachable!(),
            _ = tokio::time::sleep(limit) => panic!("a slow request still open after {limit:?}"),
        };
        assert_eq!(n, 0, "closed without an answer");
        t0.elapsed()
    };
    // A WebSocket that never says hello.
    let hello_late = async {
        let tcp = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(&relay.url, tcp)
            .await
            .unwrap();
        let t0 = Instant::now();
        use futures_util::StreamExt;
        let mut text = String::new();
        while let Some(Ok(m)) = tokio::time::timeout(limit, ws.next()).await.unwrap() {
            if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
                text = t.to_string();
            }
        }
        assert!(text.contains("not_hello"), "{text}");
        t0.elapsed()
    };
    let (silent, slow, hello) = tokio::join!(silent, slow, hello_late);
    println!(
        "closed after: silent {silent:?}, slow headers {slow:?}, no hello {hello:?} (deadlines {:?}, {:?})",
        boothcast::accept::REQUEST_DEADLINE,
        server::HELLO_TIMEOUT
    );
    assert!(silent >= boothcast::accept::REQUEST_DEADLINE - Duration::from_millis(100));
    let m = relay.metrics().await;
    assert!(
        metric(
            &m,
            "boothcast_refused_connections_total{reason=\"request_timeout\"}"
        ) >= 2
    );
    assert_eq!(
        metric(
            &m,
            "boothcast_refused_connections_total{reason=\"hello_timeout\"}"
        ),
        1
    );
    relay.stop().await;
}

#[tokio::test]
async fn wrong_secrets_in_a_loop_must_wait_and_the_right_one_from_elsewhere_works_at_once() {
    let relay = TestRelay::start().await;
    let mut engineer = Client::connect(
        &relay.url,
        json!({"type": "hello", "role": "engineer", "secret": "engineer-secret"}),
    )
    .await;
    engineer.welcome().await;
    let guesser = from(0, 4, 1);
    let mut codes = Vec::new();
    for i in 0..12 {
        let hello = json!({"type": "hello", "role": "interpreter", "booth": "en", "secret": format!("{i:06}")});
        let mut c = Client::connect_from(guesser, &relay.url, hello).await;
        let (code, message, fatal) = c.error().await;
        assert!(fatal && !message.contains(&format!("{i:06}")), "{message}");
        let close = c.closed().await.map(|c| c.0);
        codes.push((code, close));
    }
    let free = boothcast::attempts::FREE_TRIES as usize + 1;
    for (i, (code, close)) in codes.iter().enumerate() {
        if i < free {
            assert_eq!(
                (code.as_str(), *close),
                ("unauthorized", Some(1008)),
                "try {i}"
            );
        } else {
            assert_eq!(
                (code.as_str(), *close),
                ("too_many_attempts", Some(4029)),
                "try {i}"
            );
        }
    }
    // The right secret from the guessing address waits too: it is not even compared.
    let mut c = Client::connect_from(
        guesser,
        &relay.url,
        json!({"type": "hello", "role": "interpreter", "booth": "en", "secret": "secret-en"}),
    )
    .await;
    assert_eq!(c.error().await.0, "too_many_attempts");
    // The booth from its own address gets in at once and goes live.
    let t0 = Instant::now();
    let mut booth = Client::connect_from(
        from(0, 4, 2),
        &relay.url,
        json!({"type": "hello", "role": "interpreter", "booth": "en", "secret": "secret-en"}),
    )
    .await;
    booth.welcome().await;
    booth.text(json!({"type": "live"}));
    booth.console_state(|s| s.live.is_some()).await;
    println!(
        "the right secret from another address: live after {:?}",
        t0.elapsed()
    );
    // The engineer's log says it once for all those refusals.
    let mut waits = 0;
    let mut seen = 0;
    while seen < 2 {
        let entries = engineer
            .wait_text("log", |m| match m {
                boothcast::protocol::ServerMessage::Log { entries } => Some(entries.clone()),
                _ => None,
            })
            .await;
        for e in entries {
            if e.text.starts_with("127.0.4.1: too many wrong secrets") {
                waits += 1;
            }
            if e.text.starts_with("127.0.4.1:") {
                seen += 1;
            }
        }
    }
    assert_eq!(waits, 1);
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "boothcast_refused_auth_total"), free as u64);
    assert_eq!(
        metric(&m, "boothcast_refused_attempts_total"),
        (12 - free + 1) as u64
    );
    assert_eq!(metric(&m, "boothcast_secret_waiting_addresses"), 1);
    relay.stop().await;
}

fn small_relay_options(max_open: usize, reserve: usize, proxies: &[&str]) -> server::Options {
    let mut limits = Limits::for_event(100_000, 0);
    limits.max_open = max_open;
    limits.reserve = reserve;
    limits.trusted_proxies = proxies
        .iter()
        .map(|p| p.parse::<Network>().unwrap())
        .collect();
    server::Options {
        limits: Some(limits),
        ..Default::default()
    }
}

#[tokio::test]
async fn listeners_that_fill_the_relay_never_lock_out_a_booth_the_floor_or_the_engineer() {
    let relay = TestRelay::start_opts(EVENT, &|_| None, small_relay_options(60, 8, &[])).await;
    // 52 listeners from 13 addresses: the shared room (52) is full of delegates.
    let mut listeners = Vec::new();
    for i in 0..52u8 {
        listeners.push(
            Client::connect_from(
                from(0, 5, i / 4 + 1),
                &relay.url,
                json!({"type": "hello", "role": "listener", "channel": "en"}),
            )
            .await,
        );
    }
    for l in &mut listeners {
        l.welcome().await;
    }
    // One more delegate: refused, with the reason and a stable code.
    let mut late = Client::connect_from(
        from(0, 5, 99),
        &relay.url,
        json!({"type": "hello", "role": "listener", "channel": "en"}),
    )
    .await;
    let (code, message, _) = late.error().await;
    assert_eq!(code, "server_full", "{message}");
    assert_eq!(late.closed().await.map(|c| c.0), Some(1013));
    // A page load on a connection in the reserve: 503.
    assert_eq!(status(relay.addr, "/").await, 503);
    // The senders and the engineer still get in.
    let floor = Client::floor(&relay.url).await;
    floor.pump(FLOOR, 80);
    let mut booth = Client::console(&relay.url, "en", "1").await;
    booth.pump(BOOTH, 80);
    booth.text(json!({"type": "live"}));
    booth.console_state(|s| s.live.is_some()).await;
    let mut engineer = Client::connect(
        &relay.url,
        json!({"type": "hello", "role": "engineer", "secret": "engineer-secret"}),
    )
    .await;
    engineer.welcome().await;
    // And the delegates hear the interpreter.
    listeners[0].frames_until(|_, b| marker(b) == BOOTH).await;
    // /metrics too is for a shared place: one delegate leaves to make one.
    drop(listeners.pop());
    let m = loop {
        let m = relay.metrics().await;
        if m.contains("boothcast_connections_limit") {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(metric(&m, "boothcast_connections_limit"), 60);
    // The late delegate and the page load, at least (a /metrics asked for before the leaving
    // delegate's place was free counts too).
    assert!(
        metric(
            &m,
            "boothcast_refused_connections_total{reason=\"listener_full\"}"
        ) >= 2
    );
    relay.stop().await;
}

#[tokio::test]
async fn one_address_gets_its_share_of_listeners_and_only_a_trusted_proxy_speaks_for_others() {
    let relay = TestRelay::start_opts(
        EVENT,
        &|_| None,
        small_relay_options(1000, 64, &["127.0.7.1"]),
    )
    .await;
    let per = boothcast::admission::LISTENERS_PER_ADDRESS;
    let mut kept = Vec::new();
    let mut refused = 0;
    for _ in 0..per + 10 {
        let mut c = Client::connect_from(
            from(0, 6, 1),
            &relay.url,
            json!({"type": "hello", "role": "listener", "channel": "floor"}),
        )
        .await;
        match c
            .wait_text("welcome or error", |m| match m {
                boothcast::protocol::ServerMessage::Welcome { .. } => Some(None),
                boothcast::protocol::ServerMessage::Error { code, .. } => Some(Some(*code)),
                _ => None,
            })
            .await
        {
            None => kept.push(c),
            Some(code) => {
                assert_eq!(code, boothcast::protocol::ErrorCode::TooManyConnections);
                assert_eq!(c.closed().await.map(|c| c.0), Some(4008));
                refused += 1;
            }
        }
    }
    assert_eq!((kept.len(), refused), (per, 10));
    // Another address is welcome.
    Client::connect_from(
        from(0, 6, 2),
        &relay.url,
        json!({"type": "hello", "role": "listener", "channel": "floor"}),
    )
    .await
    .welcome()
    .await;
    // Through the trusted proxy, each client counts under its own address...
    let hello = json!({"type": "hello", "role": "listener", "channel": "floor"});
    let mut via = Vec::new();
    for i in 0..per + 4 {
        let forwarded = format!("203.0.113.{}", i % 2 + 1);
        via.push(
            connect_with_header(
                from(0, 7, 1),
                &relay.url,
                "x-forwarded-for",
                &forwarded,
                &hello,
            )
            .await,
        );
    }
    for c in &mut via {
        c.welcome().await;
    }
    // ...but from anyone else the header is ignored.
    let mut spoofed = 0;
    for i in 0..per + 4 {
        let forwarded = format!("198.51.100.{}", i + 1);
        let mut c = connect_with_header(
            from(0, 6, 1),
            &relay.url,
            "x-forwarded-for",
            &forwarded,
            &hello,
        )
        .await;
        if c.error().await.0 == "too_many_connections" {
            spoofed += 1;
        }
    }
    assert_eq!(spoofed, per + 4);
    relay.stop().await;
}

/// A WebSocket client from `source` whose handshake carries `name: value`.
async fn connect_with_header(
    source: Option<IpAddr>,
    url: &str,
    name: &'static str,
    value: &str,
    hello: &serde_json::Value,
) -> Client {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(name, value.parse().unwrap());
    let tcp = tcp_from(source.unwrap(), url).await;
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(tcp)),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    Client::from_ws(ws, hello.clone())
}

/// Joins `channel` as the delegate's page does: a handshake refused with 503, or a hello
/// answered `server_full` (the relay full of connections too young to close for room), is
/// tried again after 200 ms, doubling, spread at random by ±50 %. Returns the open WebSocket,
/// welcomed, and how many refusals came first.
async fn listener_as_the_page_does(
    url: &str,
    channel: &str,
) -> (
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    u32,
) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let mut backoff = Duration::from_millis(200);
    let mut refusals = 0;
    let t0 = Instant::now();
    loop {
        match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url)).await {
            Ok(Ok((mut ws, _))) => {
                let hello = json!({"type": "hello", "role": "listener", "channel": channel});
                ws.send(Message::Text(hello.to_string().into()))
                    .await
                    .unwrap();
                let first = tokio::time::timeout(WAIT, ws.next())
                    .await
                    .expect("an answer to hello in time");
                match first {
                    Some(Ok(Message::Text(t))) if t.contains("\"welcome\"") => {
                        return (ws, refusals);
                    }
                    Some(Ok(Message::Text(t))) => assert!(
                        t.contains("\"server_full\""),
                        "refused otherwise than as full: {t}"
                    ),
                    other => panic!("neither welcome nor a refusal: {other:?}"),
                }
                refusals += 1;
            }
            Ok(Err(e)) => {
                assert!(
                    e.to_string().contains("503"),
                    "refused otherwise than as full: {e}"
                );
                refusals += 1;
            }
            Err(_) => panic!("no answer to the handshake in {WAIT:?}"),
        }
        assert!(t0.elapsed() < WAIT, "still refused after {refusals} tries");
        let spread = 0.5 + (unix_micros() % 1000) as f64 / 1000.0;
        tokio::time::sleep(backoff.mul_f64(spread)).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// 19,990 connections that never send a byte, from 400 addresses, against the real binary
/// with the machine's open-file limit: a booth still connects and goes live, a new delegate
/// gets `welcome`, a delegate already listening loses no frame, and every idle connection is
/// closed by its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_locks_no_one_out() {
    let dir = std::env::temp_dir().join(format!("boothcast-flood-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("event.toml");
    std::fs::write(&config, proc::EVENT).unwrap();
    let (_relay, base) = tokio::task::block_in_place(|| {
        Proc::relay(
            Command::new(BIN)
                .args(["serve", "--listen", "127.0.0.1:0", "--config"])
                .arg(&config)
                .stderr(Stdio::null()),
            Duration::from_secs(10),
        )
    });
    let url = format!("{base}/ws");
    let addr: std::net::SocketAddr = base.trim_start_matches("ws://").parse().unwrap();
    let floor = Client::floor(&url).await;
    floor.pump(FLOOR, 80);
    let mut playing = Client::listener(&url, "en").await;
    let first = playing.frame().await.0.sequence;

    let count = 19_990;
    let mut flood = tokio::task::block_in_place(|| {
        Proc::spawn(
            Command::new("python3")
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/tools/idle_flood.py"
                ))
                .args([
                    &addr.ip().to_string(),
                    &addr.port().to_string(),
                    &count.to_string(),
                    "50",
                    "30",
                ]),
        )
    });
    let opened =
        tokio::task::block_in_place(|| flood.wait_for("\"opened\"", Duration::from_secs(60)));
    let opened: serde_json::Value = serde_json::from_str(&opened).unwrap();
    println!("flood: {opened}");
    assert!(
        opened["opened"].as_u64().unwrap() >= (count - 10) as u64,
        "{opened}"
    );

    // While they are held: a booth connects and goes live...
    let t0 = Instant::now();
    let mut booth = Client::console(&url, "en", "1").await;
    booth.pump(BOOTH, 80);
    booth.text(json!({"type": "live"}));
    booth.console_state(|s| s.live.is_some()).await;
    let booth_live = t0.elapsed();
    // ...a new delegate gets welcome...
    let t1 = Instant::now();
    let (_delegate, refusals) = listener_as_the_page_does(&url, "floor").await;
    let welcome = t1.elapsed();
    println!(
        "during the flood: booth live after {booth_live:?}, delegate welcomed after {welcome:?} \
         ({refusals} refusals first)"
    );
    assert!(
        booth_live < Duration::from_secs(2),
        "booth live after {booth_live:?}"
    );
    assert!(
        welcome < Duration::from_secs(2),
        "welcome after {welcome:?}"
    );

    let done = tokio::task::block_in_place(|| flood.wait_for("\"done\"", Duration::from_secs(40)));
    let done: serde_json::Value = serde_json::from_str(&done).unwrap();
    println!("flood: {done}");
    assert_eq!(done["still_open"], 0, "{done}");
    let longest = done["max_lifetime_s"].as_f64().unwrap();
    assert!(
        longest <= boothcast::accept::REQUEST_DEADLINE.as_secs_f64() + 1.5,
        "an idle connection lived {longest} s"
    );

    // The delegate who was listening all along lost no frame.
    let end = unix_micros();
    let mut frames = vec![playing.frame().await];
    frames.extend(playing.frames_until(|h, _| h.relay_us >= end).await);
    assert_eq!(frames[0].0.sequence, first + 1);
    assert_contiguous(&frames);
    println!(
        "the delegate listening throughout: {} frames, none lost",
        frames.len()
    );
    let metrics = http_get(addr, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "boothcast_frames_skipped_total{channel=\"plenary/en\"}"
        ),
        0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A booth still gets in while the relay is full of delegates and someone holds the places
/// kept for senders by reopening idle connections and asking for `/healthz` on them.
#[tokio::test]
async fn squatting_the_senders_reserve_does_not_keep_a_booth_out() {
    let relay = TestRelay::start_opts(EVENT, &|_| None, small_relay_options(60, 8, &[])).await;
    let mut listeners = Vec::new();
    for i in 0..52u8 {
        listeners.push(
            Client::connect_from(
                from(0, 8, i / 4 + 1),
                &relay.url,
                json!({"type": "hello", "role": "listener", "channel": "en"}),
            )
            .await,
        );
    }
    for l in &mut listeners {
        l.welcome().await;
    }
    // Four squatters per address from three addresses, each reopened as soon as it is closed;
    // half of them ask for /healthz on their connection.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut squatters = Vec::new();
    for k in 0..12u8 {
        let (stop, url) = (stop.clone(), relay.url.clone());
        squatters.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut s = tcp_from(IpAddr::from([127, 0, 9, k / 4 + 1]), &url).await;
                if k % 2 == 0 {
                    let _ = s
                        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                        .await;
                }
                let mut buf = [0u8; 512];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    let mut tries = 0;
    let booth = loop {
        tries += 1;
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no booth in after {tries} tries"
        );
        let tcp = tcp_from(IpAddr::from([127, 0, 0, 1]), &relay.url).await;
        let Ok((ws, _)) = tokio_tungstenite::client_async(
            &relay.url,
            tokio_tungstenite::MaybeTlsStream::Plain(tcp),
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut c = Client::from_ws(
            ws,
            json!({"type": "hello", "role": "interpreter", "booth": "en", "secret": "secret-en"}),
        );
        let answer = c
            .wait_text("welcome or error", |m| match m {
                boothcast::protocol::ServerMessage::Welcome { .. } => Some(true),
                boothcast::protocol::ServerMessage::Error { .. } => Some(false),
                _ => None,
            })
            .await;
        if answer {
            break c;
        }
    };
    println!(
        "booth in after {:?} and {tries} tries, the reserve squatted",
        t0.elapsed()
    );
    booth.text(json!({"type": "live"}));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in squatters {
        s.abort();
    }
    relay.stop().await;
}

/// A delegate sending valid `ping`s as fast as its connection takes them is read at
/// `CONTROL_RATE` a second after a burst of `CONTROL_BURST`: it keeps its connection and gets
/// every answer in turn, while a delegate on another channel loses no frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_is_read_at_a_persons_pace() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let relay = TestRelay::start().await;
    let floor = Client::floor(&relay.url).await;
    floor.pump(FLOOR, 80);
    let mut playing = Client::listener(&relay.url, "en").await;
    let first = playing.frame().await.0.sequence;

    let (ws, _) = tokio_tungstenite::connect_async(&relay.url).await.unwrap();
    let (mut wr, mut rd) = ws.split();
    let hello = json!({"type": "hello", "role": "listener", "channel": "fr"});
    wr.send(Message::Text(hello.to_string().into()))
        .await
        .unwrap();
    let sent = 2_000u64;
    let flood = tokio::spawn(async move {
        for t in 0..sent {
            let ping = json!({"type": "ping", "t": t}).to_string();
            if wr.feed(Message::Text(ping.into())).await.is_err() {
                break;
            }
        }
        let _ = wr.flush().await;
        wr
    });
    let (mut pongs, mut last_t) = (0u64, None);
    let t0 = Instant::now();
    let window = Duration::from_secs(2);
    while let Ok(Some(m)) = tokio::time::timeout_at((t0 + window).into(), rd.next()).await {
        match m.expect("the flooding connection stays open") {
            Message::Text(t) if t.contains("\"pong\"") => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                let t = v["t"].as_u64().unwrap();
                assert_eq!(
                    t,
                    last_t.map_or(0, |l: u64| l + 1),
                    "pongs in order, none skipped"
                );
                last_t = Some(t);
                pongs += 1;
            }
            Message::Close(c) => panic!("the flooding delegate was closed: {c:?}"),
            _ => {}
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let bound = server::CONTROL_BURST + server::CONTROL_RATE * elapsed + 2.0;
    println!("{sent} pings sent at once: {pongs} answered in {elapsed:.2} s (bound {bound:.0})");
    assert!(pongs as f64 >= server::CONTROL_BURST, "{pongs} answered");
    assert!(
        (pongs as f64) <= bound,
        "{pongs} answered in {elapsed:.2} s"
    );

    // The delegate on English lost no frame meanwhile.
    let end = unix_micros();
    let mut frames = vec![playing.frame().await];
    frames.extend(playing.frames_until(|h, _| h.relay_us >= end).await);
    assert_eq!(frames[0].0.sequence, first + 1);
    assert_contiguous(&frames);
    assert!(metric(&relay.metrics().await, "boothcast_paced_messages_total") >= 1);
    flood.abort();
    relay.stop().await;
}

/// Traffic below whole messages costs no one a frame: from one address, 16 delegates each
/// start a text message and never end it (empty continuation frames as fast as the socket
/// takes them), and 16 connections send WebSocket pings before `hello`. The address is read
/// at its byte budget (`admission::READ_RATE`), the bytes wait in its own sockets, and a
/// delegate on another address loses no frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_that_never_make_a_message_are_read_at_the_addresss_pace() {
    use boothcast::bench::ws::{connect_from, masked, opcode, upgrade};
    let relay = TestRelay::start().await;
    let floor = Client::floor(&relay.url).await;
    floor.pump(FLOOR, 80);
    let mut playing = Client::listener(&relay.url, "en").await;
    let first = playing.frame().await.0.sequence;

    // A text frame without FIN, then empty continuation frames without FIN, over and over.
    let mut open_message = vec![0x01, 0x81, 0, 0, 0, 0, b'{'];
    let empty_continuation = [0x00u8, 0x80, 0, 0, 0, 0];
    let mut burst = Vec::new();
    for _ in 0..2048 {
        burst.extend_from_slice(&empty_continuation);
    }
    let pings = masked(opcode::PING, b"x").repeat(2048);
    let from = std::net::Ipv4Addr::new(127, 0, 9, 1);
    let mut attackers = Vec::new();
    for i in 0..32 {
        let mut s = connect_from(from, relay.addr).await.unwrap();
        upgrade(&mut s, relay.addr).await.unwrap();
        let flood = if i % 2 == 0 {
            let hello = json!({"type": "hello", "role": "listener", "channel": "fr"});
            let mut start = masked(opcode::TEXT, hello.to_string().as_bytes());
            start.append(&mut open_message.clone());
            s.write_all(&start).await.unwrap();
            burst.clone()
        } else {
            pings.clone()
        };
        attackers.push(tokio::spawn(async move {
            let (_rd, mut wr) = s.into_split();
            let mut sent = 0usize;
            while tokio::time::timeout(Duration::from_secs(1), wr.write_all(&flood))
                .await
                .is_ok_and(|r| r.is_ok())
            {
                sent += flood.len();
            }
            sent
        }));
    }
    open_message.clear();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let end = unix_micros();
    let mut frames = vec![playing.frame().await];
    frames.extend(playing.frames_until(|h, _| h.relay_us >= end).await);
    assert_eq!(frames[0].0.sequence, first + 1);
    assert_contiguous(&frames);
    let m = relay.metrics().await;
    let paced = metric(&m, "boothcast_paced_reads_total");
    for a in &attackers {
        a.abort();
    }
    println!(
        "{} frames heard in order beside 32 flooding connections; {paced} reads paced",
        frames.len()
    );
    assert!(paced > 0, "the address was never paced");
    assert_eq!(
        metric(&m, "boothcast_frames_skipped_total{channel=\"plenary/en\"}"),
        0
    );
    relay.stop().await;
}
