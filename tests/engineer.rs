//! What the sound engineer and the delegates' phones get from the relay besides audio: the
//! event log, capture overruns, metrics that follow what happened, the join address and its QR
//! code, and HTTPS/WSS.

mod support;

use boothcast::protocol::{LogEntry, LogKind, ServerMessage};
use serde_json::json;
use std::net::SocketAddr;
use support::*;

async fn engineer(url: &str) -> Client {
    let mut c = Client::connect(
        url,
        json!({"type": "hello", "role": "engineer", "secret": "engineer-secret"}),
    )
    .await;
    c.welcome().await;
    c
}

/// Waits for a log entry of `kind` whose text contains `text`.
async fn log_entry(c: &mut Client, kind: LogKind, text: &str) -> LogEntry {
    c.wait_text(&format!("log entry {kind:?} {text:?}"), |m| match m {
        ServerMessage::Log { entries } => entries
            .iter()
            .find(|e| e.kind == kind && e.text.contains(text))
            .cloned(),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn the_event_log_tells_who_went_live_handed_over_chose_a_relay_and_was_refused() {
    let relay = TestRelay::start().await;
    let mut eng = engineer(&relay.url).await;
    let mut first = Client::console(&relay.url, "en", "1").await;
    let mut partner = Client::console(&relay.url, "en", "2").await;
    log_entry(&mut eng, LogKind::Connect, "en/1 connected").await;
    log_entry(&mut eng, LogKind::Connect, "en/2 connected").await;

    first.text(json!({"type": "live"}));
    first.console_state(|s| s.live.is_some()).await;
    let live = log_entry(&mut eng, LogKind::Live, "en/1 live on plenary/en").await;
    first.text(json!({"type": "handover"}));
    log_entry(&mut eng, LogKind::Handover, "en/1 offers the microphone").await;
    partner
        .wait_text("handover offer", |m| {
            matches!(m, ServerMessage::HandoverOffered { .. }).then_some(())
        })
        .await;
    partner.text(json!({"type": "accept"}));
    partner.console_state(|s| s.live.is_some()).await;
    let taken = log_entry(&mut eng, LogKind::Live, "en/2 took the microphone").await;
    assert!(taken.t >= live.t, "entries in time order");

    let ru = Client::console(&relay.url, "ru", "1").await;
    ru.text(json!({"type": "input", "channel": "en"}));
    log_entry(&mut eng, LogKind::Input, "ru/1 hears plenary/en (relay)").await;
    // Asking for what is already so changes nothing, and the log says nothing.
    ru.text(json!({"type": "input", "channel": "en"}));
    // A refusal by the rules: ru/1 may not go live on English.
    ru.text(json!({"type": "live", "channel": "en"}));
    log_entry(&mut eng, LogKind::Refused, "ru/1:").await;
    let said = eng
        .seen
        .iter()
        .filter_map(|m| match m {
            ServerMessage::Log { entries } => Some(entries),
            _ => None,
        })
        .flatten()
        .filter(|e| e.text.contains("ru/1 hears plenary/en"))
        .count();
    // The first entry was taken above; no second one came before the refusal.
    assert_eq!(said, 0, "the input asked twice is logged once");
    // A wrong secret: logged with the reason, never with the secret.
    let mut intruder = Client::connect(
        &relay.url,
        json!({"type": "hello", "role": "interpreter", "booth": "fr", "secret": "guess-1234"}),
    )
    .await;
    intruder.error().await;
    let refused = log_entry(&mut eng, LogKind::Refused, "wrong or missing secret").await;
    assert!(refused.text.contains("booth fr"), "{}", refused.text);
    assert!(!refused.text.contains("guess-1234"));
    partner.close();
    log_entry(&mut eng, LogKind::Disconnect, "en/2 disconnected").await;

    // An engineer who connects later gets the history.
    let mut late = engineer(&relay.url).await;
    let history = late
        .wait_text("log history", |m| match m {
            ServerMessage::Log { entries } if entries.len() > 1 => Some(entries.clone()),
            _ => None,
        })
        .await;
    let texts: Vec<&str> = history.iter().map(|e| e.text.as_str()).collect();
    for want in [
        "en/1 connected",
        "en/1 live on plenary/en",
        "en/2 took the microphone on plenary/en (handover)",
        "ru/1 hears plenary/en (relay)",
        "en/2 disconnected",
    ] {
        assert!(
            texts.iter().any(|t| t.contains(want)),
            "{want} in {texts:#?}"
        );
    }
    assert!(history.windows(2).all(|w| w[0].t <= w[1].t));
    relay.stop().await;
}

#[tokio::test]
async fn the_log_keeps_a_bounded_history() {
    let relay = TestRelay::start().await;
    // More entries than the log keeps, from six consoles (each within the control-message
    // burst, so none is paced): each switches between English and the floor, ending on it.
    let consoles = [
        ("ru", "1"),
        ("ru", "2"),
        ("ru", "3"),
        ("ru", "4"),
        ("fr", "1"),
        ("fr", "2"),
    ];
    let per = 38;
    assert!(per * consoles.len() >= boothcast::relay::LOG_KEEP + 20);
    assert!(per as f64 + 1.0 <= boothcast::server::CONTROL_BURST);
    let mut open = Vec::new();
    for (booth, console) in consoles {
        let mut c = Client::console(&relay.url, booth, console).await;
        for i in 0..per {
            let ch = if i % 2 == 0 { "en" } else { "floor" };
            c.text(json!({"type": "input", "channel": ch}));
        }
        c.text(json!({"type": "ping", "t": 1}));
        c.wait_text("pong", |m| {
            matches!(m, ServerMessage::Pong { t: 1 }).then_some(())
        })
        .await;
        open.push(c);
    }
    let mut eng = engineer(&relay.url).await;
    let history = eng
        .wait_text("log history", |m| match m {
            ServerMessage::Log { entries } if entries.len() > 1 => Some(entries.clone()),
            _ => None,
        })
        .await;
    assert_eq!(history.len(), boothcast::relay::LOG_KEEP);
    // The newest are kept: the last command chose the floor.
    assert_eq!(history.last().unwrap().text, "fr/2 hears the floor");
    relay.stop().await;
}

#[tokio::test]
async fn capture_overruns_reach_the_engineer_and_the_metrics() {
    let relay = TestRelay::start().await;
    let booth = Client::console(&relay.url, "en", "1").await;
    booth.pump(b'E', 80);
    booth.text(json!({"type": "stats", "overruns": 7}));
    let mut eng = engineer(&relay.url).await;
    eng.wait_text("health with overruns", |m| match m {
        ServerMessage::Health { senders } => senders
            .iter()
            .find(|s| s.who == "en/1" && s.overruns == 7)
            .map(|_| ()),
        _ => None,
    })
    .await;
    let m = relay.metrics().await;
    assert_eq!(
        metric(&m, "boothcast_sender_overruns_total{sender=\"en/1\"}"),
        7
    );
    // Listeners have no capture to report on.
    let mut listener = Client::listener(&relay.url, "en").await;
    listener.text(json!({"type": "stats", "overruns": 1}));
    assert_eq!(
        listener.error().await.1,
        "stats are for booth consoles and the floor"
    );
    relay.stop().await;
}

#[tokio::test]
async fn metrics_follow_what_the_booths_and_listeners_did() {
    let relay = TestRelay::start().await;
    let mut en: Vec<Client> = Vec::new();
    for _ in 0..3 {
        en.push(Client::listener(&relay.url, "en").await);
    }
    let _ru = Client::listener(&relay.url, "ru").await;
    let mut booth = Client::console(&relay.url, "en", "1").await;
    booth.pump(b'E', 80);
    booth.text(json!({"type": "live"}));
    booth.console_state(|s| s.live.is_some()).await;
    for l in &mut en {
        // 25 of the interpreter's frames reached every English listener.
        let mut n = 0;
        l.frames_until(|_, b| {
            if marker(b) == b'E' {
                n += 1;
            }
            n == 25
        })
        .await;
    }
    // The relay's pings have come back from the booth (once a second): the engineer sees it.
    let mut eng = engineer(&relay.url).await;
    eng.wait_text("en/1's round trip", |m| match m {
        ServerMessage::Health { senders } => senders
            .iter()
            .any(|s| s.who == "en/1" && s.rtt_ms.is_some())
            .then_some(()),
        _ => None,
    })
    .await;
    let m = relay.metrics().await;
    assert!(
        m.contains("boothcast_sender_rtt_seconds{sender=\"en/1\"}"),
        "{m}"
    );
    assert_eq!(metric(&m, "boothcast_listeners{channel=\"plenary/en\"}"), 3);
    assert_eq!(metric(&m, "boothcast_listeners{channel=\"plenary/ru\"}"), 1);
    assert_eq!(metric(&m, "boothcast_listeners{channel=\"plenary/fr\"}"), 0);
    assert_eq!(
        metric(&m, "boothcast_channel_live{channel=\"plenary/en\"}"),
        1
    );
    assert_eq!(
        metric(&m, "boothcast_channel_live{channel=\"plenary/ru\"}"),
        0
    );
    let frames_in = metric(&m, "boothcast_frames_in_total{channel=\"plenary/en\"}");
    let delivered = metric(
        &m,
        "boothcast_frames_delivered_total{channel=\"plenary/en\"}",
    );
    assert!(frames_in >= 25, "{frames_in}");
    assert!(delivered >= 75, "three listeners had 25 each: {delivered}");
    booth.text(json!({"type": "mute"}));
    // Once the channel list says en is off air, so does the gauge.
    eng.wait_text("en off air", |m| match m {
        ServerMessage::Channels { channels } => channels
            .iter()
            .any(|c| c.id == "plenary/en" && c.live.is_none())
            .then_some(()),
        _ => None,
    })
    .await;
    let m = relay.metrics().await;
    assert_eq!(
        metric(&m, "boothcast_channel_live{channel=\"plenary/en\"}"),
        0
    );
    relay.stop().await;
}

#[tokio::test]
async fn delegates_get_the_join_address_its_qr_code_and_the_events_listener_delay() {
    let event = EVENT.replace(
        "name = \"Test Forum\"",
        "name = \"Test Forum\"\nlistener_delay_ms = 120",
    );
    let relay = TestRelay::start_with(&event, &|_| None).await;
    let join: serde_json::Value =
        serde_json::from_str(&http_get(relay.addr, "/join").await).unwrap();
    assert_eq!(join["url"], format!("http://{}/", relay.addr));
    let svg = http_get(relay.addr, "/qr.svg").await;
    assert!(svg.contains("<svg") && svg.contains("</svg>"), "{svg}");
    let mut listener = Client::connect(
        &relay.url,
        json!({"type": "hello", "role": "listener", "channel": "en"}),
    )
    .await;
    let delay = listener
        .wait_text("welcome", |m| match m {
            ServerMessage::Welcome {
                listener_delay_ms, ..
            } => Some(*listener_delay_ms),
            _ => None,
        })
        .await;
    assert_eq!(delay, Some(120));
    relay.stop().await;
}

async fn tls_connect(
    addr: SocketAddr,
    cert: &std::path::Path,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tls_client(tcp, cert).await
}

#[tokio::test]
async fn serves_https_and_wss_with_its_certificate() {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempdir();
    let (cert, key) = self_signed(&dir);
    let options = boothcast::server::Options {
        tls: Some(boothcast::tls::load(&cert, &key).expect("certificate loads")),
        ..Default::default()
    };
    let relay = TestRelay::start_opts(EVENT, &|_| None, options).await;
    let join: serde_json::Value = {
        let mut s = tls_connect(relay.addr, &cert).await;
        s.write_all(b"GET /join HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        tokio::time::timeout(WAIT, s.read_to_string(&mut out))
            .await
            .expect("response in time")
            .ok();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        serde_json::from_str(out.split_once("\r\n\r\n").unwrap().1).unwrap()
    };
    assert_eq!(join["url"], format!("https://{}/", relay.addr));

    // A delegate over WSS is welcomed.
    let tls = tls_connect(relay.addr, &cert).await;
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("wss://localhost:{}/ws", relay.addr.port()), tls)
            .await
            .expect("WebSocket over TLS");
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        json!({"type": "hello", "role": "listener", "channel": "en"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let first = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("welcome in time")
        .unwrap()
        .unwrap();
    let welcome = ServerMessage::parse(first.to_text().unwrap()).unwrap();
    assert!(
        matches!(welcome, ServerMessage::Welcome { .. }),
        "{welcome:?}"
    );

    // The floor and a listener of boothcast's own over wss://, trusting the relay's
    // self-signed certificate: the listener hears the floor.
    let tone = dir.join("tone.wav");
    let status = std::process::Command::new("sox")
        .args(["-n", "-r", "48000", "-c", "1", "-b", "16"])
        .arg(&tone)
        .args(["synth", "3", "sine", "440", "vol", "0.5"])
        .status()
        .expect("sox runs");
    assert!(status.success());
    let server = format!("wss://localhost:{}", relay.addr.port());
    let bin = env!("CARGO_BIN_EXE_boothcast");
    let mut floor = tokio::process::Command::new(bin)
        .args([
            "floor",
            "--server",
            &server,
            "--secret",
            "floor-secret",
            "--loop",
        ])
        .arg("--input-file")
        .arg(&tone)
        .env("BOOTHCAST_CA_CERT", &cert)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let heard = dir.join("heard.wav");
    let listen = tokio::process::Command::new(bin)
        .args([
            "listen",
            "--server",
            &server,
            "--lang",
            "en",
            "--seconds",
            "1.5",
        ])
        .arg("--output-file")
        .arg(&heard)
        .env("BOOTHCAST_CA_CERT", &cert)
        .output();
    let listen = tokio::time::timeout(std::time::Duration::from_secs(20), listen)
        .await
        .expect("listen ends")
        .unwrap();
    let _ = floor.kill().await;
    assert!(
        listen.status.success(),
        "{}",
        String::from_utf8_lossy(&listen.stderr)
    );
    let summary = String::from_utf8_lossy(&listen.stdout);
    let frames = summary
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["summary"]["frames"].as_u64())
        .unwrap_or_else(|| panic!("no summary in {summary}"));
    assert!(frames >= 25, "{frames} frames heard over wss: {summary}");
    // Without the certificate trusted, the client says why it cannot connect.
    let untrusted = tokio::process::Command::new(bin)
        .args([
            "listen",
            "--server",
            &server,
            "--lang",
            "en",
            "--seconds",
            "5",
        ])
        .arg("--output-file")
        .arg(&heard)
        .env_remove("BOOTHCAST_CA_CERT")
        .output();
    let untrusted = tokio::time::timeout(std::time::Duration::from_secs(20), untrusted)
        .await
        .expect("listen ends")
        .unwrap();
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert!(
        !untrusted.status.success(),
        "{stderr}\n{}",
        String::from_utf8_lossy(&untrusted.stdout)
    );
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");

    // Plain HTTP on the TLS port gets nothing served.
    let plain = tokio::time::timeout(WAIT, async {
        let mut s = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        out
    })
    .await
    .expect("the relay closes a plain connection");
    assert!(!String::from_utf8_lossy(&plain).contains("ok"));
    relay.stop().await;
}

#[test]
fn a_broken_certificate_file_is_named_in_the_error() {
    let dir = tempdir();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, "not a certificate\n").unwrap();
    std::fs::write(&key, "not a key\n").unwrap();
    let e = boothcast::tls::load(&cert, &key).unwrap_err().to_string();
    assert!(
        e.contains("cert.pem") && e.contains("no certificate"),
        "{e}"
    );
    let (good_cert, _) = self_signed(&tempdir());
    let e = boothcast::tls::load(&good_cert, &key)
        .unwrap_err()
        .to_string();
    assert!(e.contains("key.pem") && e.contains("private key"), "{e}");
}

/// A fresh directory under the target directory's tmp, removed at the start of the next run.
fn tempdir() -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "engineer-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
