//! The relay core against real sockets: channels, the rules of the trade, access control,
//! bad input and slow listeners.

mod support;

use boothcast::protocol::{Carrying, Source, HEADER_LEN};
use serde_json::json;
use support::*;

const FLOOR: u8 = b'F';

#[tokio::test]
async fn delegate_hears_the_floor_then_the_interpreter_then_the_floor_again() {
    let relay = TestRelay::start().await;
    let floor = Client::floor(&relay.url).await;
    floor.pump(FLOOR, 80);
    let mut listener = Client::listener(&relay.url, "en").await;

    // No interpreter live: en carries the floor.
    let (h, b) = listener.frame().await;
    assert_eq!((h.source, marker(&b), h.channel), (Source::Floor, FLOOR, 2));

    let mut booth = Client::console(&relay.url, "en", "1").await;
    booth.pump(b'E', 80);
    booth.text(json!({"type": "live"}));
    booth
        .console_state(|s| s.live.as_deref() == Some("plenary/en"))
        .await;
    let frames = listener.frames_until(|_, b| marker(b) == b'E').await;
    let (h, _) = frames.last().unwrap();
    assert_eq!(h.source, Source::Interpreter);
    assert_contiguous(&frames);
    let info = listener
        .channel_state("plenary/en", |c| c.carrying == Carrying::Interpreter)
        .await;
    assert_eq!(info.live.unwrap().booth, "en");

    // Off air: after the hold, the floor comes back, on the same sequence.
    booth.text(json!({"type": "mute"}));
    let frames = listener.frames_until(|_, b| marker(b) == FLOOR).await;
    assert!(frames[..frames.len() - 1]
        .iter()
        .all(|(_, b)| marker(b) == b'E'));
    assert_eq!(frames.last().unwrap().0.source, Source::Floor);
    listener
        .channel_state("plenary/en", |c| {
            c.carrying == Carrying::Floor && c.live.is_none()
        })
        .await;
    relay.stop().await;
}

#[tokio::test]
async fn a_booth_that_disconnects_leaves_the_floor() {
    let relay = TestRelay::start().await;
    let floor = Client::floor(&relay.url).await;
    floor.pump(FLOOR, 80);
    let mut listener = Client::listener(&relay.url, "ru").await;
    let booth = Client::console(&relay.url, "ru", "1").await;
    booth.pump(b'R', 80);
    booth.text(json!({"type": "live"}));
    listener.frames_until(|_, b| marker(b) == b'R').await;
    drop(booth); // the connection vanishes without a word
    let frames = listener.frames_until(|_, b| marker(b) == FLOOR).await;
    assert_contiguous(&frames);
    listener
        .channel_state("plenary/ru", |c| {
            c.carrying == Carrying::Floor && c.live.is_none()
        })
        .await;
    relay.stop().await;
}

#[tokio::test]
async fn a_channel_without_auto_floor_stays_silent() {
    let relay = TestRelay::start().await;
    let floor = Client::floor(&relay.url).await;
    floor.pump(FLOOR, 80);
    let mut fr = Client::listener(&relay.url, "fr").await;
    let info = fr.channel_state("plenary/fr", |_| true).await;
    assert_eq!(info.carrying, Carrying::Silence);
    let booth = Client::console(&relay.url, "fr", "1").await;
    booth.pump(b'R', 80);
    booth.text(json!({"type": "live"}));
    // The first frame fr hears is the interpreter's: no floor came before.
    let (h, b) = fr.frame().await;
    assert_eq!((h.source, marker(&b)), (Source::Interpreter, b'R'));
    relay.stop().await;
}

#[tokio::test]
async fn interlock_refuses_a_second_booth_with_the_reason() {
    let relay = TestRelay::start().await;
    let mut en = Client::console(&relay.url, "en", "1").await;
    en.text(json!({"type": "live"}));
    en.console_state(|s| s.live.is_some()).await;
    // The bi-active az booth also works into English.
    let mut az = Client::console(&relay.url, "az", "1").await;
    az.text(json!({"type": "live", "channel": "en"}));
    let (code, message, fatal) = az.error().await;
    assert_eq!(code, "channel_taken");
    assert_eq!(
        message,
        "plenary/en is live from booth en (console 1); it must go off air first"
    );
    assert!(!fatal);
    // The refused booth is still connected and may go live on its own language.
    az.text(json!({"type": "live", "channel": "az"}));
    az.console_state(|s| s.live.as_deref() == Some("plenary/az"))
        .await;
    // A booth may not go live on a language it does not work into.
    en.text(json!({"type": "live", "channel": "ru"}));
    let (code, message, _) = en.error().await;
    assert_eq!(
        (code.as_str(), message.as_str()),
        (
            "not_booth_language",
            "booth en does not work into plenary/ru"
        )
    );
    relay.stop().await;
}

#[tokio::test]
async fn a_bi_active_booth_is_live_in_one_language_at_a_time() {
    let relay = TestRelay::start().await;
    let mut az_listener = Client::listener(&relay.url, "az").await;
    let mut en_listener = Client::listener(&relay.url, "en").await;
    let booth = Client::console(&relay.url, "az", "1").await;
    booth.pump(b'A', 80);
    booth.text(json!({"type": "live"}));
    az_listener.frames_until(|_, b| marker(b) == b'A').await;
    booth.text(json!({"type": "live", "channel": "en"}));
    en_listener.frames_until(|_, b| marker(b) == b'A').await;
    let info = az_listener
        .channel_state("plenary/az", |c| c.live.is_none())
        .await;
    assert_ne!(info.carrying, Carrying::Interpreter);
    relay.stop().await;
}

#[tokio::test]
async fn handover_passes_the_channel_with_no_gap_and_no_overlap() {
    let relay = TestRelay::start().await;
    let mut listener = Client::listener(&relay.url, "en").await;
    let mut a = Client::console(&relay.url, "en", "1").await;
    let mut b = Client::console(&relay.url, "en", "2").await;
    a.pump(b'1', 80);
    b.pump(b'2', 80);
    a.text(json!({"type": "live"}));
    a.console_state(|s| s.live.is_some()).await;
    let mut frames = listener
        .frames_until(|_, f| marker(f) == b'1')
        .await
        .split_off(0);
    frames.retain(|(_, f)| marker(f) == b'1');
    for _ in 0..5 {
        frames.push(listener.frame().await);
    }
    // A partner going live directly is refused: the interlock inside the booth.
    b.text(json!({"type": "live"}));
    assert_eq!(b.error().await.0, "partner_live");

    a.text(json!({"type": "handover"}));
    let from = b
        .wait_text("handover offer", |m| match m {
            boothcast::protocol::ServerMessage::HandoverOffered { from } => Some(from.clone()),
            _ => None,
        })
        .await;
    assert_eq!(from, "1");
    b.text(json!({"type": "accept"}));
    frames.extend(listener.frames_until(|_, f| marker(f) == b'2').await);
    for _ in 0..10 {
        frames.push(listener.frame().await);
    }
    assert_contiguous(&frames);
    let first_2 = frames.iter().position(|(_, f)| marker(f) == b'2').unwrap();
    assert!(first_2 > 0);
    assert!(frames[..first_2].iter().all(|(_, f)| marker(f) == b'1'));
    assert!(
        frames[first_2..].iter().all(|(_, f)| marker(f) == b'2'),
        "no overlap after the handover"
    );
    assert!(
        frames.iter().all(|(h, _)| h.source == Source::Interpreter),
        "the floor never came in"
    );
    let info = listener
        .channel_state("plenary/en", |c| {
            c.live.as_ref().is_some_and(|l| l.console == "2")
        })
        .await;
    assert_eq!(info.carrying, Carrying::Interpreter);
    relay.stop().await;
}

#[tokio::test]
async fn cough_mutes_while_held_without_letting_the_floor_in() {
    let relay = TestRelay::start().await;
    let floor = Client::floor(&relay.url).await;
    floor.pump(FLOOR, 80);
    let mut listener = Client::listener(&relay.url, "en").await;
    let booth = Client::console(&relay.url, "en", "1").await;
    booth.pump(b'E', 80);
    booth.text(json!({"type": "live"}));
    listener.frames_until(|_, b| marker(b) == b'E').await;
    booth.text(json!({"type": "cough", "down": true}));
    let info = listener
        .channel_state("plenary/en", |c| c.live.as_ref().is_some_and(|l| l.cough))
        .await;
    assert_eq!(info.carrying, Carrying::Interpreter);
    // While the key is held (longer than the 300 ms hold), nothing reaches en: no floor.
    let en_frames = || {
        relay
            .relay
            .fanout(2)
            .frames_in
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = en_frames();
    // 30 floor frames (600 ms) pass, as a floor listener hears them.
    let mut floor_listener = Client::listener(&relay.url, "floor").await;
    for _ in 0..30 {
        floor_listener.frame().await;
    }
    let after = en_frames();
    assert!(
        after - before <= 1,
        "{} frames reached en during the cough",
        after - before
    );
    booth.text(json!({"type": "cough", "down": false}));
    let frames = listener.frames_until(|_, b| marker(b) == b'E').await;
    assert!(
        frames.iter().all(|(_, b)| marker(b) == b'E'),
        "the floor came in during the cough"
    );
    relay.stop().await;
}

#[tokio::test]
async fn relay_consoles_hear_the_channel_they_chose_and_the_list_shows_the_chain() {
    let relay = TestRelay::start().await;
    let floor = Client::floor(&relay.url).await;
    floor.pump(FLOOR, 80);
    let mut en = Client::console(&relay.url, "en", "1").await;
    en.pump(b'E', 80);
    en.text(json!({"type": "live"}));
    en.console_state(|s| s.live.is_some()).await;
    // The Arabic booth does not understand the speaker: it takes English as its relay.
    let mut ar = Client::console(&relay.url, "ar", "1").await;
    ar.pump(b'A', 80);
    let (h, b) = ar.frame().await;
    assert_eq!(
        (h.channel, marker(&b)),
        (0, FLOOR),
        "a console starts hearing the floor"
    );
    ar.text(json!({"type": "input", "channel": "en"}));
    ar.console_state(|s| s.input == "plenary/en").await;
    let frames = ar
        .frames_until(|h, b| h.channel == 2 && marker(b) == b'E')
        .await;
    assert!(!frames.is_empty());
    ar.text(json!({"type": "live"}));
    // Commands of different connections are taken in no set order: wait for this one.
    ar.console_state(|s| s.live.is_some()).await;
    // Russian works from Arabic: a relay of a relay.
    let ru = Client::console(&relay.url, "ru", "1").await;
    ru.text(json!({"type": "input", "channel": "plenary/ar"}));
    ru.text(json!({"type": "live"}));
    let mut listener = Client::listener(&relay.url, "ru").await;
    let info = listener
        .channel_state("plenary/ru", |c| c.carrying == Carrying::Relay)
        .await;
    assert_eq!(
        info.relay_chain,
        vec!["plenary/ar", "plenary/en", "plenary/floor"]
    );
    let info = listener.channel_state("plenary/ar", |_| true).await;
    assert_eq!(info.carrying, Carrying::Relay);
    assert_eq!(info.relay_chain, vec!["plenary/en", "plenary/floor"]);
    // A loop is refused: English may not take Russian as its relay while live.
    en.text(json!({"type": "input", "channel": "ru"}));
    let (code, message, _) = en.error().await;
    assert_eq!(code, "relay_loop");
    assert!(message.contains("plenary/ru"), "{message}");
    relay.stop().await;
}

#[tokio::test]
async fn a_reconnecting_console_comes_back_muted_and_replaces_the_old_connection() {
    let relay = TestRelay::start().await;
    let mut old = Client::console(&relay.url, "en", "1").await;
    old.text(json!({"type": "live"}));
    old.console_state(|s| s.live.is_some()).await;
    let mut new = Client::console(&relay.url, "en", "1").await;
    new.console_state(|s| s.live.is_none() && s.console == "1")
        .await;
    let (code, _, fatal) = old.error().await;
    assert_eq!((code.as_str(), fatal), ("replaced", true));
    assert_eq!(old.closed().await.map(|c| c.0), Some(4000));
    let mut listener = Client::listener(&relay.url, "en").await;
    listener
        .channel_state("plenary/en", |c| c.live.is_none())
        .await;
    relay.stop().await;
}

#[tokio::test]
async fn wrong_or_missing_secrets_are_refused_and_nobody_else_notices() {
    let relay = TestRelay::start().await;
    let floor = Client::floor(&relay.url).await;
    floor.pump(FLOOR, 80);
    let mut healthy = Client::listener(&relay.url, "floor").await;
    let first = healthy.frame().await.0.sequence;

    let cases = [
        (
            json!({"type": "hello", "role": "interpreter", "booth": "en", "secret": "guess-123"}),
            "wrong or missing secret for booth en",
        ),
        (
            json!({"type": "hello", "role": "interpreter", "booth": "en"}),
            "wrong or missing secret for booth en",
        ),
        // The secret of another booth does not open this one.
        (
            json!({"type": "hello", "role": "interpreter", "booth": "en", "secret": "secret-ru"}),
            "wrong or missing secret for booth en",
        ),
        (
            json!({"type": "hello", "role": "floor", "secret": "guess-123"}),
            "wrong or missing floor secret",
        ),
        (
            json!({"type": "hello", "role": "engineer", "secret": "floor-secret"}),
            "wrong or missing engineer secret",
        ),
    ];
    // Each from an address of its own: an address that keeps failing must wait (tested in
    // tests/hardening.rs).
    for (i, (hello, expected)) in cases.into_iter().enumerate() {
        let from = std::net::IpAddr::from([127, 0, 3, i as u8 + 1]);
        let mut c = Client::connect_from(Some(from), &relay.url, hello.clone()).await;
        let (code, message, fatal) = c.error().await;
        assert_eq!(
            (code.as_str(), message.as_str(), fatal),
            ("unauthorized", expected, true),
            "{hello}"
        );
        assert!(!message.contains("guess-123") && !message.contains("secret-ru"));
        assert_eq!(c.closed().await.map(|c| c.0), Some(1008));
    }
    let mut unknown = Client::connect(
        &relay.url,
        json!({"type": "hello", "role": "interpreter", "booth": "xx", "secret": "a"}),
    )
    .await;
    assert_eq!(unknown.error().await.0, "unknown_booth");

    // The healthy listener missed nothing meanwhile.
    let mut frames = vec![];
    for _ in 0..5 {
        frames.push(healthy.frame().await);
    }
    assert_contiguous(&frames);
    assert!(frames[0].0.sequence > first);
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "boothcast_refused_auth_total"), 5);
    relay.stop().await;
}

#[tokio::test]
async fn an_event_with_an_access_code_asks_delegates_for_it() {
    let env = |k: &str| (k == "BOOTHCAST_ACCESS_CODE").then(|| "2468".to_string());
    let relay = TestRelay::start_with(EVENT, &env).await;
    let mut none = Client::connect(
        &relay.url,
        json!({"type": "hello", "role": "listener", "channel": "en"}),
    )
    .await;
    assert_eq!(
        none.error().await,
        (
            "unauthorized".into(),
            "this event needs an access code".into(),
            true
        )
    );
    let mut wrong = Client::connect(
        &relay.url,
        json!({"type": "hello", "role": "listener", "secret": "1357"}),
    )
    .await;
    assert_eq!(wrong.error().await.1, "wrong access code");
    let mut right = Client::connect(
        &relay.url,
        json!({"type": "hello", "role": "listener", "secret": "2468", "channel": "en"}),
    )
    .await;
    right.welcome().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_malformed_frame_or_message_closes_only_its_own_connection() {
    let relay = TestRelay::start().await;
    let en = Client::console(&relay.url, "en", "1").await;
    en.pump(b'E', 80);
    en.text(json!({"type": "live"}));
    let mut listener = Client::listener(&relay.url, "en").await;
    listener.frames_until(|_, b| marker(b) == b'E').await;

    // A frame too short to hold a header.
    let mut bad = Client::console(&relay.url, "ru", "1").await;
    bad.binary(bytes::Bytes::from_static(&[1, 2, 3, 4, 5]));
    let (code, message, fatal) = bad.error().await;
    assert_eq!(code, "bad_frame");
    assert_eq!(
        message,
        "audio frame of 5 bytes is shorter than the 28-byte header plus one Opus byte"
    );
    assert!(fatal);
    assert_eq!(bad.closed().await.map(|c| c.0), Some(1007));

    // A header of an unknown version.
    let mut bad = Client::console(&relay.url, "ru", "1").await;
    let mut frame = sender_frame(Source::Interpreter, 1, 0, 40).to_vec();
    frame[0] = 7;
    bad.binary(frame.into());
    assert_eq!(
        bad.error().await.1,
        "audio frame version 7 is not supported (this relay speaks version 1)"
    );

    // A payload that is not Opus (a code-3 packet with no frame count byte).
    let mut bad = Client::console(&relay.url, "ru", "1").await;
    let mut frame = sender_frame(Source::Interpreter, 1, 0, 40).to_vec();
    frame.truncate(HEADER_LEN);
    frame.push(0x03);
    bad.binary(frame.into());
    let (code, message, _) = bad.error().await;
    assert_eq!(code, "bad_frame");
    assert!(message.contains("not an Opus packet"), "{message}");

    // A listener sending audio, and broken JSON.
    let mut l2 = Client::listener(&relay.url, "ar").await;
    l2.binary(sender_frame(Source::Interpreter, 1, 0, 40));
    assert_eq!(
        l2.error().await.1,
        "only booth consoles and the floor send audio"
    );
    let mut l3 = Client::listener(&relay.url, "ar").await;
    l3.raw_text("{\"type\": \"subscribe\", \"channel\": ");
    let (code, message, _) = l3.error().await;
    assert_eq!(code, "bad_message");
    assert!(
        message.starts_with("control message is not valid: EOF while parsing"),
        "{message}"
    );
    assert_eq!(l3.closed().await.map(|c| c.0), Some(1007));
    // A message over the size limit.
    let mut l4 = Client::listener(&relay.url, "ar").await;
    l4.raw_text(&format!(
        "{{\"type\":\"ping\",\"t\":1,\"pad\":\"{}\"}}",
        "x".repeat(10_000)
    ));
    let (code, message, _) = l4.error().await;
    assert_eq!(code, "bad_message");
    assert!(message.contains("too long"), "{message}");
    // A text message that is not UTF-8.
    use tokio_tungstenite::tungstenite::protocol::frame::{coding, Frame};
    let mut l5 = Client::listener(&relay.url, "ar").await;
    l5.raw(tokio_tungstenite::tungstenite::Message::Frame(
        Frame::message(
            bytes::Bytes::from_static(b"{\"type\":\"ping\",\"t\":\xff}"),
            coding::OpCode::Data(coding::Data::Text),
            true,
        ),
    ));
    assert_eq!(
        l5.error().await,
        (
            "bad_message".into(),
            "text message is not valid UTF-8".into(),
            true
        )
    );
    // An unknown channel is refused without closing.
    l2 = Client::listener(&relay.url, "ar").await;
    l2.text(json!({"type": "subscribe", "channel": "de"}));
    assert_eq!(
        l2.error().await,
        (
            "unknown_channel".into(),
            "there is no channel de".into(),
            false
        )
    );

    // Meanwhile the healthy listener of en missed nothing.
    let mut frames = vec![];
    for _ in 0..10 {
        frames.push(listener.frame().await);
    }
    assert_contiguous(&frames);
    assert!(frames.iter().all(|(_, b)| marker(b) == b'E'));
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "boothcast_refused_frames_total"), 3);
    relay.stop().await;
}

#[tokio::test]
async fn a_sender_flooding_frames_is_refused_and_listeners_carry_on() {
    let relay = TestRelay::start().await;
    let en = Client::console(&relay.url, "en", "1").await;
    en.pump(b'E', 80);
    en.text(json!({"type": "live"}));
    let mut listener = Client::listener(&relay.url, "en").await;
    listener.frames_until(|_, b| marker(b) == b'E').await;
    // A floor source sending a thousand frames at once, far faster than real time.
    let mut flood = Client::floor(&relay.url).await;
    for n in 0..1000 {
        flood.binary(sender_frame(Source::Floor, b'X', n, 80));
    }
    let (code, message, fatal) = flood.error().await;
    assert_eq!((code.as_str(), fatal), ("bad_frame", true));
    assert_eq!(
        message,
        "frames sent faster than real time (more than 400 a second)"
    );
    let mut frames = vec![];
    for _ in 0..10 {
        frames.push(listener.frame().await);
    }
    assert_contiguous(&frames);
    assert!(frames.iter().all(|(_, b)| marker(b) == b'E'));
    relay.stop().await;
}

#[tokio::test]
async fn a_listener_switches_channel_on_the_same_connection() {
    let relay = TestRelay::start().await;
    let en = Client::console(&relay.url, "en", "1").await;
    en.pump(b'E', 80);
    en.text(json!({"type": "live"}));
    let mut ru = Client::console(&relay.url, "ru", "1").await;
    ru.pump(b'R', 80);
    ru.text(json!({"type": "live"}));
    let mut listener = Client::listener(&relay.url, "en").await;
    listener.frames_until(|_, b| marker(b) == b'E').await;
    listener.text(json!({"type": "subscribe", "channel": "plenary/ru"}));
    let frames = listener.frames_until(|_, b| marker(b) == b'R').await;
    let (h, _) = frames.last().unwrap();
    assert_eq!(h.channel, 3);
    // After the switch, only Russian arrives.
    for _ in 0..5 {
        let (h, b) = listener.frame().await;
        assert_eq!((h.channel, marker(&b)), (3, b'R'));
    }
    // Listener counts reach the booth (audience indicator).
    let count = ru
        .wait_text("audience", |m| match m {
            boothcast::protocol::ServerMessage::Audience { listeners } => listeners
                .iter()
                .find(|(c, n)| c == "plenary/ru" && *n == 1)
                .map(|(_, n)| *n),
            _ => None,
        })
        .await;
    assert_eq!(count, 1);
    relay.stop().await;
}

#[tokio::test]
async fn the_engineer_can_force_mute_a_console() {
    let relay = TestRelay::start().await;
    let mut booth = Client::console(&relay.url, "en", "1").await;
    booth.text(json!({"type": "live"}));
    booth.console_state(|s| s.live.is_some()).await;
    let mut listener = Client::listener(&relay.url, "en").await;
    listener.text(json!({"type": "force_mute", "booth": "en", "console": "1"}));
    assert_eq!(
        listener.error().await.1,
        "force-mute is for the sound engineer"
    );
    let engineer = Client::connect(
        &relay.url,
        json!({"type": "hello", "role": "engineer", "secret": "engineer-secret"}),
    )
    .await;
    engineer.text(json!({"type": "force_mute", "booth": "en", "console": "1"}));
    let (_, message, fatal) = booth.error().await;
    assert_eq!(
        (message.as_str(), fatal),
        ("the sound engineer muted this console", false)
    );
    booth.console_state(|s| s.live.is_none()).await;
    relay.stop().await;
}

#[tokio::test]
async fn a_listener_that_never_reads_does_not_delay_a_healthy_one() {
    use futures_util::SinkExt;
    use tokio::net::TcpSocket;
    let options = boothcast::server::Options {
        write_timeout: std::time::Duration::from_secs(2),
        ..Default::default()
    };
    let relay = TestRelay::start_opts(EVENT, &|_| None, options).await;
    let floor = Client::floor(&relay.url).await;

    // A listener with a tiny receive window that never reads a byte after its hello.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(relay.addr).await.unwrap();
    let (mut stuck, _) = tokio_tungstenite::client_async(relay.url.as_str(), stream)
        .await
        .unwrap();
    stuck
        .send(tokio_tungstenite::tungstenite::Message::Text(
            json!({"type": "hello", "role": "listener", "channel": "floor"})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();

    let mut healthy = Client::listener(&relay.url, "floor").await;
    // Large frames (1000 bytes) fill the stuck listener's buffers within a second.
    floor.pump(FLOOR, 1000);
    let mut frames = vec![];
    let mut max_delay_ms: f64 = 0.0;
    // Until the relay gives up on the stuck listener (no write for 2 s), and a second more.
    let mut closed_at = None;
    let metrics = loop {
        let (h, b) = healthy.frame().await;
        max_delay_ms =
            max_delay_ms.max((boothcast::relay::unix_micros() - h.relay_us) as f64 / 1000.0);
        frames.push((h, b));
        if frames.len() % 10 == 0 {
            let m = relay.metrics().await;
            if closed_at.is_none() && metric(&m, "boothcast_slow_closed_total") == 1 {
                closed_at = Some(frames.len());
            }
            if closed_at.is_some_and(|at| frames.len() >= at + 50) {
                break m;
            }
        }
        assert!(frames.len() < 1000, "the stuck listener was never closed");
    };
    assert_contiguous(&frames);
    let skipped = metric(
        &metrics,
        "boothcast_frames_skipped_total{channel=\"plenary/floor\"}",
    );
    let delivered = metric(
        &metrics,
        "boothcast_frames_delivered_total{channel=\"plenary/floor\"}",
    );
    let sent = metric(
        &metrics,
        "boothcast_frames_in_total{channel=\"plenary/floor\"}",
    );
    let stuck_delivered = delivered.saturating_sub(frames.len() as u64);
    assert!(
        skipped > 0,
        "the stuck listener's frames were skipped, not queued"
    );
    assert!(
        stuck_delivered < 100,
        "the stuck listener was given only what its buffers hold"
    );
    println!(
        "frames sent {sent}; healthy listener received {} in order with no gap \
         (max relay-to-listener delay {max_delay_ms:.1} ms); stuck listener: {stuck_delivered} written \
         before it stalled, {skipped} skipped, closed after 2 s without a write",
        frames.len(),
    );
    drop(stuck);
    relay.stop().await;
}

/// The sequence number of the next audio frame on `ws`, and whether a pong came before it;
/// panics if the stream is not whole WebSocket messages.
async fn next_sequence<S>(ws: &mut S, pongs: &mut Vec<Vec<u8>>) -> u32
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("the connection open")
            .expect("a whole, valid WebSocket message");
        match m {
            Message::Binary(b) => {
                return boothcast::protocol::FrameHeader::parse(&b)
                    .expect("a valid frame")
                    .sequence
            }
            Message::Pong(p) => pongs.push(p.to_vec()),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_delegate_that_stalls_is_handed_back_and_its_stream_stays_whole() {
    let relay = TestRelay::start().await;
    let stream = small_window(relay.addr).await;
    let (ws, _) = tokio_tungstenite::client_async(relay.url.as_str(), stream)
        .await
        .unwrap();
    let floor = Client::floor(&relay.url).await;
    let healthy = Client::listener(&relay.url, "floor").await;
    stall_and_resume(&relay, ws, floor, healthy).await;
    relay.stop().await;
}

/// A relay over TLS with a self-signed certificate, and the certificate's path.
async fn tls_relay(name: &str) -> (TestRelay, std::path::PathBuf) {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("relay-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = self_signed(&dir);
    let options = boothcast::server::Options {
        tls: Some(boothcast::tls::load(&cert, &key).expect("certificate loads")),
        ..Default::default()
    };
    (TestRelay::start_opts(EVENT, &|_| None, options).await, cert)
}

/// A test client over WSS saying `hello`, welcomed.
async fn tls_peer(relay: &TestRelay, cert: &std::path::Path, hello: serde_json::Value) -> Client {
    let tcp = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    let tls = tokio_tungstenite::MaybeTlsStream::Rustls(tls_client(tcp, cert).await);
    let url = format!("wss://localhost:{}/ws", relay.addr.port());
    let (ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let mut c = Client::from_ws(ws, hello);
    c.welcome().await;
    c
}

#[tokio::test]
async fn a_delegate_over_tls_that_stalls_is_handed_back_and_its_stream_stays_whole() {
    let (relay, cert) = tls_relay("stall").await;
    let url = format!("wss://localhost:{}/ws", relay.addr.port());
    let tls = tls_client(small_window(relay.addr).await, &cert).await;
    let (ws, _) = tokio_tungstenite::client_async(&url, tls).await.unwrap();
    let floor = json!({"type": "hello", "role": "floor", "secret": "floor-secret"});
    let floor = tls_peer(&relay, &cert, floor).await;
    let healthy = json!({"type": "hello", "role": "listener", "channel": "floor"});
    let healthy = tls_peer(&relay, &cert, healthy).await;
    stall_and_resume(&relay, ws, floor, healthy).await;
    relay.stop().await;
}

#[tokio::test]
async fn tls_delegates_that_stall_as_their_channel_goes_quiet_get_the_last_frames_at_once() {
    let (relay, cert) = tls_relay("quiet").await;
    let index = floor_index(&relay);
    let url = format!("wss://localhost:{}/ws", relay.addr.port());
    let floor = json!({"type": "hello", "role": "floor", "secret": "floor-secret"});
    let floor = tls_peer(&relay, &cert, floor).await;
    floor.pump(FLOOR, 1000);
    // Ten delegates with small windows stop reading 150 ms apart, so that when the floor
    // stops each is somewhere else in filling its buffers; then all read again.
    let start = tokio::time::Instant::now() + std::time::Duration::from_millis(500);
    let quiet = start + std::time::Duration::from_millis(1600);
    let awake = quiet + std::time::Duration::from_millis(400);
    let mut delegates = Vec::new();
    for i in 0..10u64 {
        let tls = tls_client(small_window(relay.addr).await, &cert).await;
        let (mut ws, _) = tokio_tungstenite::client_async(&url, tls).await.unwrap();
        hello_floor(&mut ws).await;
        let r = relay.relay.clone();
        delegates.push(tokio::spawn(async move {
            let mut pongs = Vec::new();
            let stall = start + std::time::Duration::from_millis(150 * i);
            while tokio::time::Instant::now() < stall {
                next_sequence(&mut ws, &mut pongs).await;
            }
            tokio::time::sleep_until(awake).await;
            // What the relay holds for it comes now, not with its next ping (5 s on).
            let last = r.next_sequences()[index].wrapping_sub(1);
            let mut seq = 0;
            while seq != last {
                seq = tokio::time::timeout(
                    std::time::Duration::from_millis(2500),
                    next_sequence(&mut ws, &mut pongs),
                )
                .await
                .unwrap_or_else(|_| {
                    panic!("delegate {i}: frame {last}, the channel's last, held back; {seq} came")
                });
            }
            awake.elapsed()
        }));
    }
    tokio::time::sleep_until(quiet).await;
    floor.stop_pump();
    let mut slowest = std::time::Duration::ZERO;
    for d in delegates {
        slowest = slowest.max(
            d.await
                .expect("every delegate got the channel's last frame"),
        );
    }
    println!(
        "10 delegates: the channel's last frame within {:.0} ms of reading again",
        slowest.as_secs_f64() * 1000.0
    );
    relay.stop().await;
}

#[tokio::test]
async fn delegates_closed_for_not_reading_get_whole_messages_then_the_reason() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let options = boothcast::server::Options {
        write_timeout: std::time::Duration::from_secs(2),
        ..Default::default()
    };
    let relay = TestRelay::start_opts(EVENT, &|_| None, options).await;
    let floor = Client::floor(&relay.url).await;
    // Frames of many sizes (up to 3,800 bytes): a full socket then often takes part of one.
    let sending = {
        let floor = floor.clone_sender();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(20));
            for n in 0u32.. {
                tick.tick().await;
                let size = 40 + (n as usize * 397) % 3760;
                floor(sender_frame(Source::Floor, FLOOR, n, size));
            }
        })
    };
    let mut delegates = Vec::new();
    for _ in 0..12 {
        let (mut ws, _) =
            tokio_tungstenite::client_async(relay.url.as_str(), small_window(relay.addr).await)
                .await
                .unwrap();
        hello_floor(&mut ws).await;
        delegates.push(ws);
    }
    let mut pongs = Vec::new();
    for ws in &mut delegates {
        next_sequence(ws, &mut pongs).await;
    }
    // Frozen past the write timeout, then awake: each was written part of a message when its
    // socket filled, perhaps; it must get the end of it, then the reason, then the close.
    tokio::time::sleep(std::time::Duration::from_millis(2800)).await;
    for (i, ws) in delegates.iter_mut().enumerate() {
        let mut reason = None;
        loop {
            let m = tokio::time::timeout(WAIT, ws.next())
                .await
                .expect("the close in time");
            match m {
                Some(Ok(Message::Binary(b))) => {
                    boothcast::protocol::FrameHeader::parse(&b).expect("a whole frame");
                }
                Some(Ok(Message::Text(t))) => reason = Some(t.to_string()),
                Some(Ok(Message::Close(c))) => {
                    let c = c.expect("a close code and reason");
                    assert!(c.reason.contains("too_slow"), "delegate {i}: {c:?}");
                    break;
                }
                Some(Ok(_)) => {}
                other => panic!("delegate {i}: the stream broke before its close: {other:?}"),
            }
        }
        let reason = reason.expect("the reason as an error message");
        assert!(reason.contains("not reading"), "delegate {i}: {reason}");
    }
    let cut = relay
        .relay
        .fanout(0)
        .direct
        .counters
        .cut
        .load(std::sync::atomic::Ordering::Relaxed)
        + relay
            .relay
            .fanout(1)
            .direct
            .counters
            .cut
            .load(std::sync::atomic::Ordering::Relaxed);
    println!("12 delegates closed for not reading, each with whole messages, its reason and a close ({cut} writes cut short)");
    sending.abort();
    drop(floor);
    relay.stop().await;
}

/// Says a delegate's `hello` for the floor channel on `ws`.
async fn hello_floor<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        json!({"type": "hello", "role": "listener", "channel": "floor"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
}

/// The index of `plenary/floor` in the relay's channels.
fn floor_index(relay: &TestRelay) -> usize {
    relay
        .relay
        .event()
        .channels
        .iter()
        .position(|c| c.id == "plenary/floor")
        .unwrap()
}

/// A connection to `addr` with a small receive window (4 KiB).
async fn small_window(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(addr).await.unwrap()
}

/// A delegate on `ws`, read by the test when it chooses, beside a healthy one: written by the
/// channel's writer once caught up, a ping answered between whole frames, three stalls until
/// its buffers are full, and whole frames in order after each.
async fn stall_and_resume<S>(
    relay: &TestRelay,
    mut ws: tokio_tungstenite::WebSocketStream<S>,
    floor: Client,
    mut healthy: Client,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let index = floor_index(relay) as u16;
    // Read from the relay itself: over TLS, /metrics is too.
    let fanout = relay.relay.fanout(index);
    let counters = &fanout.direct.counters;
    hello_floor(&mut ws).await;
    // Large frames (1000 bytes) fill its buffers within a second when it stops reading.
    floor.pump(FLOOR, 1000);

    // Caught up, both are written by the channel's writer, not by their own tasks.
    let mut pongs = Vec::new();
    let mut last = next_sequence(&mut ws, &mut pongs).await;
    let mut direct = 0;
    for _ in 0..100 {
        let seq = next_sequence(&mut ws, &mut pongs).await;
        assert_eq!(seq, last.wrapping_add(1), "a frame lost while reading");
        last = seq;
        direct = fanout.direct.members();
        if direct == 2 {
            break;
        }
    }
    assert_eq!(direct, 2, "both delegates written by the channel's writer");

    // A ping while the writer sends: its pong comes between whole frames.
    ws.send(Message::Ping(b"still there".to_vec().into()))
        .await
        .unwrap();
    while pongs.is_empty() {
        let seq = next_sequence(&mut ws, &mut pongs).await;
        assert_eq!(seq, last.wrapping_add(1), "a frame lost around the pong");
        last = seq;
    }
    assert_eq!(pongs, vec![b"still there".to_vec()]);

    // It stops reading three times until its buffers are full, and reads again: what comes is
    // whole messages, in order; what it could not take is skipped, not queued. (A write the
    // socket takes only part of, which a full buffer sometimes does, is finished by the
    // delegate's task before anything else: `direct.rs`'s tests make it happen at will.)
    let mut skipped_in_stream = 0;
    for _ in 0..3 {
        let handbacks = counters
            .handed_back
            .load(std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
        assert!(
            counters
                .handed_back
                .load(std::sync::atomic::Ordering::Relaxed)
                > handbacks,
            "a delegate that stopped reading was handed back to its task"
        );
        for _ in 0..50 {
            let seq = next_sequence(&mut ws, &mut pongs).await;
            let step = seq.wrapping_sub(last);
            assert!((1..1000).contains(&step), "frame {seq} after {last}");
            skipped_in_stream += step as u64 - 1;
            last = seq;
        }
    }
    // Caught up again: back with the writer, and not a frame lost from then on.
    let mut rejoined = false;
    for _ in 0..200 {
        let seq = next_sequence(&mut ws, &mut pongs).await;
        assert!(seq.wrapping_sub(last) >= 1 && seq.wrapping_sub(last) < 1000);
        skipped_in_stream += (seq.wrapping_sub(last) - 1) as u64;
        last = seq;
        if fanout.direct.members() == 2 {
            rejoined = true;
            break;
        }
    }
    assert!(rejoined, "the delegate never went back to the writer");
    for _ in 0..25 {
        let seq = next_sequence(&mut ws, &mut pongs).await;
        assert_eq!(seq, last.wrapping_add(1), "a frame lost after catching up");
        last = seq;
    }

    // The other delegate heard every frame in order meanwhile.
    let mut frames = vec![];
    while frames.len() < 150 {
        frames.push(healthy.frame().await);
    }
    assert_contiguous(&frames);
    let skipped = fanout.skipped();
    let handbacks = counters
        .handed_back
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        skipped > 0 && skipped_in_stream > 0,
        "frames it could not take were skipped"
    );
    println!(
        "3 stalls of 1.2 s: {handbacks} hand-backs ({} with a message cut short), \
         {skipped_in_stream} frames missing from its stream, {skipped} counted skipped",
        counters.cut.load(std::sync::atomic::Ordering::Relaxed)
    );
    drop(floor);
}

#[tokio::test]
async fn the_engineer_sees_each_senders_connection_health() {
    use boothcast::protocol::ServerMessage;
    let relay = TestRelay::start().await;
    let first = Client::console(&relay.url, "en", "1").await;
    first.close();
    let booth = Client::console(&relay.url, "en", "1").await; // a reconnect
    booth.pump(b'E', 80);
    let floor = Client::floor(&relay.url).await;
    floor.pump(FLOOR, 80);
    let mut engineer = Client::connect(
        &relay.url,
        json!({"type": "hello", "role": "engineer", "secret": "engineer-secret"}),
    )
    .await;
    let senders = engineer
        .wait_text("health with round trips", |m| match m {
            ServerMessage::Health { senders }
                if senders.len() == 2
                    && senders.iter().all(|s| s.rtt_ms.is_some() && s.frames >= 10) =>
            {
                Some(senders.clone())
            }
            _ => None,
        })
        .await;
    println!("{senders:?}");
    let en = senders.iter().find(|s| s.who == "en/1").unwrap();
    assert_eq!(en.reconnects, 1);
    assert_eq!(en.lost, 0);
    assert!(en.rtt_ms.unwrap() < 1000.0);
    let fl = senders.iter().find(|s| s.who == "floor").unwrap();
    assert_eq!((fl.reconnects, fl.lost), (0, 0));
    // Frames missing from a sender's own sequence are counted as lost.
    let gappy = Client::console(&relay.url, "ru", "1").await;
    for n in [0u32, 1, 2, 6, 7] {
        gappy.binary(sender_frame(Source::Interpreter, b'R', n, 80));
    }
    let lost = engineer
        .wait_text("ru losses", |m| match m {
            ServerMessage::Health { senders } => senders
                .iter()
                .find(|s| s.who == "ru/1" && s.frames == 5)
                .map(|s| s.lost),
            _ => None,
        })
        .await;
    assert_eq!(lost, 3);
    relay.stop().await;
}

#[tokio::test]
async fn stopping_the_relay_tells_every_connection_why() {
    let relay = TestRelay::start().await;
    let mut listener = Client::listener(&relay.url, "en").await;
    let mut booth = Client::console(&relay.url, "en", "1").await;
    relay.stop().await;
    for c in [&mut listener, &mut booth] {
        let (code, _, fatal) = c.error().await;
        assert_eq!((code.as_str(), fatal), ("shutting_down", true));
        assert_eq!(c.closed().await.map(|c| c.0), Some(1001));
    }
}

/// Frames (sequence numbers) and their arrival times on a raw WebSocket, after `hello`.
async fn arrivals(url: &str, hello: serde_json::Value, n: usize) -> Vec<(u32, std::time::Instant)> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::Text(hello.to_string().into()))
        .await
        .unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(Message::Binary(b))) => {
                let h = boothcast::protocol::FrameHeader::parse(&b).unwrap();
                out.push((h.sequence, std::time::Instant::now()));
            }
            Some(Ok(_)) => {}
            other => panic!("closed: {other:?}"),
        }
    }
    out
}

/// Arrivals more than 8 ms after the one before: the writes a listener saw.
fn bursts(a: &[(u32, std::time::Instant)]) -> usize {
    1 + a
        .windows(2)
        .filter(|w| w[1].1.duration_since(w[0].1) > std::time::Duration::from_millis(8))
        .count()
}

#[tokio::test]
async fn a_relaxed_listener_gets_every_frame_a_fifth_of_a_second_at_a_time() {
    let relay = TestRelay::start().await;
    let floor = Client::floor(&relay.url).await;
    floor.pump(FLOOR, 80);
    let hello = |delivery: &str| json!({"type": "hello", "role": "listener", "channel": "floor", "delivery": delivery});
    let (live, relaxed) = tokio::join!(
        arrivals(&relay.url, hello("live"), 100),
        arrivals(&relay.url, hello("relaxed"), 100)
    );
    for a in [&live, &relaxed] {
        for w in a.windows(2) {
            assert_eq!(w[1].0, w[0].0.wrapping_add(1), "a frame lost or repeated");
        }
    }
    // 100 frames of 20 ms: a hundred writes live, about ten (one every 200 ms) relaxed.
    let due = (2000 / boothcast::server::RELAXED_EVERY.as_millis()) as usize;
    let (l, r) = (bursts(&live), bursts(&relaxed));
    println!("writes for 100 frames: live {l}, relaxed {r} (due {due})");
    assert!(l >= 75, "live listener got its frames in {l} writes");
    assert!(
        (due * 6 / 10..=due * 15 / 10).contains(&r),
        "relaxed listener got its frames in {r} writes"
    );
    // A relaxed console is not a thing: consoles and engineers hear live.
    let m = relay.metrics().await;
    assert_eq!(
        metric(
            &m,
            "boothcast_frames_skipped_total{channel=\"plenary/floor\"}"
        ),
        0
    );
    relay.stop().await;
}

/// A delegate asking for the floor under English gets both on one connection, each frame
/// marked with its own channel and each stream whole; the floor's audience does not count
/// them; asking without it, or for the floor itself, brings one stream again.
#[tokio::test]
async fn the_floor_comes_under_the_interpretation_when_asked() {
    use boothcast::protocol::ServerMessage;
    let relay = TestRelay::start().await;
    let floor = Client::floor(&relay.url).await;
    floor.pump(FLOOR, 80);
    let mut en = Client::console(&relay.url, "en", "1").await;
    en.pump(b'E', 80);
    en.text(json!({"type": "live"}));
    en.console_state(|s| s.live.is_some()).await;
    let mut listener = Client::connect(
        &relay.url,
        json!({"type": "hello", "role": "listener", "channel": "plenary/en", "floor_under": true}),
    )
    .await;
    let under = listener
        .wait_text("subscribed", |m| match m {
            ServerMessage::Subscribed {
                channel,
                floor_under,
            } => Some((channel.clone(), floor_under.clone())),
            _ => None,
        })
        .await;
    assert_eq!(
        under,
        (Some("plenary/en".into()), Some("plenary/floor".into()))
    );
    // Once the interpreter is heard, both streams come, each in sequence.
    listener.frames_until(|_, b| marker(b) == b'E').await;
    let mut by_marker: std::collections::HashMap<u8, Vec<_>> = Default::default();
    for _ in 0..60 {
        let (h, b) = listener.frame().await;
        by_marker.entry(marker(&b)).or_default().push((h, b));
    }
    let (e, f) = (&by_marker[&b'E'], &by_marker[&FLOOR]);
    assert_eq!(by_marker.len(), 2, "only the two streams");
    assert!(
        e.len() >= 20 && f.len() >= 20,
        "{} and {}",
        e.len(),
        f.len()
    );
    assert!(e.iter().all(|(h, _)| h.source == Source::Interpreter));
    assert!(f.iter().all(|(h, _)| h.source == Source::Floor));
    assert_ne!(e[0].0.channel, f[0].0.channel);
    assert_contiguous(e);
    assert_contiguous(f);
    // The delegate counts once, on English.
    let counts = en
        .wait_text("audience", |m| match m {
            ServerMessage::Audience { listeners } => {
                let n = |id: &str| listeners.iter().find(|(c, _)| c == id).map(|(_, n)| *n);
                (n("plenary/en") == Some(1)).then(|| n("plenary/floor"))
            }
            _ => None,
        })
        .await;
    assert_eq!(counts, Some(0));

    // Without it: English alone again.
    listener.text(json!({"type": "subscribe", "channel": "plenary/en"}));
    listener
        .wait_text("subscribed without the floor", |m| match m {
            ServerMessage::Subscribed {
                floor_under: None, ..
            } => Some(()),
            _ => None,
        })
        .await;
    listener.seen.clear();
    let mut markers = Vec::new();
    for _ in 0..30 {
        markers.push(marker(&listener.frame().await.1));
    }
    // Frames already on the way may still be the floor's; then only English.
    let last_floor = markers.iter().rposition(|m| *m == FLOOR).unwrap_or(0);
    assert!(last_floor < 10, "{markers:?}");
    // The floor itself has no floor under it.
    listener.text(json!({"type": "subscribe", "channel": "plenary/floor", "floor_under": true}));
    let under = listener
        .wait_text("subscribed to the floor", |m| match m {
            ServerMessage::Subscribed {
                channel,
                floor_under,
            } => Some((channel.clone(), floor_under.clone())),
            _ => None,
        })
        .await;
    assert_eq!(under, (Some("plenary/floor".into()), None));
    relay.stop().await;
}
