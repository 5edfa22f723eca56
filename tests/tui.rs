//! The interpreter's console on a terminal, as an interpreter meets it: two consoles of one
//! booth run in tmux against a real relay, driven by keys (`send-keys`) and checked by reading
//! their screens (`capture-pane`). Every check waits for the screen to show it, with a timeout.

mod support;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_boothcast");
/// How long a screen may take to show what is expected.
const SCREEN_WAIT: Duration = Duration::from_secs(10);

/// A child process killed when the test ends, however it ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A private tmux server (its own socket) holding the consoles; killed when dropped.
struct Tmux {
    socket: String,
    conf: PathBuf,
}

impl Tmux {
    fn new(dir: &Path) -> Tmux {
        let conf = dir.join("tmux.conf");
        // A console that exits keeps its last screen, so a failure can be read.
        std::fs::write(&conf, "set -g remain-on-exit on\n").unwrap();
        Tmux {
            socket: format!("boothcast-tui-{}", std::process::id()),
            conf,
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-L").arg(&self.socket).arg("-f").arg(&self.conf);
        c
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self
            .cmd()
            .args(args)
            .output()
            .expect("tmux runs (scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A 100×30 terminal running `command` with `env`; once the command exits, its status is
    /// written to `status` (tmux may lose a dead pane's last output and exit status).
    fn start(&self, session: &str, env: &[(&str, &str)], status: &Path, command: &[&str]) {
        let mut args = vec!["new-session", "-d", "-s", session, "-x", "100", "-y", "30"];
        let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for e in &env {
            args.extend(["-e", e.as_str()]);
        }
        let script = format!(r#""$0" "$@"; echo $? > '{}'"#, status.display());
        args.extend(["--", "sh", "-c", &script]);
        args.extend(command);
        self.run(&args);
    }

    fn keys(&self, session: &str, keys: &str) {
        self.run(&["send-keys", "-t", session, "-l", keys]);
    }

    fn screen(&self, session: &str) -> String {
        self.run(&["capture-pane", "-p", "-t", session])
    }

    /// Waits until the screen satisfies `f`; returns it.
    fn wait(&self, session: &str, what: &str, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + SCREEN_WAIT;
        loop {
            let screen = self.screen(session);
            if f(&screen) {
                return screen;
            }
            if Instant::now() > deadline {
                panic!("console {session} did not show {what} within {SCREEN_WAIT:?}; its screen:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_for(&self, session: &str, text: &str) -> String {
        self.wait(session, &format!("`{text}`"), |s| s.contains(text))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").stderr(Stdio::null()).status();
    }
}

/// One second of a 440 Hz tone at 0.3 of full scale (peaks at -10 dBFS).
fn tone(path: &Path) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 48_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..48_000 {
        let t = i as f32 / 48_000.0;
        let s = 0.3 * (2.0 * std::f32::consts::PI * 440.0 * t).sin();
        w.write_sample((s * i16::MAX as f32) as i16).unwrap();
    }
    w.finalize().unwrap();
}

/// The relay on `listen` (a loopback address), serving the test event; returns it and its
/// address.
fn relay(dir: &Path, listen: &str) -> (Proc, String) {
    let config = dir.join("event.toml");
    std::fs::write(&config, support::EVENT).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", listen, "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let proc = Proc(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Read to the end so the relay never blocks on a full pipe.
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(i) = line.find("http://") {
                let _ = tx.send(line[i + 7..].trim().to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(SCREEN_WAIT)
        .expect("the relay says where it listens");
    (proc, addr)
}

#[test]
fn two_consoles_go_live_cough_mute_and_hand_over_on_screen() {
    let dir = std::env::temp_dir().join(format!("boothcast-tui-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wav = dir.join("tone.wav");
    tone(&wav);
    let wav = wav.to_str().unwrap();
    let (relay_proc, addr) = relay(&dir, "127.0.0.1:0");
    let server = format!("ws://{addr}");
    let _floor = Proc(
        Command::new(BIN)
            .args(["floor", "--loop", "--server", &server, "--input-file", wav])
            .env("BOOTHCAST_SECRET", "floor-secret")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // One delegate on English, for the audience count.
    let listened = dir.join("listener.wav");
    let _listener = Proc(
        Command::new(BIN)
            .args([
                "listen",
                "--server",
                &server,
                "--lang",
                "en",
                "--output-file",
            ])
            .arg(&listened)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let tmux = Tmux::new(&dir);
    let status = |console: &str| dir.join(format!("console-{console}.status"));
    for console in ["1", "2"] {
        tmux.start(
            console,
            &[("BOOTHCAST_SECRET", "secret-en")],
            &status(console),
            &[
                BIN,
                "booth",
                "--server",
                &server,
                "--booth",
                "en",
                "--console",
                console,
                "--input-file",
                wav,
                "--loop",
            ],
        );
    }

    // Both consoles connect muted, hearing the floor; one delegate listens to English.
    for console in ["1", "2"] {
        tmux.wait(console, "a measured round-trip time", |s| {
            s.lines()
                .next()
                .is_some_and(|top| top.contains("● connected · rtt ") && top.ends_with(" ms"))
        });
        tmux.wait_for(console, "MUTED: not on air");
        tmux.wait_for(console, "l goes live on plenary/en (1 listener)");
    }
    let screen = tmux.wait_for("1", "l live  m mute  c cough");
    assert!(screen.contains("h hand over  a accept"), "{screen}");
    // The floor's tone is heard and the own microphone measured: a sine peaking at -10 dBFS
    // (its RMS, 3 dB lower, moves by a dB from frame to frame).
    let line =
        |s: &str, name: &str, text: &str| s.lines().any(|l| l.contains(name) && l.contains(text));
    tmux.wait("1", "the floor's level", |s| {
        line(s, "Hearing", "peak -10 dB") && line(s, "Hearing", "· plenary/floor")
    });
    tmux.wait("1", "the microphone's level", |s| {
        line(s, "Microphone", "peak -10 dB")
    });

    // Live.
    tmux.keys("1", "l");
    tmux.wait_for("1", "LIVE on plenary/en (English)");
    tmux.wait_for("1", "1 listener · from the floor");
    tmux.wait_for("2", "plenary/en English: live: console 1");

    // Cough: held by key repeats, it lets go by itself once the key stops repeating.
    tmux.keys("1", "c");
    tmux.wait_for("1", "COUGH: live on plenary/en");
    tmux.wait_for("1", "LIVE on plenary/en (English)");
    // The latching cough key, on and off.
    tmux.keys("1", "C");
    tmux.wait_for("1", "COUGH: live on plenary/en");
    tmux.keys("1", "C");
    tmux.wait_for("1", "LIVE on plenary/en (English)");

    // Mute: off air, and the partner sees the channel free.
    tmux.keys("1", "m");
    tmux.wait_for("1", "MUTED: not on air");
    tmux.wait("2", "plenary/en free", |s| {
        !s.contains("live: console 1") && s.contains("plenary/en English: ")
    });

    // Handover: console 1 goes live and offers, console 2 takes the microphone.
    tmux.keys("1", "l");
    tmux.wait_for("1", "LIVE on plenary/en (English)");
    tmux.wait_for("2", "plenary/en English: live: console 1");
    tmux.keys("1", "h");
    tmux.wait_for("1", "you offered the microphone");
    tmux.wait_for(
        "2",
        "console 1 offers you the microphone: press a to take it",
    );
    tmux.keys("2", "a");
    tmux.wait_for("2", "LIVE on plenary/en (English)");
    tmux.wait_for("2", "plenary/en English: live: you");
    tmux.wait_for("1", "MUTED: not on air");
    tmux.wait_for("1", "plenary/en English: live: console 2");

    // A refusal in words: console 1 cannot go live over its partner.
    tmux.keys("1", "l");
    tmux.wait_for("1", "your partner at console 2 is live: ask for a handover");

    // Leaving while live asks again; the console then exits cleanly.
    tmux.keys("2", "q");
    tmux.wait_for("2", "you are live: press q again to leave");
    tmux.keys("2", "q");
    let deadline = Instant::now() + SCREEN_WAIT;
    let code = loop {
        match std::fs::read_to_string(status("2")) {
            Ok(code) if !code.is_empty() => break code,
            _ if Instant::now() > deadline => panic!("console 2 did not exit after q, q"),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    assert_eq!(code.trim(), "0", "console 2 exits cleanly");
    // The console's screen is gone: the terminal is back to its ordinary screen.
    let screen = tmux.wait("2", "the ordinary screen", |s| !s.contains("Booth en"));
    assert!(!screen.contains("LIVE"), "{screen}");
    tmux.wait_for("1", "plenary/en English: ");
    tmux.wait("1", "the channel free after console 2 left", |s| {
        !s.contains("live: console 2")
    });

    // The relay goes away while console 1 is live; the console shows it, reconnects by itself
    // once the relay is back, and comes back muted.
    tmux.keys("1", "l");
    tmux.wait_for("1", "LIVE on plenary/en (English)");
    drop(relay_proc);
    tmux.wait_for("1", "OFFLINE: not connected to the relay");
    let (_relay, _) = relay(&dir, &addr);
    tmux.wait_for("1", "reconnects 1");
    tmux.wait_for("1", "MUTED: not on air");
    let _ = std::fs::remove_dir_all(&dir);
}
