//! Recordings of every channel: real speech through the relay into Ogg Opus files, checked with
//! opusinfo, ffprobe and ffmpeg; and what a kill -9 leaves behind.

mod proc;
mod support;

use boothcast::audio::{self, align};
use proc::{tmpdir, Proc};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_boothcast");

fn speak(text: &str, path: &Path) {
    let ok = Command::new("espeak-ng")
        .args(["-v", "en", "-w"])
        .arg(path)
        .arg(text)
        .status()
        .unwrap();
    assert!(ok.success());
}

fn booth(url: &str, wav: &Path) -> std::process::Child {
    Command::new(BIN)
        .args([
            "booth",
            "--server",
            url,
            "--booth",
            "en",
            "--live",
            "--input-file",
        ])
        .arg(wav)
        .env("BOOTHCAST_SECRET", "secret-en")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait(mut child: std::process::Child, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            assert!(s.success());
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process still running after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_keeps_every_channel_aligned_and_matches_what_was_said() {
    let dir = tmpdir("speech");
    let said = dir.join("said.wav");
    speak(
        "Distinguished delegates, the working group has finished its report on border security.",
        &said,
    );
    let relay = TestRelay::start().await;
    let started = Instant::now();
    let recording = boothcast::record::start(relay.relay.clone(), &dir).unwrap();
    // Half a second with nothing on the channels before the speech and after it: the
    // recording must keep that silence in place (checked below), not close the gap.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let url = relay.url.clone();
    let said2 = said.clone();
    tokio::task::spawn_blocking(move || wait(booth(&url, &said2), Duration::from_secs(30)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let summary = recording.stop().await.unwrap();
    let truth = started.elapsed().as_secs_f64();
    let metrics = relay.metrics().await;
    relay.stop().await;

    let en = summary.dir.join("plenary-en.opus");
    let floor = summary.dir.join("plenary-floor.opus");
    assert!(
        summary.files.contains(&en) && summary.files.contains(&floor),
        "{:?}",
        summary.files
    );
    for file in &summary.files {
        let seconds = ffprobe_seconds(file);
        println!("{}: {seconds:.3} s (session {truth:.3} s)", file.display());
        assert!(
            (seconds - truth).abs() < 0.1,
            "{} lasts {seconds:.3} s, the session {truth:.3} s",
            file.display()
        );
        let out = Command::new("opusinfo").arg(file).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !text.contains("WARNING") && !text.contains("ERROR"),
            "opusinfo on {}:\n{text}",
            file.display()
        );
    }
    let reference = audio::read_wav(&said).unwrap();
    let recorded = ffmpeg_decode(&en);
    let a = align(
        &reference,
        &recorded,
        recorded.len().saturating_sub(reference.len()),
    );
    println!(
        "recording of en: correlation {:.3}, speech starts at {:.3} s",
        a.correlation,
        a.lag as f64 / 48_000.0
    );
    assert!(
        a.correlation >= 0.9,
        "the recording does not match what was said: {:.3}",
        a.correlation
    );
    assert!(
        a.lag as f64 / 48_000.0 > 0.4,
        "the silence before the speech was not kept"
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(summary.dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["channels"].as_array().unwrap().len(), 6);
    let log = index["log"].as_array().unwrap();
    assert!(
        log.iter().any(|e| e["channels"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == "plenary/en" && c["carrying"] == "interpreter")),
        "the log shows en going live"
    );
    assert!(metric(&metrics, "boothcast_recording_bytes_total") > 10_000);
    assert_eq!(metric(&metrics, "boothcast_recording_lost_total"), 0);
}

#[test]
fn a_relay_killed_mid_recording_leaves_playable_files() {
    let dir = tmpdir("kill");
    let said = dir.join("said.wav");
    speak(
        "The session is suspended for ten minutes. Please remain in the hall.",
        &said,
    );
    let config = dir.join("event.toml");
    std::fs::write(&config, EVENT).unwrap();
    let rec = dir.join("rec");
    let (relay, url) = Proc::relay(
        Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--record")
            .arg(&rec)
            .stderr(Stdio::null()),
        Duration::from_secs(10),
    );
    let booth = booth(&url, &said);
    // Five seconds of recording, then the kill.
    std::thread::sleep(Duration::from_secs(5));
    drop(relay); // SIGKILL: no chance to finish the files
    let mut booth = booth;
    let _ = booth.kill();
    let _ = booth.wait();

    let session = std::fs::read_dir(&rec)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let en = session.join("plenary-en.opus");
    let seconds = ffprobe_seconds(&en);
    println!(
        "after kill -9 at 5 s: {} plays {seconds:.3} s",
        en.display()
    );
    assert!(
        seconds > 2.0 && seconds < 5.5,
        "{seconds:.3} s survived of 5 s"
    );
    let decoded = ffmpeg_decode(&en);
    assert!(decoded.len() as f64 / 48_000.0 > 2.0);
    let peak = decoded.iter().fold(0f32, |m, s| m.max(s.abs()));
    assert!(peak > 0.05, "the speech is in the file");
    let out = Command::new("opusinfo").arg(&en).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("Playback length"),
        "opusinfo reads the packets:\n{text}"
    );
    assert!(!text.contains("ERROR"), "{text}");
    // The only complaint allowed: the stream never got its end-of-stream page.
    for line in text.lines().filter(|l| l.contains("WARNING")) {
        assert!(line.contains("EOS not set"), "{line}");
    }
    // Every other channel carried nothing (no floor, no other booth): its file opens too, its
    // silence written every half second (up to 3 s before now, the last page held back), not
    // only at the stop.
    let mut files = 0;
    for entry in std::fs::read_dir(&session).unwrap() {
        let file = entry.unwrap().path();
        if file.extension().is_some_and(|e| e == "opus") && file != en {
            let s = ffprobe_seconds(&file);
            println!("after kill -9 at 5 s: {} plays {s:.3} s", file.display());
            assert!(
                (0.4..5.5).contains(&s),
                "{}: {s:.3} s of 5 s",
                file.display()
            );
            files += 1;
        }
    }
    assert!(files >= 2, "{files} silent channels' files in the session");
}

#[tokio::test]
async fn the_engineer_sees_levels_and_starts_and_stops_recording() {
    use boothcast::protocol::ServerMessage;
    use serde_json::json;
    let dir = tmpdir("engineer");
    let options = boothcast::server::Options {
        record_dir: Some(dir.clone()),
        ..Default::default()
    };
    let relay = TestRelay::start_opts(EVENT, &|_| None, options).await;
    let mut engineer = Client::connect(
        &relay.url,
        json!({"type": "hello", "role": "engineer", "secret": "engineer-secret"}),
    )
    .await;
    engineer.welcome().await;
    let active = engineer
        .wait_text("recording state", |m| match m {
            ServerMessage::Recording { active, .. } => Some(*active),
            _ => None,
        })
        .await;
    assert!(!active);

    // The booth's own levels (RMS 30, peak 12 dBFS below full scale) reach the meters.
    let booth = Client::console(&relay.url, "en", "1").await;
    booth.pump(b'E', 80);
    booth.text(json!({"type": "live"}));
    engineer
        .wait_text("en levels", |m| match m {
            ServerMessage::Levels { levels } => levels
                .iter()
                .find(|(c, r, p)| c == "plenary/en" && *r == 30 && *p == 12)
                .map(|_| ()),
            _ => None,
        })
        .await;

    // Only the engineer may record.
    let listener = Client::listener(&relay.url, "en").await;
    let mut listener = listener;
    listener.text(json!({"type": "record", "start": true}));
    assert_eq!(
        listener.error().await.1,
        "recording is for the sound engineer"
    );

    engineer.text(json!({"type": "record", "start": true}));
    let session = engineer
        .wait_text("recording started", |m| match m {
            ServerMessage::Recording {
                active: true, dir, ..
            } => dir.clone(),
            _ => None,
        })
        .await;
    let started = std::time::Instant::now();
    // A second of audio, counted by frames reaching the listener.
    for _ in 0..50 {
        listener.frame().await;
    }
    engineer.text(json!({"type": "record", "start": false}));
    engineer
        .wait_text("recording stopped", |m| {
            matches!(m, ServerMessage::Recording { active: false, .. }).then_some(())
        })
        .await;
    let recorded = started.elapsed().as_secs_f64();
    let seconds = ffprobe_seconds(&Path::new(&session).join("plenary-en.opus"));
    assert!(
        (seconds - recorded).abs() < 0.2,
        "{seconds:.3} s recorded of {recorded:.3} s"
    );

    // When the booth stops sending, its meter falls to silence.
    booth.stop_pump();
    engineer
        .wait_text("en silent", |m| match m {
            ServerMessage::Levels { levels } => levels
                .iter()
                .find(|(c, r, _)| c == "plenary/en" && *r == 127)
                .map(|_| ()),
            _ => None,
        })
        .await;
    relay.stop().await;

    // Without a recording directory the engineer is told how to set one up.
    let relay = TestRelay::start().await;
    let mut engineer = Client::connect(
        &relay.url,
        json!({"type": "hello", "role": "engineer", "secret": "engineer-secret"}),
    )
    .await;
    engineer.text(json!({"type": "record", "start": true}));
    assert_eq!(
        engineer.error().await.1,
        "recording is not set up: start the relay with --record DIR"
    );
    relay.stop().await;
}

/// Sends `signal` to process `pid`.
fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) with a child's process id.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, signal) }, 0);
}

/// Where the clicks of a click track start, in seconds (a click: the first sample above 0.1
/// after half a second of quiet).
fn clicks(pcm: &[f32]) -> Vec<f64> {
    let mut out = Vec::new();
    let mut loud_at: Option<usize> = None;
    for (i, s) in pcm.iter().enumerate() {
        if s.abs() > 0.1 {
            if loud_at.is_none_or(|l| i - l >= 24_000) {
                out.push(i as f64 / 48_000.0);
            }
            loud_at = Some(i);
        }
    }
    out
}

/// The spread (max - min) of the clicks' phases within their 1 s period, in ms, taken
/// circularly around the first.
fn phase_spread(clicks: &[f64], reference: f64) -> f64 {
    let phases: Vec<f64> = clicks
        .iter()
        .map(|c| {
            let d = (c - reference).rem_euclid(1.0);
            if d > 0.5 {
                d - 1.0
            } else {
                d
            }
        })
        .collect();
    let base = phases[0];
    let rel: Vec<f64> = phases
        .iter()
        .map(|p| {
            let d = (p - base + 0.5).rem_euclid(1.0) - 0.5;
            d * 1000.0
        })
        .collect();
    let max = rel.iter().cloned().fold(f64::MIN, f64::max);
    let min = rel.iter().cloned().fold(f64::MAX, f64::min);
    max - min
}

#[test]
fn a_booth_frozen_then_bursting_stays_aligned_with_the_floor_in_the_recording() {
    let dir = tmpdir("frozen");
    // The floor and the booth each play a click a second.
    let track = dir.join("clicks.wav");
    let ok = Command::new("sox")
        .args(["-n", "-r", "48000"])
        .arg(&track)
        .args([
            "synth", "0.01", "sine", "1000", "vol", "0.5", "pad", "0", "0.99",
        ])
        .args(["repeat", "11"])
        .status()
        .unwrap();
    assert!(ok.success());
    let config = dir.join("event.toml");
    std::fs::write(&config, proc::EVENT).unwrap();
    let rec = dir.join("rec");
    let (relay, url) = Proc::relay(
        Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--record")
            .arg(&rec)
            .stderr(Stdio::null()),
        Duration::from_secs(10),
    );
    let floor = Proc::floor(&url, &track);
    let mut booth = Proc::spawn(
        Command::new(BIN)
            .args([
                "booth",
                "--server",
                &url,
                "--booth",
                "en",
                "--live",
                "--input-file",
            ])
            .arg(&track)
            .env("BOOTHCAST_SECRET", "secret-en")
            .stdin(Stdio::null())
            .stderr(Stdio::null()),
    );
    booth.wait_for("\"live\":\"plenary/en\"", Duration::from_secs(10));
    // Four seconds in, the booth's process is frozen for half a second; when it goes on, it
    // sends what it owes at once.
    std::thread::sleep(Duration::from_secs(4));
    signal(booth.id(), libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(500));
    signal(booth.id(), libc::SIGCONT);
    booth.finish(Duration::from_secs(30));
    floor.finish(Duration::from_secs(30));
    signal(relay.id(), libc::SIGINT);
    drop(relay);

    let session = std::fs::read_dir(&rec)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let floor_clicks = clicks(&ffmpeg_decode(&session.join("plenary-floor.opus")));
    // The English channel carried the floor (auto-floor) until the booth went live, within
    // its first half second: the booth's clicks are those after it.
    let en_clicks: Vec<f64> = clicks(&ffmpeg_decode(&session.join("plenary-en.opus")))
        .into_iter()
        .filter(|t| *t > 0.5)
        .collect();
    println!("floor clicks at {floor_clicks:.3?}\nen clicks at {en_clicks:.3?}");
    assert_eq!(
        floor_clicks.len(),
        12,
        "every click of the floor is in its file"
    );
    assert_eq!(en_clicks.len(), 11, "every click of the booth after it");
    let floor_spread = phase_spread(&floor_clicks, floor_clicks[0]);
    let en_spread = phase_spread(&en_clicks, floor_clicks[0]);
    println!(
        "recording: the floor's clicks within {floor_spread:.1} ms of their period, the booth's (frozen 0.5 s at 4 s) within {en_spread:.1} ms relative to the floor"
    );
    assert!(
        floor_spread <= 20.0,
        "the floor's file: {floor_spread:.1} ms"
    );
    assert!(
        en_spread <= 20.0,
        "the booth's file drifted {en_spread:.1} ms against the floor's"
    );
}
