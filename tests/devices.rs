//! Real audio devices, no hardware: PulseAudio null sinks stand in for a microphone and for
//! headphones (scripts/pulse.sh starts the daemon). Speech is played into one sink; a booth
//! captures that sink's monitor through cpal (ALSA's `pulse` device, `PULSE_SOURCE` choosing the
//! source); the relay carries it; a listener plays it through cpal into another sink
//! (`PULSE_SINK`), whose monitor is recorded. What is recorded must be what was said. The same
//! for the floor in an interpreter's headphones (`booth --output-device`).
//!
//! Every test makes null sinks of its own, so tests can share the daemon in parallel.

mod proc;

use boothcast::audio::{self, align};
use proc::Proc;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_boothcast");
/// How long any single expected event may take. Generous: the suite runs tests in parallel on
/// two cores, and PulseAudio's null sinks can take up to 2 s to start a stream.
const WAIT: Duration = Duration::from_secs(20);

/// Null sinks of this test's own, removed at the end. Without rewinds: a null sink rewound
/// when a stream starts or recovers has already passed the sound to its monitor, which then
/// plays part of it twice or not at all.
struct Sinks {
    modules: Vec<String>,
}

impl Sinks {
    fn new(names: &[&str]) -> Sinks {
        let status = Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pulse.sh"))
            .status()
            .expect("bash runs scripts/pulse.sh");
        assert!(
            status.success(),
            "PulseAudio is not running and scripts/pulse.sh could not start it"
        );
        let modules = names
            .iter()
            .map(|name| {
                let out = Command::new("pactl")
                    .args([
                        "load-module",
                        "module-null-sink",
                        &format!("sink_name={name}"),
                        "rate=48000",
                        "channels=1",
                        "norewinds=1",
                    ])
                    .output()
                    .expect("pactl is installed (scripts/test.sh installs pulseaudio-utils)");
                assert!(out.status.success(), "cannot make the null sink {name}");
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            })
            .collect();
        Sinks { modules }
    }
}

impl Drop for Sinks {
    fn drop(&mut self) {
        for m in &self.modules {
            let _ = Command::new("pactl").args(["unload-module", m]).status();
        }
    }
}

/// Records a sink's monitor (48 kHz mono 16-bit, raw) into a file.
///
/// A null sink that nobody listens to low-latency renders ahead in blocks of up to 2 s, and a
/// stream that starts then waits for the end of the block: the sound card's fixed period a real
/// device has is missing. A recorder asking for 10 ms keeps the sink's blocks at 10 ms for the
/// whole test, so the booth's and the listener's streams start, and restart after an xrun, at
/// once.
struct Recorder {
    child: Child,
    path: PathBuf,
}

impl Recorder {
    fn start(monitor: &str, path: PathBuf) -> Recorder {
        let file = std::fs::File::create(&path).unwrap();
        let child = audio_process("parec")
            .args(["--latency-msec=10", "--raw", "--format=s16le"])
            .args(["--rate=48000", "--channels=1", "--device", monitor])
            .stdout(file)
            .spawn()
            .expect("parec is installed (scripts/test.sh installs pulseaudio-utils)");
        let recorder = Recorder { child, path };
        // The sink runs once sound (here silence) comes out of its monitor.
        recorder.wait_for_samples(4_800);
        recorder
    }

    fn samples(&self) -> usize {
        std::fs::metadata(&self.path).map_or(0, |m| m.len() as usize / 2)
    }

    /// Waits until `n` samples have been recorded.
    fn wait_for_samples(&self, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.samples() < n {
            assert!(
                Instant::now() < deadline,
                "the recording of {} stopped at {} samples",
                self.path.display(),
                self.samples()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn finish(mut self) -> Vec<f32> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let bytes = std::fs::read(&self.path).unwrap();
        bytes
            .chunks_exact(2)
            .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
            .collect()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A name of this test's own for a sink or a directory.
fn unique(what: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{what}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn tmpdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("boothcast-{}", unique(name)));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn speak(text: &str, path: &Path) {
    let status = Command::new("espeak-ng")
        .args(["-v", "en", "-w"])
        .arg(path)
        .arg(text)
        .status()
        .expect("espeak-ng is installed (scripts/test.sh installs it)");
    assert!(status.success());
}

fn serve(dir: &Path) -> (Proc, String) {
    let config = dir.join("event.toml");
    std::fs::write(&config, proc::EVENT).unwrap();
    Proc::relay(
        audio_process(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .stderr(Stdio::null()),
        WAIT,
    )
}

/// A command run with a higher priority than the compilers and tests running beside it, as a
/// sound server gives its clients on a desktop (`nice` carries on at the normal priority when
/// not allowed to raise it). The audio path crosses six threads in four processes here, and
/// any one of them held up for a tenth of a second breaks up the sound.
fn audio_process(program: &str) -> Command {
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "-10", program]);
    cmd
}

/// A client's log, kept with the recordings for when the test fails.
fn log(dir: &Path, name: &str) -> std::fs::File {
    std::fs::File::create(dir.join(name)).unwrap()
}

fn json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or(Value::Null)
}

/// The speech a delegate hears goes: espeak-ng → paplay → null sink `mic` → its monitor →
/// cpal capture in `boothcast booth` → Opus → relay → `boothcast listen` → jitter buffer →
/// cpal playback → null sink `ear` → its monitor → parec.
#[test]
fn speech_into_a_booth_microphone_comes_out_of_the_listeners_headphones() {
    let (mic, ear) = (unique("test_mic"), unique("test_ear"));
    let _sinks = Sinks::new(&[&mic, &ear]);
    let dir = tmpdir("devices");
    let said = dir.join("said.wav");
    speak(
        "Good morning, distinguished delegates. The forum is now in session. \
         We begin with the report of the working group on border security.",
        &said,
    );
    let _mic_keeper = Recorder::start(&format!("{mic}.monitor"), dir.join("mic.raw"));
    let recording = Recorder::start(&format!("{ear}.monitor"), dir.join("heard.raw"));
    let (_relay, url) = serve(&dir);

    // The booth's microphone is the monitor of `mic`: cpal opens ALSA's `pulse` device and
    // PULSE_SOURCE picks the source.
    let mut booth = Proc::spawn(
        audio_process(BIN)
            .args(["booth", "--server", &url, "--booth", "en", "--live"])
            .args(["--secret", "secret-en", "--input-device", "pulse"])
            .env("PULSE_SOURCE", format!("{mic}.monitor"))
            .stdin(Stdio::piped())
            .stderr(log(&dir, "booth.log")),
    );
    booth.wait_for("\"live\":\"plenary/en\"", WAIT);
    // The test is about the sound arriving intact, not about its delay: a jitter buffer of at
    // least 100 ms (the most it ever holds) rides out a busy machine's scheduling (the booth's
    // capture thread alone can be held up for 80 ms while other tests run beside it).
    let mut listener = Proc::spawn(
        audio_process(BIN)
            .args(["listen", "--server", &url, "--lang", "en"])
            .args(["--buffer-ms", "100", "--output-device", "pulse"])
            .env("PULSE_SINK", &ear)
            .stderr(log(&dir, "listener.log")),
    );
    // The booth's silence is being played: the whole chain runs.
    listener.wait_until("a frame played", WAIT, |l| {
        json(l)["playout"]["delay_ms"].as_f64().unwrap_or(0.0) > 0.0
    });

    // paplay's own buffer is before the microphone and does not count: a large one keeps a
    // busy machine from breaking up the speech before it reaches the sink.
    let played = audio_process("paplay")
        .args(["--latency-msec=1000", &format!("--device={mic}")])
        .arg(&said)
        .status()
        .expect("paplay is installed (scripts/test.sh installs pulseaudio-utils)");
    assert!(played.success());
    // Whatever the chain's delay, one more second of recording holds the end of the speech.
    recording.wait_for_samples(recording.samples() + 48_000);
    let playout = listener.last("playout");
    drop(listener);
    let capture = booth.wait_for("\"type\":\"capture\"", WAIT);
    drop(booth);

    let reference = audio::read_wav(&said).unwrap();
    let recorded = recording.finish();
    let correlation = piecewise_correlation(&reference, &recorded);
    println!("booth capture: {capture}");
    println!("listener: {playout}");
    println!(
        "microphone -> booth -> relay -> listener -> headphones: correlation {correlation:.3}"
    );
    assert!(
        correlation >= 0.8,
        "what came out of the listener's headphones does not match what was said into the \
         booth's microphone: correlation {correlation:.3} (recordings and logs in {})",
        dir.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Normalized cross-correlation of the recording with the speech, after alignment: first of
/// the whole, then of every 200 ms piece within 100 ms of that, weighted by the piece's energy.
/// The jitter buffer keeps near live by filling a little in or trimming a pause, so the
/// recording is the speech with small shifts in it; a single lag for the whole would score
/// those shifts as a mismatch.
fn piecewise_correlation(reference: &[f32], recorded: &[f32]) -> f64 {
    const PIECE: usize = 9_600;
    const SLACK: usize = 4_800;
    let whole = align(
        reference,
        recorded,
        recorded.len().saturating_sub(reference.len()),
    );
    let (mut sum, mut weight) = (0.0, 0.0);
    for start in (0..reference.len().saturating_sub(PIECE)).step_by(PIECE) {
        let piece = &reference[start..start + PIECE];
        let energy: f64 = piece.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        if energy < 1e-5 * PIECE as f64 {
            // A pause: nothing to compare.
            continue;
        }
        let from = (whole.lag + start).saturating_sub(SLACK);
        let to = (whole.lag + start + PIECE + SLACK).min(recorded.len());
        if to <= from + PIECE {
            continue;
        }
        let a = align(piece, &recorded[from..to], to - from - PIECE);
        sum += a.correlation * energy;
        weight += energy;
    }
    if weight == 0.0 {
        0.0
    } else {
        sum / weight
    }
}

#[test]
fn an_unknown_device_is_named_in_the_error() {
    let out = Command::new(BIN)
        .args(["listen", "--server", "ws://127.0.0.1:9", "--lang", "en"])
        .args(["--output-device", "no-such-headphones"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no audio output device named `no-such-headphones`")
            && err.contains("boothcast devices"),
        "{err}"
    );
}

/// The interpreter hears the floor in the console's headphones: the floor's speech goes
/// floor → relay → `boothcast booth --output-device` → jitter buffer → cpal playback → null
/// sink `ear` → its monitor → parec, while the booth's own microphone (a silent sink) is open.
/// Then the interpreter turns the headphones down to a quarter (`volume 0.25`) and hears the
/// floor again, a quarter as loud.
#[test]
fn the_floor_comes_out_of_the_interpreters_headphones() {
    let (mic, ear) = (unique("console_mic"), unique("console_ear"));
    let _sinks = Sinks::new(&[&mic, &ear]);
    let dir = tmpdir("console");
    let said = dir.join("floor.wav");
    speak(
        "The chair gives the floor to the delegation of Azerbaijan. \
         Please keep your statements to three minutes.",
        &said,
    );
    // The floor feed is live: what it "says" while it connects is gone, as with a microphone.
    // A second of silence before the speech is what it may miss.
    let feed = dir.join("feed.wav");
    let padded = Command::new("sox")
        .arg(&said)
        .arg(&feed)
        .args(["pad", "1", "0"])
        .status()
        .expect("sox is installed (scripts/test.sh installs it)");
    assert!(padded.success());
    let _mic_keeper = Recorder::start(&format!("{mic}.monitor"), dir.join("mic.raw"));
    let recording = Recorder::start(&format!("{ear}.monitor"), dir.join("heard.raw"));
    let (_relay, url) = serve(&dir);

    let mut booth = Proc::spawn(
        audio_process(BIN)
            .args(["booth", "--server", &url, "--booth", "en", "--headless"])
            .args(["--secret", "secret-en", "--input-device", "pulse"])
            .args(["--output-device", "pulse", "--volume", "1"])
            .env("PULSE_SOURCE", format!("{mic}.monitor"))
            .env("PULSE_SINK", &ear)
            .stdin(Stdio::piped())
            .stderr(log(&dir, "booth.log")),
    );
    let started = booth.wait_for("\"type\":\"started\"", WAIT);
    assert_eq!(json(&started)["output_device"], "pulse", "{started}");
    booth.wait_for("\"type\":\"welcome\"", WAIT);

    let floor = || {
        let status = audio_process(BIN)
            .args(["floor", "--server", &url, "--secret", "floor-secret"])
            .arg("--input-file")
            .arg(&feed)
            .stdout(Stdio::null())
            .stderr(log(&dir, "floor.log"))
            .status()
            .expect("the floor feed runs");
        assert!(
            status.success(),
            "the floor feed failed (logs in {})",
            dir.display()
        );
    };
    floor();
    recording.wait_for_samples(recording.samples() + 48_000);
    booth.send("volume 0.25");
    let turned = booth.wait_for("\"type\":\"volume\"", WAIT);
    assert_eq!(json(&turned)["volume"], 0.25, "{turned}");
    let loud_end = recording.samples();
    floor();
    recording.wait_for_samples(recording.samples() + 48_000);
    drop(booth);

    let reference = audio::read_wav(&said).unwrap();
    let recorded = recording.finish();
    let (loud, quiet) = recorded.split_at(loud_end.min(recorded.len()));
    let energy = |x: &[f32]| x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>();
    let ratio = (energy(quiet) / energy(loud)).sqrt();
    println!("the same speech after `volume 0.25`: {ratio:.3} as loud");
    assert!(
        (0.18..=0.32).contains(&ratio),
        "after `volume 0.25` the floor came out {ratio:.3} as loud (recordings in {})",
        dir.display()
    );
    let correlation = piecewise_correlation(&reference, loud);
    println!("floor -> relay -> booth console -> headphones: correlation {correlation:.3}");
    assert!(
        correlation >= 0.8,
        "what came out of the interpreter's headphones does not match the floor's speech: \
         correlation {correlation:.3} (recordings and logs in {})",
        dir.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The sound server kills the booth's microphone stream (as when a USB headset is pulled and
/// its stream cannot move): the booth reopens the device by itself, stays connected, and the
/// listeners hear the microphone again within a second.
#[test]
fn a_microphone_stream_killed_by_the_sound_server_is_reopened() {
    let mic = unique("killed_mic");
    let _sinks = Sinks::new(&[&mic]);
    let dir = tmpdir("killed");
    let _mic_keeper = Recorder::start(&format!("{mic}.monitor"), dir.join("mic.raw"));
    let (_relay, url) = serve(&dir);
    // A 440 Hz tone into the microphone for the whole test.
    let tone = dir.join("tone.wav");
    let made = Command::new("sox")
        .args(["-n", "-r", "48000", "-c", "1", "-b", "16"])
        .arg(&tone)
        .args(["synth", "14", "sine", "440", "gain", "-6"])
        .status()
        .expect("sox is installed (scripts/test.sh installs it)");
    assert!(made.success());
    let mut booth = Proc::spawn(
        audio_process(BIN)
            .args([
                "booth",
                "--server",
                &url,
                "--booth",
                "en",
                "--live",
                "--headless",
            ])
            .args(["--secret", "secret-en", "--input-device", "pulse"])
            .env("PULSE_SOURCE", format!("{mic}.monitor"))
            .stdin(Stdio::piped())
            .stderr(log(&dir, "booth.log")),
    );
    booth.wait_for("\"live\":\"plenary/en\"", WAIT);
    let mut player = audio_process("paplay")
        .args(["--latency-msec=200", &format!("--device={mic}")])
        .arg(&tone)
        .spawn()
        .expect("paplay is installed");
    let heard = dir.join("heard.wav");
    let mut listener = Proc::spawn(
        Command::new(BIN)
            .args(["listen", "--server", &url, "--lang", "en", "--seconds", "9"])
            .arg("--output-file")
            .arg(&heard)
            .stderr(log(&dir, "listener.log")),
    );
    listener.wait_for("\"type\":\"subscribed\"", WAIT);
    // The kill comes once the listener has written 2 s of the tone (it flushes every second).
    let deadline = Instant::now() + WAIT;
    while std::fs::metadata(&heard).map_or(0, |m| m.len()) < 44 + 2 * 96_000 {
        assert!(Instant::now() < deadline, "the listener wrote no sound");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The booth's capture stream, as PulseAudio lists it (the only one on this sink's monitor).
    let outputs = Command::new("pactl")
        .args(["list", "short", "source-outputs"])
        .output()
        .unwrap();
    let sources = Command::new("pactl")
        .args(["list", "short", "sources"])
        .output()
        .unwrap();
    let monitor = String::from_utf8_lossy(&sources.stdout)
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(&format!("{mic}.monitor")))
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .expect("the microphone's monitor is a source");
    let ours: Vec<String> = String::from_utf8_lossy(&outputs.stdout)
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some(monitor.as_str()))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    // Two: the booth's, and the recorder that keeps the sink running; the booth's is newer.
    let booth_stream = ours
        .iter()
        .max_by_key(|i| i.parse::<u32>().unwrap_or(0))
        .unwrap();
    let killed = Command::new("pacmd")
        .args(["kill-source-output", booth_stream])
        .status()
        .expect("pacmd is installed (scripts/test.sh installs pulseaudio)");
    assert!(killed.success());
    let killed_at = Instant::now();

    listener.finish(WAIT);
    let _ = player.kill();
    let _ = player.wait();
    let log_text = std::fs::read_to_string(dir.join("booth.log")).unwrap();
    assert!(
        log_text.contains("audio device reopened"),
        "the booth did not reopen its microphone (logs in {})",
        dir.display()
    );
    booth.send("quit");
    let lines = booth.finish(WAIT);
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("\"type\":\"disconnected\"")),
        "the booth lost its connection: {lines:?}"
    );

    // The listener's 9 s: tone, a gap where the stream was killed, tone again to the end.
    let pcm = audio::read_wav(&heard).unwrap();
    let rms = |x: &[f32]| (x.iter().map(|&v| v * v).sum::<f32>() / x.len().max(1) as f32).sqrt();
    let windows: Vec<f32> = pcm.chunks(4_800).map(rms).collect();
    let loud = |r: &f32| *r > 0.05;
    let last_quiet = windows.iter().rposition(|r| !loud(r)).unwrap_or(0);
    let quiet = windows.iter().filter(|r| !loud(r)).count();
    println!(
        "100 ms windows with the tone: {} of {}; quiet ones: {quiet}, the last at {:.1} s; \
         the kill {:.1} s before the end",
        windows.len() - quiet,
        windows.len(),
        last_quiet as f64 / 10.0,
        killed_at.elapsed().as_secs_f64()
    );
    assert!(
        windows.len() >= 60 && windows[windows.len() - 20..].iter().all(loud),
        "the tone did not come back after the microphone was reopened (recording in {})",
        dir.display()
    );
    assert!(
        quiet <= 10,
        "{quiet} windows of 100 ms without the tone: more than a second lost to the reopening \
         (recording in {})",
        dir.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
