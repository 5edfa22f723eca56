//! A child process of a test (the relay, a booth, a listener), killed when the test ends
//! whatever happens, whose standard output lines are collected as they come.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The event the process tests serve: the floor, English and Arabic, booth `en`.
pub const EVENT: &str = r#"
[event]
name = "Process test"
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

/// A new empty directory for a test's files, `boothcast-NAME-PID` in the system's temporary
/// directory (each test runs in a process of its own).
pub fn tmpdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("boothcast-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Two seconds of a 440 Hz tone at half scale in `dir/tone.wav`, made by sox: a whole number of
/// periods, so it loops without a click.
pub fn tone(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("tone.wav");
    let status = Command::new("sox")
        .args(["-n", "-r", "48000", "-c", "1", "-b", "16"])
        .arg(&path)
        .args(["synth", "2", "sine", "440", "vol", "0.5"])
        .status()
        .expect("sox is installed (scripts/test.sh installs it)");
    assert!(status.success());
    path
}

pub struct Proc {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Starts a relay, `cmd` being `boothcast serve --listen 127.0.0.1:0 ...`, and returns it with
    /// the WebSocket address it printed (`ws://HOST:PORT`).
    pub fn relay(cmd: &mut Command, limit: Duration) -> (Proc, String) {
        const LISTENING: &str = "listening on http://";
        let mut relay = Proc::spawn(cmd);
        let line = relay.wait_for(LISTENING, limit);
        let rest = &line[line.find(LISTENING).unwrap() + LISTENING.len()..];
        let addr = rest.split_whitespace().next().unwrap().to_string();
        (relay, format!("ws://{addr}"))
    }

    /// Starts `boothcast floor` sending `file` to the relay at `url` with the floor secret of
    /// [`EVENT`], and waits for its welcome.
    pub fn floor(url: &str, file: &std::path::Path) -> Proc {
        let mut floor = Proc::spawn(
            Command::new(env!("CARGO_BIN_EXE_boothcast"))
                .args(["floor", "--server", url, "--secret", "floor-secret"])
                .arg("--input-file")
                .arg(file)
                .stdin(Stdio::null())
                .stderr(Stdio::null()),
        );
        floor.wait_for("\"type\":\"welcome\"", Duration::from_secs(10));
        floor
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Writes a line to the child's standard input (spawned with `Stdio::piped()`).
    pub fn send(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("stdin is piped");
        writeln!(stdin, "{line}").expect("the child reads its standard input");
        stdin.flush().unwrap();
    }

    /// Waits for a standard output line that `fits`, unless one came already.
    pub fn wait_until(
        &mut self,
        what: &str,
        limit: Duration,
        fits: impl Fn(&str) -> bool,
    ) -> String {
        if let Some(line) = self.seen.iter().find(|l| fits(l)) {
            return line.clone();
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if fits(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("no {what} within {limit:?}; output: {:#?}", self.seen),
            }
        }
    }

    /// Waits for an output line containing `text`, and returns it.
    pub fn wait_for(&mut self, text: &str, limit: Duration) -> String {
        self.wait_until(&format!("`{text}`"), limit, |l| l.contains(text))
    }

    /// The last JSON line that came of the type `kind` (`null` if none).
    pub fn last(&mut self, kind: &str) -> Value {
        self.seen.extend(self.lines.try_iter());
        self.seen
            .iter()
            .rev()
            .map(|l| serde_json::from_str::<Value>(l).unwrap_or(Value::Null))
            .find(|v| v["type"] == kind)
            .unwrap_or(Value::Null)
    }

    /// Waits for the process to exit by itself; returns all its standard output lines.
    pub fn finish(mut self, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut out = std::mem::take(&mut self.seen);
                out.extend(self.lines.iter());
                assert!(
                    status.success(),
                    "process failed ({status}); output:\n{out:#?}"
                );
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "process still running after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
