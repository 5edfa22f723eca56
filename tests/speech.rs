//! End to end with real speech and the real binary: espeak-ng speech goes into a booth (or the
//! floor), through the relay, out of a listener into a WAV file, and must match what was said.

mod proc;

use boothcast::audio::{self, align, SAMPLE_RATE};
use proc::{tmpdir, Proc};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_boothcast");

fn speak(text: &str, voice: &str, path: &Path) {
    let status = Command::new("espeak-ng")
        .args(["-v", voice, "-w"])
        .arg(path)
        .arg(text)
        .status()
        .expect("espeak-ng is installed (scripts/test.sh installs it)");
    assert!(status.success());
}

/// Starts `boothcast serve` on an ephemeral port; returns it and its address.
fn serve(dir: &Path) -> (Proc, String) {
    let config = dir.join("event.toml");
    std::fs::write(&config, proc::EVENT).unwrap();
    Proc::relay(
        Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .stderr(Stdio::null()),
        Duration::from_secs(10),
    )
}

fn json_lines(lines: &[String], kind: &str) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == kind)
        .collect()
}

/// Compares what was said with what the listener wrote; returns (correlation, delay in ms
/// from the sender's capture to the listener's output).
fn compare(
    said: &Path,
    heard: &Path,
    sender_out: &[String],
    listener_out: &[String],
) -> (f64, f64) {
    let reference = audio::read_wav(said).unwrap();
    let recorded = audio::read_wav(heard).unwrap();
    let capture_start = json_lines(sender_out, "started")[0]["capture_start_us"]
        .as_u64()
        .unwrap();
    let listen_start = json_lines(listener_out, "started")[0]["start_us"]
        .as_u64()
        .unwrap();
    let summary = &json_lines(listener_out, "summary")[0]["summary"];
    println!("listener summary: {summary}");
    let a = align(
        &reference,
        &recorded,
        recorded.len().saturating_sub(reference.len()),
    );
    let heard_at_us = listen_start as f64 + a.lag as f64 * 1e6 / SAMPLE_RATE as f64;
    let delay_ms = (heard_at_us - capture_start as f64) / 1000.0;
    (a.correlation, delay_ms)
}

/// Starts a relay and a listener of `lang`; once the listener is subscribed, runs the sender
/// (`sender` arguments plus `--input-file said`) to its end, and compares what the listener
/// wrote with what was said: (correlation, delay in ms).
fn through_the_relay(
    name: &str,
    said: &Path,
    lang: &str,
    seconds: &str,
    sender: &[&str],
) -> (f64, f64) {
    let dir = tmpdir(name);
    let heard = dir.join("heard.wav");
    let (_relay, url) = serve(&dir);
    let mut listener = Proc::spawn(
        Command::new(BIN)
            .args([
                "listen",
                "--server",
                &url,
                "--lang",
                lang,
                "--seconds",
                seconds,
                "--output-file",
            ])
            .arg(&heard),
    );
    listener.wait_for("\"type\":\"subscribed\"", Duration::from_secs(10));
    let sender = Proc::spawn(
        Command::new(BIN)
            .args(sender)
            .args(["--server", &url, "--input-file"])
            .arg(said)
            .stdin(Stdio::null()),
    );
    let sender_out = sender.finish(Duration::from_secs(30));
    let listener_out = listener.finish(Duration::from_secs(30));
    compare(said, &heard, &sender_out, &listener_out)
}

#[test]
fn speech_into_a_booth_reaches_the_listener_of_its_channel() {
    let said = tmpdir("booth-said").join("said.wav");
    speak(
        "Good morning, distinguished delegates. The forum is now in session. \
         We begin with the report of the working group on border security.",
        "en",
        &said,
    );
    let booth = ["booth", "--booth", "en", "--live", "--secret", "secret-en"];
    let (correlation, delay_ms) = through_the_relay("booth", &said, "en", "12", &booth);
    println!("booth -> relay -> listener: correlation {correlation:.3}, delay from booth input to listener output {delay_ms:.1} ms");
    assert!(
        correlation >= 0.9,
        "what the listener heard does not match what was said: {correlation:.3}"
    );
    assert!(
        delay_ms > 0.0,
        "heard before it was said: the timing is wrong ({delay_ms:.1} ms)"
    );
}

#[test]
fn the_floor_reaches_a_channel_with_no_interpreter() {
    let said = tmpdir("floor-said").join("floor.wav");
    speak(
        "Добрый день, уважаемые делегаты. Заседание форума объявляется открытым.",
        "ru",
        &said,
    );
    let floor = ["floor", "--secret", "floor-secret"];
    let (correlation, delay_ms) = through_the_relay("floor", &said, "plenary/ar", "9", &floor);
    println!("floor -> relay -> Arabic listener (auto-floor): correlation {correlation:.3}, delay {delay_ms:.1} ms");
    assert!(
        correlation >= 0.9,
        "the Arabic channel did not carry the floor: {correlation:.3}"
    );
}
