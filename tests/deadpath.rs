//! Paths that die without a FIN or a RST (Wi-Fi out of range, a NAT entry gone, a cable
//! pulled), played by the shaper between real clients and a real relay: the clients notice
//! within their deadline and reconnect by themselves (a booth comes back muted), and the relay
//! lets go of a console that stopped answering.

mod proc;
mod support;

use boothcast::protocol::{Carrying, ChannelInfo, ServerMessage, Source};
use boothcast::relay::unix_micros;
use boothcast::server::SENDER_DEADLINE;
use proc::{tmpdir, tone, Proc};
use serde_json::{json, Value};
use std::cell::Cell;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::shaper::{NewConnections, Shaper};
use support::{marker, Client, TestRelay};

const BIN: &str = env!("CARGO_BIN_EXE_boothcast");
/// How long a process may take for an expected line.
const LIMIT: Duration = Duration::from_secs(12);

/// `boothcast serve` on an ephemeral port, the floor sending a looped tone straight to it (not
/// through any shaper); returns both and the relay's address.
fn relay_with_floor(dir: &Path) -> (Proc, Proc, SocketAddr) {
    let config = dir.join("event.toml");
    std::fs::write(&config, proc::EVENT).unwrap();
    let (relay, url) = Proc::relay(
        Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .stderr(Stdio::null()),
        LIMIT,
    );
    let mut floor = Proc::spawn(
        Command::new(BIN)
            .args(["floor", "--loop", "--server", &url, "--input-file"])
            .arg(tone(dir))
            .env("BOOTHCAST_SECRET", "floor-secret")
            .stdin(Stdio::null()),
    );
    floor.wait_for("\"type\":\"welcome\"", LIMIT);
    let addr = url.trim_start_matches("ws://").parse().unwrap();
    (relay, floor, addr)
}

/// `boothcast listen` of `en` through `shaper` for `seconds`, into `dir/heard.wav`; returns
/// once it is subscribed and the floor's frames flow through the shaper.
fn listener(shaper: &Shaper, dir: &Path, seconds: u32) -> Proc {
    let mut listener = Proc::spawn(
        Command::new(BIN)
            .args(["listen", "--lang", "en", "--server", &shaper.url()])
            .args(["--seconds", &seconds.to_string(), "--output-file"])
            .arg(dir.join("heard.wav"))
            .stderr(Stdio::null()),
    );
    listener.wait_for("\"type\":\"subscribed\"", LIMIT);
    // About half a second of frames (some 110 bytes each) beyond the first messages.
    poll("floor frames reaching the listener", LIMIT, || {
        shaper.bytes_of(0).down > 5_000
    });
    listener
}

/// Waits for `f` to hold, looking every 20 ms.
fn poll(what: &str, limit: Duration, f: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "no {what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `n`-th output line containing `text` (1 for the first), waiting for it.
fn nth(p: &mut Proc, text: &str, n: usize, limit: Duration) -> String {
    let count = Cell::new(0);
    p.wait_until(&format!("`{text}` #{n}"), limit, |l| {
        if l.contains(text) {
            count.set(count.get() + 1);
        }
        count.get() >= n
    })
}

fn json_line(lines: &[String], kind: &str) -> Value {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} line in {lines:#?}"))
}

/// A file listener places a frame this long after its arrival (`client::FILE_MARGIN`).
const FILE_MARGIN_S: f64 = 0.040;
/// 10 ms windows of a listener's WAV, loud when the tone (RMS 0.35) is in them.
const WINDOW: usize = 480;

fn loud(samples: &[f32], window: usize) -> bool {
    let w =
        &samples[(window * WINDOW).min(samples.len())..((window + 1) * WINDOW).min(samples.len())];
    !w.is_empty() && (w.iter().map(|s| s * s).sum::<f32>() / w.len() as f32).sqrt() > 0.1
}

#[test]
fn a_listener_whose_path_dies_reconnects_by_itself_and_hears_again() {
    let dir = tmpdir("deadpath-listen");
    let (_relay, _floor, relay_addr) = relay_with_floor(&dir);
    let shaper = Shaper::start(relay_addr);
    let mut listener = listener(&shaper, &dir, 14);

    let stall_us = unix_micros();
    let stalled = Instant::now();
    shaper.stall(NewConnections::Pass);
    let line = listener.wait_for("\"type\":\"disconnected\"", LIMIT);
    let noticed = stalled.elapsed();
    assert!(line.contains("no answer from the relay for 4 s"), "{line}");
    nth(&mut listener, "\"type\":\"subscribed\"", 2, LIMIT);
    let reconnected = stalled.elapsed();
    let out = listener.finish(Duration::from_secs(30));
    let started_us = json_line(&out, "started")["start_us"].as_u64().unwrap();
    let summary = &json_line(&out, "summary")["summary"];
    assert_eq!(summary["reconnects"], 1, "{summary}");

    // In what the listener wrote: the tone up to the stall, silence, then the tone again.
    let heard = boothcast::audio::read_wav(&dir.join("heard.wav")).unwrap();
    let stall_at = (stall_us - started_us) as f64 / 1e6 + FILE_MARGIN_S;
    let first = (stall_at * 48_000.0) as usize / WINDOW;
    assert!(
        loud(&heard, first - 10),
        "the tone was heard before the stall"
    );
    let quiet = (first..).find(|&w| !loud(&heard, w)).unwrap();
    let back = (quiet..heard.len() / WINDOW)
        .find(|&w| loud(&heard, w))
        .expect("the tone came back after the stall");
    let back_s = (back * WINDOW) as f64 / 48_000.0 - stall_at;
    let gone_s = (quiet * WINDOW) as f64 / 48_000.0 - stall_at;
    println!(
        "listener: path dead at 0; noticed after {:.2} s, subscribed again after {:.2} s, \
         first sound after the reconnect at {back_s:.2} s (sound stopped at {gone_s:.2} s)",
        noticed.as_secs_f64(),
        reconnected.as_secs_f64()
    );
    assert!(
        gone_s < 0.2,
        "the sound went on {gone_s:.2} s after the stall"
    );
    assert!(
        back_s < 8.0,
        "heard again only {back_s:.2} s after the path died"
    );
    let after = (back..back + 100).filter(|&w| loud(&heard, w)).count();
    assert!(
        after > 95,
        "the tone is heard again: {after} of 100 windows"
    );
}

#[test]
fn a_listener_keeps_trying_while_the_whole_path_is_dead_and_is_back_once_it_returns() {
    let dir = tmpdir("deadpath-listen-all");
    let (_relay, _floor, relay_addr) = relay_with_floor(&dir);
    let shaper = Shaper::start(relay_addr);
    let mut listener = listener(&shaper, &dir, 20);

    let stalled = Instant::now();
    shaper.stall(NewConnections::Dead);
    let line = nth(&mut listener, "\"type\":\"disconnected\"", 1, LIMIT);
    assert!(line.contains("no answer from the relay for 4 s"), "{line}");
    let noticed = stalled.elapsed();
    // The next attempt is accepted by the dead path and never answered: the handshake's own
    // deadline gives it up.
    let line = nth(&mut listener, "\"type\":\"disconnected\"", 2, LIMIT);
    assert!(
        line.contains("no answer from the relay within 5 s"),
        "{line}"
    );
    assert!(
        shaper.connections() >= 2,
        "the retry went through the shaper"
    );
    let given_up = stalled.elapsed();

    let resumed = Instant::now();
    shaper.resume();
    nth(&mut listener, "\"type\":\"subscribed\"", 2, LIMIT);
    let back = resumed.elapsed();
    println!(
        "listener, whole path dead: noticed after {:.2} s, a handshake given up after {:.2} s, \
         subscribed again {:.2} s after the path came back",
        noticed.as_secs_f64(),
        given_up.as_secs_f64(),
        back.as_secs_f64()
    );
    let out = listener.finish(Duration::from_secs(30));
    let summary = &json_line(&out, "summary")["summary"];
    assert!(summary["reconnects"].as_u64().unwrap() >= 2, "{summary}");
}

fn is_live(c: &ChannelInfo, booth: &str, console: &str) -> bool {
    c.live
        .as_ref()
        .is_some_and(|l| l.booth == booth && l.console == console)
}

fn carries_floor(c: &ChannelInfo) -> bool {
    c.live.is_none() && c.carrying == Carrying::Floor
}

// Multi-threaded: the test blocks on the booth process's output while the relay and the test
// clients run on the workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_booth_whose_path_dies_reconnects_by_itself_and_comes_back_muted() {
    let relay = TestRelay::start().await;
    let floor = Client::floor(&relay.url).await;
    floor.pump(0xF0, 60);
    let mut listener = Client::listener(&relay.url, "en").await;
    let shaper = Shaper::start(relay.addr);
    let dir = tmpdir("deadpath-booth");
    let mut booth = Proc::spawn(
        Command::new(BIN)
            .args(["booth", "--headless", "--live", "--loop", "--booth", "en"])
            .args(["--server", &shaper.url(), "--input-file"])
            .arg(tone(&dir))
            .env("BOOTHCAST_SECRET", "secret-en")
            .stdin(Stdio::piped())
            .stderr(Stdio::null()),
    );
    listener
        .channel_state("plenary/en", |c| is_live(c, "en", "1"))
        .await;
    listener
        .frames_until(|h, _| h.source == Source::Interpreter)
        .await;

    let stalled = Instant::now();
    shaper.stall(NewConnections::Pass);
    let line = booth.wait_for("\"type\":\"disconnected\"", LIMIT);
    let noticed = stalled.elapsed();
    assert!(line.contains("no answer from the relay for 4 s"), "{line}");
    nth(&mut booth, "\"type\":\"welcome\"", 2, LIMIT);
    let reconnected = stalled.elapsed();
    println!(
        "booth: path dead at 0; noticed after {:.2} s, welcomed again after {:.2} s",
        noticed.as_secs_f64(),
        reconnected.as_secs_f64()
    );

    // The relay's word on the console after the reconnect. A command typed now is answered
    // after anything the booth sent on reconnecting, a `live` included.
    booth.send("cough on");
    let state = booth.wait_until("the console's state after `cough on`", LIMIT, |l| {
        l.contains("\"type\":\"console\"") && l.contains("\"cough\":true")
    });
    assert!(
        state.contains("\"live\":null"),
        "back on air by itself: {state}"
    );
    // Listeners: the channel let go of the console and carries the floor, and goes on doing so.
    listener.channel_state("plenary/en", carries_floor).await;
    listener
        .frames_until(|h, _| h.source == Source::Floor)
        .await;
    for _ in 0..25 {
        let (h, _) = listener.frame().await;
        assert_eq!(h.source, Source::Floor, "the booth is carried again");
    }
    listener.channel_state("plenary/en", carries_floor).await;
    relay.stop().await;
}

/// `hold_ms` of `en` in the test event.
const HOLD: Duration = Duration::from_millis(300);

#[tokio::test]
async fn the_relay_lets_go_of_a_live_console_whose_path_died() {
    let relay = TestRelay::start().await;
    let shaper = Shaper::start(relay.addr);
    let floor = Client::floor(&relay.url).await;
    floor.pump(0xF0, 60);
    let mut engineer = Client::connect(
        &relay.url,
        json!({"type": "hello", "role": "engineer", "secret": "engineer-secret"}),
    )
    .await;
    engineer.welcome().await;
    let mut listener = Client::listener(&relay.url, "en").await;
    let mut partner = Client::console(&relay.url, "en", "2").await;
    let console = Client::console(&format!("{}/ws", shaper.url()), "en", "1").await;
    console.text(json!({"type": "live"}));
    console.pump(1, 60);
    listener
        .channel_state("plenary/en", |c| is_live(c, "en", "1"))
        .await;
    listener.frames_until(|_, b| marker(b) == 1).await;

    let stalled = Instant::now();
    shaper.stall(NewConnections::Pass);
    listener.channel_state("plenary/en", carries_floor).await;
    listener
        .frames_until(|h, b| h.source == Source::Floor && marker(b) == 0xF0)
        .await;
    let back = stalled.elapsed();
    let bound = SENDER_DEADLINE + HOLD + Duration::from_millis(1500);
    println!(
        "relay: console's path dead at 0; floor frames on en after {:.2} s (bound {:.1} s)",
        back.as_secs_f64(),
        bound.as_secs_f64()
    );
    assert!(back < bound, "the floor came back only after {back:?}");

    partner.text(json!({"type": "live"}));
    partner
        .console_state(|s| s.live.as_deref() == Some("plenary/en"))
        .await;
    let entry = engineer
        .wait_text("a log entry of the console's silence", |m| match m {
            ServerMessage::Log { entries } => entries
                .iter()
                .find(|e| e.text.contains("no answer"))
                .map(|e| e.text.clone()),
            _ => None,
        })
        .await;
    assert!(entry.contains("en/1"), "{entry}");
    relay.stop().await;
}
