//! End to end with real speech and the real binary: espeak-ng speech goes into a booth (or the
//! floor), through the relay, out of a listener into a WAV file, and must match what was said.

use boothcast::audio::{self, align, SAMPLE_RATE};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_boothcast");

/// A child process killed when the test ends, whatever happens.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Waits for the process to exit by itself; returns its standard output lines.
    fn finish(mut self, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                let mut out = String::new();
                use std::io::Read;
                self.0
                    .stdout
                    .take()
                    .unwrap()
                    .read_to_string(&mut out)
                    .unwrap();
                assert!(
                    status.success(),
                    "process failed ({status}); output:\n{out}"
                );
                return out.lines().map(str::to_string).collect();
            }
            assert!(
                Instant::now() < deadline,
                "process still running after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn tmpdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("boothcast-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

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
    std::fs::write(&config, EVENT).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next().expect("serve printed its address").unwrap();
        if let Some(i) = line.find("listening on http://") {
            break line[i + "listening on http://".len()..].trim().to_string();
        }
    };
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (Proc(child), format!("ws://{addr}"))
}

const EVENT: &str = r#"
[event]
name = "Speech test"
[secrets]
floor = "floor-secret"
[[rooms]]
id = "plenary"
[[rooms.channels]]
lang = "en"
name = "English"
native = "English"
[[rooms.channels]]
lang = "ar"
name = "Arabic"
native = "العربية"
[[rooms.booths]]
id = "en"
languages = ["en"]
secret = "secret-en"
"#;

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

#[test]
fn speech_into_a_booth_reaches_the_listener_of_its_channel() {
    let dir = tmpdir("booth");
    let said = dir.join("said.wav");
    speak(
        "Good morning, distinguished delegates. The forum is now in session. \
         We begin with the report of the working group on border security.",
        "en",
        &said,
    );
    let heard = dir.join("heard.wav");
    let (_relay, url) = serve(&dir);
    let listener = Proc(
        Command::new(BIN)
            .args([
                "listen",
                "--server",
                &url,
                "--lang",
                "en",
                "--seconds",
                "12",
                "--output-file",
            ])
            .arg(&heard)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let booth = Proc(
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
            .arg(&said)
            .env("BOOTHCAST_SECRET", "secret-en")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let booth_out = booth.finish(Duration::from_secs(30));
    let listener_out = listener.finish(Duration::from_secs(30));
    let (correlation, delay_ms) = compare(&said, &heard, &booth_out, &listener_out);
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
    let dir = tmpdir("floor");
    let said = dir.join("floor.wav");
    speak(
        "Добрый день, уважаемые делегаты. Заседание форума объявляется открытым.",
        "ru",
        &said,
    );
    let heard = dir.join("heard.wav");
    let (_relay, url) = serve(&dir);
    let listener = Proc(
        Command::new(BIN)
            .args([
                "listen",
                "--server",
                &url,
                "--lang",
                "plenary/ar",
                "--seconds",
                "9",
                "--output-file",
            ])
            .arg(&heard)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let floor = Proc(
        Command::new(BIN)
            .args([
                "floor",
                "--server",
                &url,
                "--secret",
                "floor-secret",
                "--input-file",
            ])
            .arg(&said)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let floor_out = floor.finish(Duration::from_secs(30));
    let listener_out = listener.finish(Duration::from_secs(30));
    let (correlation, delay_ms) = compare(&said, &heard, &floor_out, &listener_out);
    println!("floor -> relay -> Arabic listener (auto-floor): correlation {correlation:.3}, delay {delay_ms:.1} ms");
    assert!(
        correlation >= 0.9,
        "the Arabic channel did not carry the floor: {correlation:.3}"
    );
}
