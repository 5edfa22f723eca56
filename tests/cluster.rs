//! Relays joined through NATS: real `nats-server` processes (Debian's `nats-server`, which
//! scripts/test.sh installs) on ephemeral loopback ports, real `boothcast serve` processes,
//! and the test clients of tests/support speaking the wire protocol.

mod proc;
mod support;

use boothcast::cluster::{RECORD_TTL, TAKEOVER_GIVEN_UP_AFTER, TAKEOVER_OTHERS_AFTER};
use boothcast::protocol::{
    ClusterNode, ConsoleState, LogEntry, NodeHealth, SenderHealth, ServerMessage,
};
use proc::{tmpdir, tone, Proc};
use serde_json::json;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{assert_contiguous, ffmpeg_decode, ffprobe_seconds, marker, Client};

const BIN: &str = env!("CARGO_BIN_EXE_boothcast");

/// The floor, English and French; booths `en` (consoles 1 and 2 share it) and `en2`, both into
/// English, for interlock between booths.
const EVENT: &str = r#"
[event]
name = "Cluster test"
[secrets]
floor = "floor-secret"
engineer = "engineer-secret"
[[rooms]]
id = "plenary"
[[rooms.channels]]
lang = "en"
name = "English"
native = "English"
[[rooms.channels]]
lang = "fr"
name = "French"
native = "Français"
[[rooms.booths]]
id = "en"
languages = ["en"]
secret = "secret-en"
[[rooms.booths]]
id = "en2"
languages = ["en"]
secret = "secret-en2"
"#;

/// The 3 s within which listeners must hear their channel again after a node dies.
const BOUND: Duration = Duration::from_secs(3);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `nats-server` with JetStream on a loopback port, killed when dropped.
struct Nats {
    port: u16,
    dir: PathBuf,
    /// More arguments of `nats-server` (e.g. `--user`, `--pass`).
    extra: Vec<String>,
    child: Option<Child>,
}

impl Nats {
    fn start(dir: &Path) -> Nats {
        Nats::start_with(dir, &[])
    }

    fn start_with(dir: &Path, extra: &[&str]) -> Nats {
        let mut n = Nats {
            port: free_port(),
            dir: dir.join("nats"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        n.restart();
        n
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let child = Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A relay node: its process (killed with SIGKILL when dropped) and addresses.
struct Node {
    /// Held for its `Drop` (SIGKILL).
    _proc: Proc,
    ws: String,
    http: SocketAddr,
}

fn node(dir: &Path, event: &str, nats: &Nats, name: &str) -> Node {
    node_with(dir, event, nats, name, &[])
}

/// A node started with `extra` arguments of `serve`.
fn node_with(dir: &Path, event: &str, nats: &Nats, name: &str, extra: &[&std::ffi::OsStr]) -> Node {
    let config = dir.join(format!("event-{name}.toml"));
    std::fs::write(&config, event).unwrap();
    let (proc, base) = Proc::relay(
        Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .args(["--cluster", &nats.url(), "--node", name])
            .args(extra)
            .stderr(Stdio::null()),
        Duration::from_secs(10),
    );
    let http = base.trim_start_matches("ws://").parse().unwrap();
    Node {
        _proc: proc,
        ws: format!("{base}/ws"),
        http,
    }
}

async fn metric(node: &Node, name: &str) -> u64 {
    support::metric(&support::http_get(node.http, "/metrics").await, name)
}

/// Waits until `node` reports the metric line `line` (e.g. `boothcast_cluster_deciding{node="a"} 1`).
async fn wait_metric(node: &Node, line: &str) {
    wait_metric_at(node.http, line).await
}

/// Waits until the node serving at `http` reports the metric line `line`.
async fn wait_metric_at(http: SocketAddr, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = support::http_get(http, "/metrics").await;
        if text.lines().any(|l| l == line) {
            return;
        }
        assert!(Instant::now() < deadline, "no `{line}` in time:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three nodes a, b, c on one NATS server; `a` decides (started first).
async fn cluster(dir: &Path) -> (Nats, Node, Node, Node) {
    let nats = Nats::start(dir);
    let a = node(dir, EVENT, &nats, "a");
    wait_metric(&a, "boothcast_cluster_deciding{node=\"a\"} 1").await;
    let b = node(dir, EVENT, &nats, "b");
    let c = node(dir, EVENT, &nats, "c");
    for n in [&a, &b, &c] {
        wait_metric(n, "boothcast_cluster_nodes 3").await;
    }
    (nats, a, b, c)
}

async fn live(console: &mut Client) {
    console.text(json!({"type": "live"}));
    console
        .console_state(|s| s.live.as_deref() == Some("plenary/en"))
        .await;
}

/// Frames until one from `m`; then `n` more; all returned.
async fn hear(
    listener: &mut Client,
    m: u8,
    n: usize,
) -> Vec<(boothcast::protocol::FrameHeader, bytes::Bytes)> {
    let mut frames = listener.frames_until(|_, b| marker(b) == m).await;
    let first = frames.len() - 1;
    for _ in 0..n {
        frames.push(listener.frame().await);
    }
    frames.split_off(first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_booth_on_one_node_is_heard_on_another_and_the_audience_is_summed() {
    let dir = tmpdir("heard");
    let (_nats, a, b, c) = cluster(&dir).await;
    let mut listener = Client::listener(&c.ws, "plenary/en").await;
    let mut console = Client::console(&b.ws, "en", "1").await;
    console.console_state(|s| s.live.is_none()).await;
    live(&mut console).await;
    console.pump(7, 60);
    let frames = hear(&mut listener, 7, 50).await;
    assert!(frames.iter().all(|(_, b)| marker(b) == 7));
    assert_contiguous(&frames);
    // The channel list on every node shows the console live.
    for n in [&a, &c] {
        let mut l = Client::listener(&n.ws, "plenary/fr").await;
        let info = l.channel_state("plenary/en", |i| i.live.is_some()).await;
        assert_eq!(info.live.unwrap().booth, "en");
    }
    // The listener on c is counted in the audience the console on b sees (the one on a
    // listening to French too, once heartbeats carried it).
    console
        .wait_text("audience with the listener of node c", |m| match m {
            ServerMessage::Audience { listeners } => listeners
                .iter()
                .any(|(c, n)| c == "plenary/en" && *n == 1)
                .then_some(()),
            _ => None,
        })
        .await;
    // A frame crossed NATS to c once, however many listen there.
    let before = metric(&c, "boothcast_cluster_received_frames_total").await;
    let mut more = Vec::new();
    for _ in 0..3 {
        more.push(Client::listener(&c.ws, "plenary/en").await);
    }
    for l in more.iter_mut() {
        hear(l, 7, 10).await;
    }
    let frames_heard = hear(&mut listener, 7, 25).await.len() as u64;
    let after = metric(&c, "boothcast_cluster_received_frames_total").await;
    assert!(
        after - before < frames_heard * 3,
        "node c received {} frames of one channel from NATS while one listener heard {frames_heard}: \
         a frame crossed more than once",
        after - before
    );
}

/// Starts `serve` with `config` as node `name` of the cluster on `nats`, which must refuse to
/// start: waits (at most 20 s) for it to end, and returns what it said on standard error.
async fn refused_node(config: &Path, nats: &Nats, name: &str) -> String {
    let child = tokio::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .args(["--cluster", &nats.url(), "--node", name])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("node {name} still runs after 20 s"))
        .unwrap();
    assert!(!out.status.success(), "node {name} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_event_is_refused_with_what_differs() {
    let dir = tmpdir("refused");
    let nats = Nats::start(&dir);
    let a = node(&dir, EVENT, &nats, "a");
    // a has joined (its event is the cluster's) once it decides.
    wait_metric(&a, "boothcast_cluster_deciding{node=\"a\"} 1").await;
    let other = EVENT.replace("secret-en2", "another-secret-en2");
    let config = dir.join("other.toml");
    std::fs::write(&config, other).unwrap();
    let err = refused_node(&config, &nats, "b").await;
    assert!(
        err.contains("differs from the cluster's") && err.contains("secret of booth en2 differs"),
        "{err}"
    );
    assert!(
        !err.contains("another-secret-en2"),
        "a secret in the message: {err}"
    );
}

/// A second live process with a node's name is refused, saying why; once the first is gone
/// the name is free again within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_name_already_in_the_cluster_is_refused() {
    let dir = tmpdir("same-name");
    let nats = Nats::start(&dir);
    let a = node(&dir, EVENT, &nats, "a");
    wait_metric(&a, "boothcast_cluster_deciding{node=\"a\"} 1").await;
    let config = dir.join("event-a.toml");
    let err = refused_node(&config, &nats, "a").await;
    assert!(
        err.contains("a node named \"a\" is already in the cluster"),
        "{err}"
    );
    // The first one killed: its name is free again, and a node of that name joins.
    drop(a);
    let t = Instant::now();
    let again = node(&dir, EVENT, &nats, "a");
    println!("name free again after {:?}", t.elapsed());
    wait_metric(&again, "boothcast_cluster_deciding{node=\"a\"} 1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interlock_and_handover_hold_across_nodes() {
    let dir = tmpdir("rules");
    let (_nats, a, b, c) = cluster(&dir).await;
    let mut listener = Client::listener(&c.ws, "plenary/en").await;
    let mut one = Client::console(&a.ws, "en", "1").await;
    live(&mut one).await;
    one.pump(1, 60);
    hear(&mut listener, 1, 5).await;
    // Another booth asking for the channel from another node is refused, with the reason.
    let mut other = Client::console(&b.ws, "en2", "1").await;
    other.text(json!({"type": "live"}));
    let (code, message, fatal) = other.error().await;
    assert_eq!(code, "channel_taken", "{message}");
    assert!(message.contains("booth en"), "{message}");
    assert!(!fatal);
    // Handover from console 1 on a to console 2 on b: contiguous, one after the other.
    let mut two = Client::console(&b.ws, "en", "2").await;
    two.console_state(|s| s.live.is_none()).await;
    two.pump(2, 60);
    one.text(json!({"type": "handover"}));
    two.wait_text("handover offer", |m| {
        matches!(m, ServerMessage::HandoverOffered { .. }).then_some(())
    })
    .await;
    two.text(json!({"type": "accept"}));
    let mut frames = listener.frames_until(|_, b| marker(b) == 2).await;
    for _ in 0..25 {
        frames.push(listener.frame().await);
    }
    assert_contiguous(&frames);
    let first_two = frames.iter().position(|(_, b)| marker(b) == 2).unwrap();
    assert!(frames[..first_two].iter().all(|(_, b)| marker(b) == 1));
    assert!(
        frames[first_two..].iter().all(|(_, b)| marker(b) == 2),
        "console 1 heard after the handover"
    );
    one.console_state(|s: &ConsoleState| s.live.is_none()).await;
}

/// Time from `since` until the listener hears marker `m` again.
async fn back(listener: &mut Client, m: u8, since: Instant) -> Duration {
    listener.frames_until(|_, b| marker(b) == m).await;
    since.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_any_node_leaves_the_channel_heard_within_3_s() {
    let dir = tmpdir("kill");
    let (_nats, a, b, c) = cluster(&dir).await;
    let mut listener = Client::listener(&c.ws, "plenary/en").await;
    let mut console = Client::console(&b.ws, "en", "1").await;
    live(&mut console).await;
    console.pump(5, 60);
    hear(&mut listener, 5, 5).await;

    // 1. The deciding node (a): the console on b stays live, the listener on c hears it again.
    console.seen.clear();
    let t = Instant::now();
    drop(a);
    let decider = back(&mut listener, 5, t).await;
    println!("decider killed: the listener heard the channel again after {decider:?}");
    assert!(decider < BOUND, "{decider:?}");
    // The new decider tells the console its state: still live.
    let state = console
        .wait_text("the console's state from the new decider", |m| match m {
            ServerMessage::Console(s) => Some(s.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        state.live.as_deref(),
        Some("plenary/en"),
        "muted by the take-over"
    );

    // 2. The listener's node (c): the listener reconnects to b and hears at live.
    let t = Instant::now();
    drop(c);
    listener.closed().await;
    let mut listener = Client::listener(&b.ws, "plenary/en").await;
    let listener_node = back(&mut listener, 5, t).await;
    println!("listener's node killed: heard again on another node after {listener_node:?}");
    assert!(listener_node < BOUND, "{listener_node:?}");

    // 3. The live console's node: a console on a fresh node d; the listener on b.
    let d = node(&dir, EVENT, &_nats, "d");
    wait_metric(&d, "boothcast_cluster_nodes 2").await;
    console.stop_pump();
    console.text(json!({"type": "mute"}));
    // Console 2 asks once the decider has muted console 1; sooner it is refused `partner_live`.
    console.console_state(|s| s.live.is_none()).await;
    let mut on_d = Client::console(&d.ws, "en", "2").await;
    live(&mut on_d).await;
    on_d.pump(6, 60);
    hear(&mut listener, 6, 5).await;
    let t = Instant::now();
    drop(d);
    on_d.closed().await;
    // It comes back on b, muted, and goes live again.
    let mut again = Client::console(&b.ws, "en", "2").await;
    again.console_state(|s| s.live.is_none()).await;
    live(&mut again).await;
    again.pump(8, 60);
    let console_node = back(&mut listener, 8, t).await;
    println!("live console's node killed: heard again from its reconnected console after {console_node:?}");
    assert!(console_node < BOUND, "{console_node:?}");
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nats_each_node_serves_its_own_and_rejoins() {
    let dir = tmpdir("nats-down");
    let (mut nats, _a, b, c) = cluster(&dir).await;
    let mut near = Client::listener(&b.ws, "plenary/en").await;
    let mut far = Client::listener(&c.ws, "plenary/en").await;
    let mut console = Client::console(&b.ws, "en", "1").await;
    live(&mut console).await;
    console.pump(3, 60);
    hear(&mut near, 3, 5).await;
    hear(&mut far, 3, 5).await;

    nats.stop();
    let stopped = Instant::now();
    wait_metric(&b, "boothcast_cluster_isolated{node=\"b\"} 1").await;
    // The listener on the booth's own node keeps hearing it: no gap over half a second.
    let mut last = Instant::now();
    let mut longest = Duration::ZERO;
    while stopped.elapsed() < Duration::from_secs(5) {
        let (_, f) = near.frame().await;
        if marker(&f) == 3 {
            longest = longest.max(last.elapsed());
            last = Instant::now();
        }
    }
    println!("NATS stopped: longest silence on the booth's own node {longest:?}");
    assert!(longest < Duration::from_millis(500), "{longest:?}");

    nats.restart();
    let t = Instant::now();
    wait_metric(&b, "boothcast_cluster_isolated{node=\"b\"} 0").await;
    let far_back = back(&mut far, 3, t).await;
    println!("NATS back: heard across nodes again after {far_back:?}");
    hear(&mut near, 3, 10).await;
    assert!(far_back < Duration::from_secs(10), "{far_back:?}");
}

/// NATS and the deciding node die together: once NATS is back (without the lease's bucket,
/// memory storage), one survivor decides, and a booth on one survivor is heard on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decider_dying_with_nats_is_replaced_once_nats_is_back() {
    let dir = tmpdir("nats-and-decider");
    let (mut nats, a, b, c) = cluster(&dir).await;
    let mut listener = Client::listener(&c.ws, "plenary/en").await;
    let mut console = Client::console(&b.ws, "en", "1").await;
    live(&mut console).await;
    console.pump(4, 60);
    hear(&mut listener, 4, 5).await;

    nats.stop();
    drop(a);
    wait_metric(&b, "boothcast_cluster_isolated{node=\"b\"} 1").await;
    wait_metric(&c, "boothcast_cluster_isolated{node=\"c\"} 1").await;
    nats.restart();
    let t = Instant::now();
    let line = |n: &str, what: &str, v: u8| format!("boothcast_cluster_{what}{{node=\"{n}\"}} {v}");
    let decider = loop {
        let mut deciding = Vec::new();
        let mut rejoined = 0;
        for (name, node) in [("b", &b), ("c", &c)] {
            let text = support::http_get(node.http, "/metrics").await;
            if text.lines().any(|l| l == line(name, "isolated", 0)) {
                rejoined += 1;
                if text.lines().any(|l| l == line(name, "deciding", 1)) {
                    deciding.push(name);
                }
            }
        }
        if rejoined == 2 && deciding.len() == 1 {
            break deciding[0];
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no single decider 10 s after NATS came back (rejoined {rejoined}, deciding {deciding:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let heard = back(&mut listener, 4, t).await;
    println!(
        "NATS back without the decider: node {decider} decides; heard across nodes after {heard:?}"
    );
    assert!(heard < Duration::from_secs(10), "{heard:?}");
}

/// The first output line containing `then` that comes after one containing `first`.
fn after(p: &mut Proc, first: &str, then: &str, limit: Duration) -> serde_json::Value {
    let passed = std::cell::Cell::new(false);
    let line = p.wait_until(&format!("`{then}` after `{first}`"), limit, |l| {
        if passed.get() && l.contains(then) {
            return true;
        }
        if l.contains(first) {
            passed.set(true);
        }
        false
    });
    serde_json::from_str(&line).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_given_several_relays_move_on_when_their_node_dies() {
    let dir = tmpdir("addresses");
    let (_nats, a, b, c) = cluster(&dir).await;
    let base = |n: &Node| format!("ws://{}/", n.http);

    // The welcome lists every live node's public address.
    let mut probe = Client::connect(
        &a.ws,
        json!({"type": "hello", "role": "listener", "channel": "plenary/fr"}),
    )
    .await;
    let relays = probe
        .wait_text("welcome", |m| match m {
            ServerMessage::Welcome { relays, .. } => Some(relays.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        relays[0],
        base(&a),
        "the node's own address first: {relays:?}"
    );
    let mut sorted = relays.clone();
    sorted.sort();
    let mut want = vec![base(&a), base(&b), base(&c)];
    want.sort();
    assert_eq!(sorted, want);

    // A booth process on b (then c), live on English; a listen process on c (then b).
    let tone = tone(&dir);
    let mut booth = Proc::spawn(
        Command::new(BIN)
            .args(["booth", "--headless", "--live", "--loop", "--booth", "en"])
            .args(["--server", &b.ws, "--server", &c.ws, "--input-file"])
            .arg(&tone)
            .env("BOOTHCAST_SECRET", "secret-en")
            .stdin(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let limit = Duration::from_secs(10);
    booth.wait_until("the booth live", limit, |l| {
        l.contains("\"type\":\"console\"") && l.contains("\"live\":\"plenary/en\"")
    });
    let mut listen = Proc::spawn(
        Command::new(BIN)
            .args([
                "listen", "--lang", "en", "--server", &c.ws, "--server", &b.ws,
            ])
            .arg("--output-file")
            .arg(dir.join("heard.wav"))
            .stdin(Stdio::null())
            .stderr(Stdio::null()),
    );
    let hearing = |listen: &mut Proc, n: &Node| {
        let relay = format!("\"relay\":\"{}\"", n.ws);
        listen.wait_until(&format!("hearing from {}", n.ws), limit, |l| {
            l.contains("\"type\":\"hearing\"") && l.contains(&relay)
        });
    };
    hearing(&mut listen, &c);

    // kill -9 of the listener's node: it hears the channel again from b.
    let t = Instant::now();
    drop(c);
    hearing(&mut listen, &b);
    let again = t.elapsed();
    println!(
        "listen process: node killed, heard the channel again on another node after {again:?}"
    );
    assert!(again < BOUND, "{again:?}");
    drop(listen);

    // kill -9 of the live booth's node: it comes back on a, the one node left (c is dead too;
    // a was told in b's welcome), muted.
    let mut on_a = Client::listener(&a.ws, "plenary/fr").await;
    let t = Instant::now();
    drop(b);
    let from_a = format!("\"relays\":[\"{}\"", base(&a));
    let state = after(&mut booth, &from_a, "\"type\":\"console\"", limit);
    let back = t.elapsed();
    println!("booth process: node killed, connected again on another node after {back:?}");
    assert!(state["live"].is_null(), "on air by itself: {state}");
    let line = booth.last("disconnected");
    assert!(line["retry_in_ms"].as_u64().is_some(), "{line}");
    // Nobody is live on English anywhere; the console goes live again when told.
    on_a.channel_state("plenary/en", |i| i.live.is_none()).await;
    booth.send("live");
    on_a.channel_state("plenary/en", |i| i.live.is_some()).await;
    let mut listener = Client::listener(&a.ws, "plenary/en").await;
    listener
        .frames_until(|h, _| h.source == boothcast::protocol::Source::Interpreter)
        .await;
}

async fn engineer(url: &str) -> Client {
    let mut c = Client::connect(
        url,
        json!({"type": "hello", "role": "engineer", "secret": "engineer-secret"}),
    )
    .await;
    c.welcome().await;
    c
}

/// Waits for `recording` saying it runs (`Some(node)`) on that node, or that it does not.
async fn recording_on(engineer: &mut Client, want: Option<&str>) -> Option<String> {
    engineer
        .wait_text(&format!("recording on {want:?}"), |m| match m {
            ServerMessage::Recording {
                active, dir, node, ..
            } if node.as_deref() == want => {
                assert_eq!(*active, want.is_some(), "{m:?}");
                Some(dir.clone())
            }
            _ => None,
        })
        .await
}

/// A recording session directory closed properly: every file read by opusinfo without a
/// warning (an end-of-stream page, whole pages) and by ffprobe; returns the session's start
/// and stop, µs since the epoch, from its index.
fn closed_session(session: &Path) -> (u64, u64) {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(session.join("index.json")).unwrap()).unwrap();
    let stopped = index["stopped_unix_us"]
        .as_u64()
        .unwrap_or_else(|| panic!("{} was not closed: {index}", session.display()));
    let files: Vec<PathBuf> = index["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| session.join(c["file"].as_str().unwrap()))
        .collect();
    assert_eq!(files.len(), 3, "the floor, en and fr");
    for file in &files {
        let out = Command::new("opusinfo").arg(file).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !text.contains("WARNING") && !text.contains("ERROR"),
            "opusinfo on {}:\n{text}",
            file.display()
        );
        let probe = Command::new("ffprobe")
            .args(["-v", "error", "-show_entries", "format=duration"])
            .args(["-of", "csv=p=0"])
            .arg(file)
            .output()
            .unwrap();
        assert!(probe.status.success(), "ffprobe refused {}", file.display());
        let seconds: f64 = String::from_utf8_lossy(&probe.stdout)
            .trim()
            .parse()
            .unwrap();
        assert!(seconds > 0.0, "{} is empty", file.display());
    }
    (index["started_unix_us"].as_u64().unwrap(), stopped)
}

/// The session directories under `root`.
fn sessions(root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_runs_on_one_node_moves_when_started_elsewhere_and_stops_from_any() {
    let dir = tmpdir("record");
    let nats = Nats::start(&dir);
    let a = node(&dir, EVENT, &nats, "a");
    wait_metric(&a, "boothcast_cluster_deciding{node=\"a\"} 1").await;
    let (rec_b, rec_c) = (dir.join("rec-b"), dir.join("rec-c"));
    // Both may record; the first to start records (serve --record), the other stands by.
    let b = node_with(
        &dir,
        EVENT,
        &nats,
        "b",
        &["--record".as_ref(), rec_b.as_os_str()],
    );
    let c = node_with(
        &dir,
        EVENT,
        &nats,
        "c",
        &["--record".as_ref(), rec_c.as_os_str()],
    );
    for n in [&a, &b, &c] {
        wait_metric(n, "boothcast_cluster_nodes 3").await;
    }
    // Something to record: a booth on a, live on English.
    let mut console = Client::console(&a.ws, "en", "1").await;
    live(&mut console).await;
    console.pump(4, 60);
    let mut on_b = engineer(&b.ws).await;
    let mut on_c = engineer(&c.ws).await;
    let at_start = on_b
        .wait_text("the recording started with the cluster", |m| match m {
            ServerMessage::Recording { active: true, .. } => Some(m.clone()),
            _ => None,
        })
        .await;
    let ServerMessage::Recording {
        node: Some(first), ..
    } = &at_start
    else {
        panic!("{at_start:?}");
    };
    assert!(first == "b" || first == "c", "{at_start:?}");
    on_b.seen.push(at_start);
    let one = |root: &Path| sessions(root).len();
    assert_eq!(one(&rec_b) + one(&rec_c), 1, "both nodes recorded at start");

    // A node without a recording directory says so.
    let mut on_a = engineer(&a.ws).await;
    on_a.text(json!({"type": "record", "start": true}));
    let (code, message, fatal) = on_a.error().await;
    assert_eq!(
        (code.as_str(), message.as_str(), fatal),
        (
            "forbidden",
            "recording is not set up on node a: start it with --record DIR",
            false
        )
    );

    // The engineer on b records there.
    on_b.text(json!({"type": "record", "start": true}));
    recording_on(&mut on_b, Some("b")).await;
    recording_on(&mut on_c, Some("b")).await;
    wait_metric(&a, "boothcast_cluster_node_recording{node=\"b\"} 1").await;
    let mut listener = Client::listener(&b.ws, "plenary/en").await;
    hear(&mut listener, 4, 25).await;

    // The engineer on c starts it there: b stops, its files closed; c records. (What came
    // before, c recording from its start perhaps, is behind us.)
    on_b.seen.clear();
    on_c.seen.clear();
    on_c.text(json!({"type": "record", "start": true}));
    let dir_c = recording_on(&mut on_c, Some("c"))
        .await
        .expect("a directory");
    recording_on(&mut on_b, Some("c")).await;
    assert!(
        Path::new(&dir_c).starts_with(&rec_c),
        "{dir_c} is not under c's recording directory"
    );
    let b_sessions = sessions(&rec_b);
    assert!(!b_sessions.is_empty(), "b never recorded");
    let mut spans: Vec<(u64, u64, PathBuf)> = b_sessions
        .iter()
        .map(|s| {
            let (start, stop) = closed_session(s);
            (start, stop, s.clone())
        })
        .collect();
    hear(&mut listener, 4, 25).await;

    // Stopped from b, where it no longer runs: c stops. (While it moved, nothing recorded
    // for a moment, and the engineers were told: that is behind us.)
    on_b.seen.clear();
    on_c.seen.clear();
    on_b.text(json!({"type": "record", "start": false}));
    recording_on(&mut on_b, None).await;
    recording_on(&mut on_c, None).await;
    for s in sessions(&rec_c) {
        let (start, stop) = closed_session(&s);
        spans.push((start, stop, s));
    }
    assert!(
        spans.iter().any(|(_, _, s)| s == Path::new(&dir_c)),
        "{dir_c} not among {spans:?}"
    );
    // Never two copies at once: no two sessions, on any node, overlap in time.
    spans.sort();
    for w in spans.windows(2) {
        assert!(
            w[0].1 <= w[1].0,
            "{} (until {}) overlaps {} (from {})",
            w[0].2.display(),
            w[0].1,
            w[1].2.display(),
            w[1].0
        );
    }
    println!(
        "recording moved from b to c: {} µs between b's stop and c's start",
        spans.windows(2).map(|w| w[1].0 - w[0].1).min().unwrap_or(0)
    );

    // The recording node killed: started on b, the recording waits for c's claim to run out
    // (c cannot say it stopped), then runs on b.
    on_c.text(json!({"type": "record", "start": true}));
    recording_on(&mut on_b, Some("c")).await;
    let t = Instant::now();
    drop(c);
    on_b.seen.clear();
    on_b.text(json!({"type": "record", "start": true}));
    let limit = RECORD_TTL + Duration::from_secs(5);
    loop {
        match on_b.recv().await {
            support::In::Text(ServerMessage::Recording {
                active: true,
                node: Some(n),
                ..
            }) if n == "b" => break,
            support::In::Text(m) => on_b.seen.push(m),
            _ => {}
        }
        assert!(t.elapsed() < limit, "b not recording after {limit:?}");
    }
    println!(
        "recording node killed: recording on another node after {:?}",
        t.elapsed()
    );
    assert!(
        on_b.seen
            .iter()
            .any(|m| matches!(m, ServerMessage::Log { entries }
            if entries.iter().any(|e| e.text.starts_with("node c does not answer")))),
        "the engineer was not told why it waits: {:?}",
        on_b.seen
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_whose_node_is_killed_is_taken_over_by_another_node() {
    let dir = tmpdir("takeover");
    let nats = Nats::start(&dir);
    let rec = |n: &str| dir.join(format!("rec-{n}"));
    let member = |n: &str| {
        let root = rec(n);
        node_with(
            &dir,
            EVENT,
            &nats,
            n,
            &["--record".as_ref(), root.as_os_str()],
        )
    };
    // Every node may record; a decides (started first) and records from its start.
    let a = member("a");
    wait_metric(&a, "boothcast_cluster_deciding{node=\"a\"} 1").await;
    let b = member("b");
    let c = member("c");
    for n in [&a, &b, &c] {
        wait_metric(n, "boothcast_cluster_nodes 3").await;
    }
    // Sound: a booth process on a, live on English, a tone in a loop.
    let tone = tone(&dir);
    let mut booth = Proc::spawn(
        Command::new(BIN)
            .args(["booth", "--headless", "--live", "--loop", "--booth", "en"])
            .args(["--server", &a.ws, "--input-file"])
            .arg(&tone)
            .env("BOOTHCAST_SECRET", "secret-en")
            .stdin(Stdio::piped())
            .stderr(Stdio::null()),
    );
    booth.wait_until("the booth live", Duration::from_secs(10), |l| {
        l.contains("\"type\":\"console\"") && l.contains("\"live\":\"plenary/en\"")
    });

    // The engineer on b, a node that does not decide, records there.
    let mut on_b = engineer(&b.ws).await;
    let mut on_c = engineer(&c.ws).await;
    on_b.text(json!({"type": "record", "start": true}));
    let dir_b = recording_on(&mut on_b, Some("b"))
        .await
        .expect("a directory");
    recording_on(&mut on_c, Some("b")).await;
    // A second and a half of sound through b.
    let mut listener = Client::listener(&b.ws, "plenary/en").await;
    for _ in 0..75 {
        listener.frame().await;
    }

    // b killed: another node records, in files of its own, within the claim's lifetime and a
    // second or two.
    let t = Instant::now();
    drop(b);
    drop(listener);
    let bound = RECORD_TTL + Duration::from_secs(3);
    on_c.seen.clear();
    let (node, dir_new, from) = loop {
        match on_c.recv().await {
            support::In::Text(ServerMessage::Recording {
                active: true,
                node: Some(n),
                dir: Some(d),
                taken_over_from,
            }) if n != "b" => break (n, d, taken_over_from),
            support::In::Text(m) => on_c.seen.push(m),
            _ => {}
        }
        assert!(
            t.elapsed() < bound,
            "no node records {bound:?} after b was killed: {:?}",
            on_c.seen
        );
    };
    let after = t.elapsed();
    println!(
        "recording node killed: node {node} records again after {after:?} (claim {RECORD_TTL:?})"
    );
    assert!(node == "a" || node == "c", "{node}");
    assert_eq!(
        from.as_deref(),
        Some("b"),
        "the recording does not say whose it took over"
    );
    assert!(
        Path::new(&dir_new).starts_with(rec(&node)),
        "{dir_new} is not under {node}'s recording directory"
    );
    on_c.wait_text("the log saying the recording was taken over", |m| match m {
        ServerMessage::Log { entries } => entries
            .iter()
            .any(|e| e.text.contains("taken over") && e.text.contains("node b"))
            .then_some(()),
        _ => None,
    })
    .await;
    // More sound, now through the new node; then a stop from c stops it.
    let mut listener = Client::listener(&c.ws, "plenary/en").await;
    for _ in 0..50 {
        listener.frame().await;
    }
    on_c.seen.clear();
    on_c.text(json!({"type": "record", "start": false}));
    recording_on(&mut on_c, None).await;
    // The stop is the cluster's: no node takes the recording over (one would within
    // TAKEOVER_GIVEN_UP_AFTER + TAKEOVER_OTHERS_AFTER and two looks of the claim).
    let quiet = Instant::now() + TAKEOVER_GIVEN_UP_AFTER + TAKEOVER_OTHERS_AFTER + RECORD_TTL / 2;
    while Instant::now() < quiet {
        if let support::In::Text(m @ ServerMessage::Recording { active: true, .. }) =
            on_c.recv().await
        {
            panic!("recording again after the stop: {m:?}");
        }
    }

    // b's files end where b was killed: cut short, but what is there plays.
    let en_b = Path::new(&dir_b).join("plenary-en.opus");
    let index_b: serde_json::Value =
        serde_json::from_slice(&std::fs::read(Path::new(&dir_b).join("index.json")).unwrap())
            .unwrap();
    assert!(
        index_b["stopped_unix_us"].is_null(),
        "b was killed, yet closed its recording"
    );
    let out = Command::new("opusinfo").arg(&en_b).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("Playback length"),
        "opusinfo on b's file:\n{text}"
    );
    assert!(!text.contains("ERROR"), "{text}");
    for line in text.lines().filter(|l| l.contains("WARNING")) {
        assert!(line.contains("EOS not set"), "{line}");
    }
    let b_seconds = ffprobe_seconds(&en_b);
    let peak = |pcm: &[f32]| pcm.iter().fold(0f32, |m, s| m.max(s.abs()));
    assert!(b_seconds > 1.0, "b's file holds {b_seconds:.3} s");
    assert!(peak(&ffmpeg_decode(&en_b)) > 0.2, "no tone in b's file");
    // The new node's files: closed properly, with the tone in English.
    let (start_new, _) = closed_session(Path::new(&dir_new));
    let en_new = Path::new(&dir_new).join("plenary-en.opus");
    assert!(
        peak(&ffmpeg_decode(&en_new)) > 0.2,
        "no tone in {node}'s file"
    );
    // Never two copies at once: the new session starts after b's file ends.
    let b_end = index_b["started_unix_us"].as_u64().unwrap() as f64 / 1e6 + b_seconds;
    let gap = start_new as f64 / 1e6 - b_end;
    println!(
        "gap in the recording: {gap:.3} s between the end of b's file and the start of {node}'s"
    );
    assert!(
        gap > 0.0,
        "{node} started recording {:.3} s before b's file ends",
        -gap
    );
    assert!(gap < bound.as_secs_f64(), "{gap:.3} s");
}

/// Log entries an engineer receives until `done` says they are enough (all of them, from its
/// connection on, kept in order).
async fn log_until(
    engineer: &mut Client,
    what: &str,
    done: impl Fn(&[LogEntry]) -> bool,
) -> Vec<LogEntry> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut all: Vec<LogEntry> = engineer
        .seen
        .iter()
        .filter_map(|m| match m {
            ServerMessage::Log { entries } => Some(entries.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    while !done(&all) {
        assert!(Instant::now() < deadline, "no {what} in the log: {all:#?}");
        if let support::In::Text(ServerMessage::Log { entries }) = engineer.recv().await {
            all.extend(entries);
        }
    }
    all
}

/// The first `health` whose senders `fit`.
async fn health_until(
    engineer: &mut Client,
    what: &str,
    fit: impl Fn(&[SenderHealth]) -> bool,
) -> Vec<SenderHealth> {
    engineer
        .wait_text(what, |m| match m {
            ServerMessage::Health { senders } if fit(senders) => Some(senders.clone()),
            _ => None,
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_s_log_and_senders_reach_the_engineer_tagged_with_their_node() {
    // A relay alone: entries and senders carry no node.
    let alone = support::TestRelay::start_with(EVENT, &|_| None).await;
    let mut e = engineer(&alone.url).await;
    let _console = Client::console(&alone.url, "en", "1").await;
    let log = log_until(&mut e, "en/1 connected", |l| {
        l.iter().any(|x| x.text == "en/1 connected")
    })
    .await;
    assert!(log.iter().all(|x| x.node.is_none()), "{log:?}");
    let senders = health_until(&mut e, "en/1 in health", |s| {
        s.iter().any(|s| s.who == "en/1")
    })
    .await;
    assert!(senders.iter().all(|s| s.node.is_none()), "{senders:?}");
    alone.stop().await;

    let dir = tmpdir("merged");
    let (_nats, a, b, c) = cluster(&dir).await;
    let mut on_c = engineer(&c.ws).await;
    let mut on_a = engineer(&a.ws).await;
    // A console on b, which does not decide: b logs its connection, a (deciding) its going
    // live; both entries are about b. A floor on c itself.
    let _floor = Client::floor(&c.ws).await;
    let mut console = Client::console(&b.ws, "en", "1").await;
    console.pump(4, 60);
    let t = Instant::now();
    console.text(json!({"type": "live"}));
    let both = |l: &[LogEntry]| {
        l.iter().any(|x| x.text == "en/1 connected")
            && l.iter().any(|x| x.text == "en/1 live on plenary/en")
            && l.iter().any(|x| x.text == "floor connected")
    };
    let log = log_until(&mut on_c, "b's console connected and live", both).await;
    println!(
        "a console command on node b in the log of an engineer on node c after {:?}",
        t.elapsed()
    );
    console
        .console_state(|s| s.live.as_deref() == Some("plenary/en"))
        .await;
    for text in ["en/1 connected", "en/1 live on plenary/en"] {
        let found: Vec<&LogEntry> = log.iter().filter(|x| x.text == text).collect();
        assert_eq!(found.len(), 1, "`{text}` not once: {log:#?}");
        assert_eq!(found[0].node.as_deref(), Some("b"), "{:?}", found[0]);
    }
    let floor = log
        .iter()
        .find(|x| x.text == "floor connected")
        .expect("the floor's connection in c's log");
    assert_eq!(floor.node.as_deref(), Some("c"));
    // The deciding node, which knows b's console too, logs it once as well.
    let log = log_until(&mut on_a, "b's console connected and live", both).await;
    assert_eq!(
        log.iter().filter(|x| x.text == "en/1 connected").count(),
        1,
        "{log:#?}"
    );
    // Health: b's console as b measures it, c's floor; each once, on every node.
    for (on, name) in [(&mut on_c, "c"), (&mut on_a, "a")] {
        let senders = health_until(on, "b's console and c's floor with frames", |s| {
            s.iter()
                .any(|s| s.who == "en/1" && s.node.as_deref() == Some("b") && s.frames > 0)
                && s.iter().any(|s| s.who == "floor")
        })
        .await;
        assert_eq!(senders.len(), 2, "on {name}: {senders:#?}");
        let floor = senders.iter().find(|s| s.who == "floor").unwrap();
        assert_eq!(floor.node.as_deref(), Some("c"), "on {name}: {floor:?}");
    }

    // b killed: its console leaves c's health within a few seconds, and the deciding node
    // logs its departure, about b.
    on_c.seen.clear();
    let t = Instant::now();
    drop(b);
    health_until(&mut on_c, "b's console gone", |s| {
        s.iter().all(|s| s.node.as_deref() != Some("b"))
    })
    .await;
    println!(
        "node b killed: its console left c's health view after {:?}",
        t.elapsed()
    );
    let log = log_until(&mut on_c, "b's console gone with b", |l| {
        l.iter()
            .any(|x| x.text == "en/1 disconnected: its relay node is gone")
    })
    .await;
    let gone = log
        .iter()
        .find(|x| x.text == "en/1 disconnected: its relay node is gone")
        .unwrap();
    assert_eq!(gone.node.as_deref(), Some("b"), "{gone:?}");
}

fn listeners_of(n: &ClusterNode, channel: &str) -> Option<u32> {
    n.listeners
        .iter()
        .find(|(c, _)| c == channel)
        .map(|(_, count)| *count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engineer_sees_every_node_its_health_and_its_listeners() {
    // A relay alone says nothing of a cluster: its engineer's first messages go from
    // `recording` (no node) to the log with no `cluster` between, and /metrics has none.
    let alone = support::TestRelay::start_with(EVENT, &|_| None).await;
    let mut e = engineer(&alone.url).await;
    e.wait_text("the log", |m| {
        matches!(m, ServerMessage::Log { .. }).then_some(())
    })
    .await;
    assert!(
        e.seen.iter().any(|m| matches!(
            m,
            ServerMessage::Recording {
                active: false,
                node: None,
                ..
            }
        )),
        "{:?}",
        e.seen
    );
    assert!(
        !e.seen
            .iter()
            .any(|m| matches!(m, ServerMessage::Cluster { .. })),
        "{:?}",
        e.seen
    );
    assert!(!alone.metrics().await.contains("boothcast_cluster_"));
    alone.stop().await;

    let dir = tmpdir("view");
    let (_nats, a, b, c) = cluster(&dir).await;
    let _on_b = [
        Client::listener(&b.ws, "plenary/en").await,
        Client::listener(&b.ws, "plenary/en").await,
    ];
    let _on_c = Client::listener(&c.ws, "plenary/fr").await;
    let mut on_c = engineer(&c.ws).await;
    let nodes = on_c
        .wait_text("the three nodes with their listeners", |m| match m {
            ServerMessage::Cluster { nodes }
                if nodes.len() == 3
                    && nodes
                        .iter()
                        .any(|n| n.node == "b" && listeners_of(n, "plenary/en") == Some(2)) =>
            {
                Some(nodes.clone())
            }
            _ => None,
        })
        .await;
    let names: Vec<&str> = nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(names, ["c", "a", "b"], "this node first, then by name");
    let (here, na, nb) = (&nodes[0], &nodes[1], &nodes[2]);
    assert!(here.here && !na.here && !nb.here);
    assert_eq!(na.health, NodeHealth::Deciding, "{na:?}");
    assert_eq!(nb.health, NodeHealth::Following, "{nb:?}");
    assert_eq!(here.health, NodeHealth::Following, "{here:?}");
    assert!(nodes.iter().all(|n| n.connected), "{nodes:?}");
    assert!(na.heard_ms < 3000 && here.heard_ms == 0, "{nodes:?}");
    assert_eq!(na.url, format!("ws://{}/", a.http));
    assert_eq!(listeners_of(here, "plenary/fr"), Some(1));
    assert_eq!(listeners_of(here, "plenary/en"), Some(0));
    assert_eq!(listeners_of(na, "plenary/en"), Some(0));
    // The sums over the cluster, in `audience` as in /metrics.
    on_c.wait_text("the cluster's audience", |m| match m {
        ServerMessage::Audience { listeners } => listeners
            .iter()
            .any(|(ch, n)| ch == "plenary/en" && *n == 2)
            .then_some(()),
        _ => None,
    })
    .await;
    let text = support::http_get(c.http, "/metrics").await;
    for line in [
        "boothcast_cluster_listeners{channel=\"plenary/en\"} 2",
        "boothcast_cluster_listeners{channel=\"plenary/fr\"} 1",
        "boothcast_cluster_node_listeners{node=\"b\",channel=\"plenary/en\"} 2",
        "boothcast_cluster_node_listeners{node=\"c\",channel=\"plenary/fr\"} 1",
        "boothcast_cluster_node_heard_seconds{node=\"c\"} 0.000",
        &format!(
            "boothcast_cluster_node_info{{node=\"a\",url=\"ws://{}/\",health=\"deciding\"}} 1",
            a.http
        ),
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }

    // A node killed: another decides, and the killed one goes silent on the console.
    let t = Instant::now();
    drop(a);
    on_c.wait_text("another node deciding", |m| match m {
        ServerMessage::Cluster { nodes } => nodes
            .iter()
            .any(|n| n.node != "a" && n.health == NodeHealth::Deciding)
            .then_some(()),
        _ => None,
    })
    .await;
    let nodes = on_c
        .wait_text("a silent", |m| match m {
            ServerMessage::Cluster { nodes }
                if nodes
                    .iter()
                    .any(|n| n.node == "a" && n.health == NodeHealth::Silent) =>
            {
                Some(nodes.clone())
            }
            _ => None,
        })
        .await;
    println!("deciding node killed: shown silent after {:?}", t.elapsed());
    let a_now = nodes.iter().find(|n| n.node == "a").unwrap();
    assert!(!a_now.connected && a_now.heard_ms > 3000, "{a_now:?}");
}

/// The password of the NATS server of the credentials test.
const NATS_PASSWORD: &str = "s3cretpw";

/// A node whose standard output and error both go to `dir/NAME.log`, started with
/// `--cluster cluster_url` and the environment `env`; killed when dropped.
struct LoggedNode {
    child: Child,
    log: PathBuf,
    http: SocketAddr,
}

impl Drop for LoggedNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LoggedNode {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts `serve` logging at debug level (the NATS client's too), all of its output into a
/// file; returns once it listens, or what it wrote and how it ended if it ended first.
fn logged_node(
    dir: &Path,
    cluster_url: &str,
    name: &str,
    env: &[(&str, &str)],
) -> Result<LoggedNode, (Option<i32>, String)> {
    let config = dir.join(format!("event-{name}.toml"));
    std::fs::write(&config, EVENT).unwrap();
    let log = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .args(["--cluster", cluster_url, "--node", name])
        .env("RUST_LOG", "info,boothcast=debug,async_nats=debug")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let mut node = LoggedNode {
        child,
        log,
        http: "127.0.0.1:0".parse().unwrap(),
    };
    const LISTENING: &str = "listening on http://";
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = node.output();
        if let Some(i) = out.find(LISTENING) {
            // The relay listens before it joins: wait for the join to succeed or fail.
            if out.contains(&format!("node {name} joined the cluster")) {
                let rest = &out[i + LISTENING.len()..];
                node.http = rest.split_whitespace().next().unwrap().parse().unwrap();
                return Ok(node);
            }
        }
        if let Some(status) = node.child.try_wait().unwrap() {
            return Err((status.code(), node.output()));
        }
        assert!(
            Instant::now() < deadline,
            "node {name} neither joined nor ended within 20 s:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// NATS credentials in the URL or in the environment are used; a wrong password is refused
/// with NATS's reason; no output, metric or engineer's message ever shows the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_credentials_are_used_and_never_shown() {
    let dir = tmpdir("nats-auth");
    let nats = Nats::start_with(&dir, &["--user", "bc", "--pass", NATS_PASSWORD]);
    let with_creds = format!("nats://bc:{NATS_PASSWORD}@127.0.0.1:{}", nats.port);
    let a = logged_node(&dir, &with_creds, "a", &[]).unwrap_or_else(|(code, out)| {
        panic!("node a with the credentials in its URL did not join ({code:?}):\n{out}")
    });
    let b = logged_node(
        &dir,
        &nats.url(),
        "b",
        &[
            ("BOOTHCAST_NATS_USER", "bc"),
            ("BOOTHCAST_NATS_PASSWORD", NATS_PASSWORD),
        ],
    )
    .unwrap_or_else(|(code, out)| {
        panic!("node b with the credentials in the environment did not join ({code:?}):\n{out}")
    });
    for n in [&a, &b] {
        wait_metric_at(n.http, "boothcast_cluster_nodes 2").await;
    }
    // The engineer's view of the cluster and every metric: no password.
    let mut eng = engineer(&format!("ws://{}/ws", a.http)).await;
    let nodes = eng
        .wait_text("the cluster's two nodes", |m| match m {
            ServerMessage::Cluster { nodes } if nodes.len() == 2 => Some(format!("{m:?}")),
            _ => None,
        })
        .await;
    assert!(!nodes.contains(NATS_PASSWORD), "{nodes}");
    for n in [&a, &b] {
        let metrics = support::http_get(n.http, "/metrics").await;
        assert!(!metrics.contains(NATS_PASSWORD), "{metrics}");
    }

    // A wrong password: refused, saying why and where, without the password.
    let wrong = "wr0ng-passw0rd";
    let url = format!("nats://bc:{wrong}@127.0.0.1:{}", nats.port);
    let Err((code, out)) = logged_node(&dir, &url, "c", &[]) else {
        panic!("node c joined with a wrong password");
    };
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.to_lowercase().contains("authorization violation")
            && out.contains(&format!("nats://***@127.0.0.1:{}", nats.port)),
        "{out}"
    );
    assert!(!out.contains(wrong), "the password in the output:\n{out}");
    // URLs carrying different credentials: refused before anything is tried.
    let two = format!("{with_creds},nats://bc:{wrong}@127.0.0.1:{}", nats.port);
    let Err((code, out)) = logged_node(&dir, &two, "d", &[]) else {
        panic!("node d joined with two different credentials");
    };
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("do not all carry the same credentials"),
        "{out}"
    );
    assert!(
        !out.contains(wrong) && !out.contains(NATS_PASSWORD),
        "a password in the output:\n{out}"
    );

    // The joined nodes' own output, at debug level, after all that.
    let out = a.output();
    assert!(
        out.contains("joined the cluster")
            && out.contains(&format!("nats://***@127.0.0.1:{}", nats.port)),
        "{out}"
    );
    for (name, n) in [("a", &a), ("b", &b)] {
        let out = n.output();
        assert!(
            !out.contains(NATS_PASSWORD),
            "node {name} printed the password:\n{out}"
        );
    }
}

/// An engineer on a node where no one hears a channel still sees its level meter move (the
/// node takes every channel while an engineer is connected), and the node stops taking it
/// once the engineer leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engineer_sees_the_level_of_a_channel_no_one_hears_on_its_node() {
    let dir = tmpdir("levels");
    let (_nats, _a, b, c) = cluster(&dir).await;
    // The booth on b (which does not decide), no listener anywhere.
    let mut console = Client::console(&b.ws, "en", "1").await;
    console.console_state(|s| s.live.is_none()).await;
    live(&mut console).await;
    console.pump(7, 60);
    let mut eng = engineer(&c.ws).await;
    let level = eng
        .wait_text("a level of English that is not silence", |m| match m {
            ServerMessage::Levels { levels } => levels
                .iter()
                .find(|(ch, rms, _)| ch == "plenary/en" && *rms < 127)
                .map(|(_, rms, peak)| (*rms, *peak)),
            _ => None,
        })
        .await;
    // The levels the test console puts in its frames' headers.
    assert_eq!(level, (30, 12));
    // The engineer on b too, where the booth is.
    let mut on_b = engineer(&b.ws).await;
    on_b.wait_text("English's level on node b", |m| match m {
        ServerMessage::Levels { levels } => levels
            .iter()
            .any(|(ch, rms, _)| ch == "plenary/en" && *rms < 127)
            .then_some(()),
        _ => None,
    })
    .await;
    // The engineer leaves c: frames stop crossing to c.
    eng.close();
    drop(eng);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut before = metric(&c, "boothcast_cluster_received_frames_total").await;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = metric(&c, "boothcast_cluster_received_frames_total").await;
        if now == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node c still receives English 5 s after its engineer left ({now} frames)"
        );
        before = now;
    }
}
