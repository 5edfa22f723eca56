//! Sound in from what a sound engineer has, and out to what a listener has, with the real
//! binary: files in every common form (made here with sox and ffmpeg) as the floor and as a
//! booth; files cut short; live pipes from ffmpeg (WAV, MP3, Ogg Opus); refusals that say what
//! is wrong; `listen` writing a WAV stream to standard output; the HTTP stream played by ffmpeg
//! across a booth going live and muting.

mod proc;

use boothcast::audio::{self, align, SAMPLE_RATE};
use proc::{tmpdir, Proc};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_boothcast");

/// Runs a tool to its end; it must succeed.
fn tool(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (scripts/test.sh installs it): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn speak(text: &str, path: &Path) {
    tool(
        Command::new("espeak-ng")
            .args(["-v", "en", "-w"])
            .arg(path)
            .arg(text),
    );
}

fn ffmpeg(dir: &Path, input: &str, args: &[&str], out: &str) -> PathBuf {
    let path = dir.join(out);
    tool(
        Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-i"])
            .arg(dir.join(input))
            .args(args)
            .arg(&path),
    );
    path
}

fn sox(dir: &Path, input: &str, args: &[&str], out: &str) -> PathBuf {
    let path = dir.join(out);
    tool(
        Command::new("sox")
            .arg(dir.join(input))
            .args(args)
            .arg(&path),
    );
    path
}

/// A WAV file's chunks, rewritten with an odd-length `iXML` chunk (and its pad byte) before
/// the data, as field recorders write them.
fn with_odd_ixml(wav: &[u8]) -> Vec<u8> {
    let mut chunks = Vec::new();
    let mut pos = 12;
    while pos + 8 <= wav.len() {
        let id = &wav[pos..pos + 4];
        let len = u32::from_le_bytes(wav[pos + 4..pos + 8].try_into().unwrap()) as usize;
        let body = &wav[pos + 8..(pos + 8 + len).min(wav.len())];
        if id == b"data" {
            let xml = b"<?xml version=\"1.0\"?><BWFXML><PROJECT>Plenary</PROJECT></BWFXML>\n";
            assert_eq!(xml.len() % 2, 1, "odd on purpose");
            chunks.extend_from_slice(b"iXML");
            chunks.extend_from_slice(&(xml.len() as u32).to_le_bytes());
            chunks.extend_from_slice(xml);
            chunks.push(0);
        }
        chunks.extend_from_slice(id);
        chunks.extend_from_slice(&(len as u32).to_le_bytes());
        chunks.extend_from_slice(body);
        if len % 2 == 1 {
            chunks.push(0);
        }
        pos += 8 + len + len % 2;
    }
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(4 + chunks.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WAVE");
    out.extend_from_slice(&chunks);
    out
}

/// The inputs of the test: (name, file, fraction of the speech it holds).
fn inputs(dir: &Path) -> Vec<(&'static str, PathBuf, f64)> {
    speak(
        "Distinguished delegates, the working group on border security has finished its report.",
        &dir.join("said.wav"),
    );
    let said = std::fs::read(dir.join("said.wav")).unwrap();
    let mut v = vec![("plain 16-bit WAV", dir.join("said.wav"), 1.0)];
    // Broadcast WAV with a `bext` chunk of odd length (its coding history), padded.
    let bwf = ffmpeg(
        dir,
        "said.wav",
        &[
            "-write_bext",
            "1",
            "-metadata",
            "coding_history=A=PCM,F=22050,W=16",
        ],
        "bwf.wav",
    );
    let bext = std::fs::read(&bwf).unwrap();
    let len = u32::from_le_bytes(bext[40..44].try_into().unwrap());
    assert_eq!(
        (&bext[36..40], len % 2),
        (&b"bext"[..], 1),
        "an odd bext chunk"
    );
    v.push(("Broadcast WAV, odd bext chunk", bwf, 1.0));
    let ixml = dir.join("ixml.wav");
    std::fs::write(&ixml, with_odd_ixml(&said)).unwrap();
    v.push(("WAV with an odd iXML chunk", ixml, 1.0));
    // What ffmpeg writes to a pipe: RIFF and data sizes 0xFFFFFFFF.
    let piped = dir.join("piped.wav");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ffmpeg -v error -i '{}' -f wav - | cat > '{}'",
            dir.join("said.wav").display(),
            piped.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success());
    let bytes = std::fs::read(&piped).unwrap();
    assert_eq!(&bytes[4..8], &[0xFF; 4], "streaming RIFF size");
    v.push(("WAV written to a pipe (sizes 0xFFFFFFFF)", piped, 1.0));
    // A recorder killed mid-write: the header promises more than there is.
    let cut = dir.join("cut.wav");
    std::fs::write(&cut, &said[..said.len() * 6 / 10]).unwrap();
    v.push(("WAV cut short", cut, 0.55));
    v.push((
        "8-bit WAV",
        sox(dir, "said.wav", &["-b", "8"], "pcm8.wav"),
        1.0,
    ));
    v.push((
        "24-bit WAV (extensible)",
        sox(dir, "said.wav", &["-b", "24"], "pcm24.wav"),
        1.0,
    ));
    v.push((
        "32-bit float WAV, stereo, 44.1 kHz",
        sox(
            dir,
            "said.wav",
            &["-e", "floating-point", "-b", "32", "-c", "2", "-r", "44100"],
            "float.wav",
        ),
        1.0,
    ));
    v.push((
        "FLAC",
        ffmpeg(dir, "said.wav", &["-c:a", "flac"], "said.flac"),
        1.0,
    ));
    v.push((
        "MP3",
        ffmpeg(
            dir,
            "said.wav",
            &["-c:a", "libmp3lame", "-b:a", "64k"],
            "said.mp3",
        ),
        1.0,
    ));
    v.push((
        "Ogg Vorbis",
        ffmpeg(dir, "said.wav", &["-c:a", "libvorbis"], "said.ogg"),
        1.0,
    ));
    v.push((
        "Ogg Opus",
        ffmpeg(
            dir,
            "said.wav",
            &["-c:a", "libopus", "-b:a", "48k"],
            "said.opus",
        ),
        1.0,
    ));
    v.push((
        "M4A (AAC)",
        ffmpeg(dir, "said.wav", &["-c:a", "aac", "-b:a", "64k"], "said.m4a"),
        1.0,
    ));
    v
}

/// An event with a room per input: its floor, an `en` channel and booth `b<i>` into it.
fn event(rooms: usize) -> String {
    let mut toml = String::from(
        "[event]\nname = \"Sound in\"\n[secrets]\nfloor = \"floor-secret\"\nengineer = \"engineer-secret\"\n",
    );
    for i in 0..rooms {
        toml.push_str(&format!(
            "[[rooms]]\nid = \"r{i}\"\n[[rooms.channels]]\nlang = \"en\"\nname = \"English\"\nnative = \"English\"\nhold_ms = 300\n[[rooms.booths]]\nid = \"b{i}\"\nlanguages = [\"en\"]\nsecret = \"secret-{i}\"\n"
        ));
    }
    toml
}

fn serve(dir: &Path, toml: &str) -> (Proc, String) {
    let config = dir.join("event.toml");
    std::fs::write(&config, toml).unwrap();
    Proc::relay(
        Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .stderr(Stdio::null()),
        Duration::from_secs(10),
    )
}

fn listen(url: &str, channel: &str, seconds: &str, out: &Path) -> Proc {
    Proc::spawn(
        Command::new(BIN)
            .args([
                "listen",
                "--server",
                url,
                "--lang",
                channel,
                "--seconds",
                seconds,
            ])
            // Real-time processes share two cores here with whatever else runs: a margin for
            // frames that come late (the delay is not what these tests measure).
            .args(["--buffer-ms", "1000"])
            .arg("--output-file")
            .arg(out)
            .stderr(Stdio::null()),
    )
}

/// Correlation of what was said (its first `fraction`) with what was heard.
fn correlation(said: &Path, fraction: f64, heard: &Path) -> f64 {
    let mut reference = audio::read_wav(said).unwrap();
    reference.truncate((reference.len() as f64 * fraction) as usize);
    let recorded = audio::read_wav(heard).unwrap();
    align(
        &reference,
        &recorded,
        recorded.len().saturating_sub(reference.len()),
    )
    .correlation
}

/// Every input at once, each in its own room, as the floor or as a live booth; each heard by
/// `listen`. Returns the correlations.
fn every_input_through_the_relay(name: &str, as_floor: bool) {
    let dir = tmpdir(name);
    let inputs = inputs(&dir);
    let (_relay, url) = serve(&dir, &event(inputs.len()));
    let mut warnings = Vec::new();
    // Four at a time: the senders and listeners all run in real time on a small machine.
    for batch in (0..inputs.len()).collect::<Vec<_>>().chunks(4) {
        let mut listeners = Vec::new();
        for &i in batch {
            let channel = if as_floor {
                format!("r{i}/floor")
            } else {
                format!("r{i}/en")
            };
            let mut l = listen(&url, &channel, "7", &dir.join(format!("heard{i}.wav")));
            l.wait_for("\"type\":\"subscribed\"", Duration::from_secs(10));
            listeners.push(l);
        }
        let mut senders = Vec::new();
        for &i in batch {
            let mut cmd = Command::new(BIN);
            if as_floor {
                cmd.args(["floor", "--room", &format!("r{i}")])
                    .args(["--secret", "floor-secret"]);
            } else {
                cmd.args(["booth", "--booth", &format!("b{i}"), "--live"])
                    .args(["--secret", &format!("secret-{i}")]);
            }
            cmd.args(["--server", &url, "--input-file"])
                .arg(&inputs[i].1)
                .stdin(Stdio::null())
                .stderr(Stdio::piped());
            senders.push(cmd.spawn().unwrap());
        }
        for s in senders {
            let out = s.wait_with_output().unwrap();
            assert!(out.status.success());
            warnings.push(String::from_utf8_lossy(&out.stderr).to_string());
        }
        for l in listeners {
            l.finish(Duration::from_secs(30));
        }
    }
    let mut failed = Vec::new();
    for (i, (what, file, fraction)) in inputs.iter().enumerate() {
        let c = correlation(
            &dir.join("said.wav"),
            *fraction,
            &dir.join(format!("heard{i}.wav")),
        );
        println!("{what}: correlation {c:.3}");
        if c < 0.9 {
            failed.push(format!("{what} ({}): {c:.3}", file.display()));
        }
        let warned = warnings[i].matches("ends early").count();
        if what.contains("cut short") {
            assert_eq!(warned, 1, "one warning for the cut file: {}", warnings[i]);
            assert!(warnings[i].contains("cut.wav"), "{}", warnings[i]);
        } else {
            assert_eq!(warned, 0, "{what}: {}", warnings[i]);
        }
    }
    assert!(failed.is_empty(), "not heard as said: {failed:#?}");
}

#[test]
fn every_input_as_the_floor_is_heard_as_said() {
    every_input_through_the_relay("floor", true);
}

#[test]
fn every_input_as_a_booth_is_heard_as_said() {
    every_input_through_the_relay("booth", false);
}

#[test]
fn what_cannot_be_decoded_is_refused_with_what_it_is() {
    let dir = tmpdir("refused");
    speak("One.", &dir.join("said.wav"));
    let text = dir.join("notes.wav");
    std::fs::write(&text, "agenda: opening remarks\n").unwrap();
    let gsm = sox(
        &dir,
        "said.wav",
        &["-r", "8000", "-e", "gsm-full-rate"],
        "gsm.wav",
    );
    let empty = dir.join("empty.flac");
    std::fs::write(&empty, b"").unwrap();
    // A 16-bit PCM WAV whose header says something that cannot be.
    let said = std::fs::read(dir.join("said.wav")).unwrap();
    let fmt = said.windows(4).position(|w| w == b"fmt ").unwrap();
    let data = said.windows(4).position(|w| w == b"data").unwrap();
    let damaged = |name: &str, at: usize, value: &[u8]| {
        let mut bytes = said.clone();
        bytes[at..at + value.len()].copy_from_slice(value);
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let channels0 = damaged("channels0.wav", fmt + 10, &0u16.to_le_bytes());
    let channels32 = damaged("channels32.wav", fmt + 10, &32u16.to_le_bytes());
    let channels255 = damaged("channels255.wav", fmt + 10, &255u16.to_le_bytes());
    let huge = damaged("huge.wav", data + 4, &0xffff_fff0u32.to_le_bytes());
    // What ffmpeg writes to a pipe, cut after 44 bytes (its header is longer).
    let header = dir.join("header.wav");
    let piped = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(dir.join("said.wav"))
        .args(["-f", "wav", "-"])
        .output()
        .unwrap();
    std::fs::write(&header, &piped.stdout[..44]).unwrap();
    // An Ogg Opus file cut inside its first page of sound (ffmpeg's pages hold a second), and
    // an M4A file cut before its index (ffmpeg writes it at the end).
    let opus = ffmpeg(&dir, "said.wav", &["-c:a", "libopus"], "said.opus");
    let cut_opus = dir.join("cut.opus");
    std::fs::write(&cut_opus, &std::fs::read(&opus).unwrap()[..1000]).unwrap();
    let m4a = ffmpeg(&dir, "said.wav", &["-c:a", "aac"], "said.m4a");
    let cut_m4a = dir.join("cut.m4a");
    std::fs::write(&cut_m4a, &std::fs::read(&m4a).unwrap()[..2000]).unwrap();
    for (file, what) in [
        (&text, "it is a text file"),
        (
            &gsm,
            "it is a WAV file whose audio is coded as format 0x0031 (GSM 6.10)",
        ),
        (&empty, "it is an empty file"),
        (
            &channels0,
            "it is a damaged WAV file: its header says it has 0 channels",
        ),
        (&channels32, "it is a WAV file of 32 channels: at most 26"),
        (&channels255, "it is a WAV file of 255 channels: at most 26"),
        (
            &huge,
            "its `data` chunk says it holds 4294967280 bytes, more than the",
        ),
        (
            &header,
            "it is a WAV file cut short in its header: it ends after 44 bytes",
        ),
        (
            &cut_opus,
            "it is an Ogg file cut short before its first page of sound ends",
        ),
        (
            &cut_m4a,
            "it is an MP4/M4A file without its index (it has no `moov` box): cut short",
        ),
    ] {
        let out = Command::new(BIN)
            .args([
                "floor",
                "--server",
                "ws://127.0.0.1:9",
                "--secret",
                "x",
                "--input-file",
            ])
            .arg(file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        println!("{err}");
        assert!(!out.status.success());
        assert!(
            err.contains(&format!("cannot decode {}", file.display())),
            "{err}"
        );
        assert!(err.contains(what), "{err}");
        assert!(err.contains("accepted: WAV"), "{err}");
        assert!(!err.contains("format 0x0001"), "PCM is accepted: {err}");
    }
    // A directory, and a file that is not there: said once.
    for (file, what) in [
        (dir.clone(), format!("{} is a directory", dir.display())),
        (
            dir.join("missing.wav"),
            format!(
                "cannot open {}: No such file or directory",
                dir.join("missing.wav").display()
            ),
        ),
    ] {
        let out = Command::new(BIN)
            .args(["floor", "--server", "ws://127.0.0.1:9", "--secret", "x"])
            .arg("--input-file")
            .arg(&file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        println!("{err}");
        assert!(!out.status.success());
        assert!(err.contains(&what), "{err}");
        assert!(
            err.matches("No such file").count() <= 1,
            "the reason once: {err}"
        );
    }
    // Standard input: nothing at all (the program writing it failed), text, a WAV header cut
    // short.
    for (input, what) in [
        (&b""[..], "it is an empty stream"),
        (
            b"agenda: opening remarks\n",
            "a stream whose first bytes look like a text file",
        ),
        (
            &piped.stdout[..44],
            "a stream whose first bytes look like a WAV file cut short in its header",
        ),
    ] {
        let mut floor = Command::new(BIN)
            .args(["floor", "--server", "ws://127.0.0.1:9", "--secret", "x"])
            .args(["--input-file", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        floor.stdin.take().unwrap().write_all(input).unwrap();
        let out = floor.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains("cannot decode standard input"), "{err}");
        assert!(err.contains(what), "{err}");
    }
}

/// The first audio frame on `channel`, by a WebSocket listener of our own: when it came.
fn first_frame_at(url: &str, channel: &str) -> std::sync::mpsc::Receiver<Instant> {
    use tokio_tungstenite::tungstenite::{connect, Message};
    let (mut ws, _) = connect(format!("{url}/ws")).unwrap();
    let hello = format!(r#"{{"type":"hello","role":"listener","channel":"{channel}"}}"#);
    ws.send(Message::Text(hello.into())).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || loop {
        match ws.read() {
            Ok(Message::Binary(_)) => {
                let _ = tx.send(Instant::now());
                return;
            }
            Ok(_) => {}
            Err(_) => return,
        }
    });
    rx
}

#[test]
fn a_live_pipe_from_ffmpeg_is_the_floor_within_a_second() {
    let dir = tmpdir("pipe");
    let said = dir.join("said.wav");
    speak(
        "Good morning. The floor is given to the delegation of Azerbaijan.",
        &said,
    );
    let (_relay, url) = serve(&dir, proc::EVENT);
    let heard = dir.join("heard.wav");
    let mut listener = listen(&url, "plenary/floor", "8", &heard);
    listener.wait_for("\"type\":\"subscribed\"", Duration::from_secs(10));
    let first_frame = first_frame_at(&url, "plenary/floor");
    let mut floor = Command::new(BIN)
        .args([
            "floor",
            "--server",
            &url,
            "--secret",
            "floor-secret",
            "--input-file",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // ffmpeg paced at real time, as a network source would be, into the floor's standard
    // input through this test, which notes when its first bytes came out.
    let mut ffmpeg = Command::new("ffmpeg")
        .args(["-v", "error", "-re", "-i"])
        .arg(&said)
        .args(["-ac", "1", "-ar", "48000", "-f", "wav", "-"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut from = ffmpeg.stdout.take().unwrap();
    let mut to = floor.stdin.take().unwrap();
    let copier = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut buf = [0u8; 4096];
        let mut first = None;
        loop {
            let n = from.read(&mut buf).unwrap_or(0);
            if n == 0 {
                return first;
            }
            first.get_or_insert_with(Instant::now);
            if to.write_all(&buf[..n]).is_err() {
                return first;
            }
        }
    });
    let frame_at = first_frame
        .recv_timeout(Duration::from_secs(10))
        .expect("a frame on the floor channel");
    assert!(ffmpeg.wait().unwrap().success());
    let output_at = copier.join().unwrap().expect("ffmpeg wrote");
    let delay = frame_at.saturating_duration_since(output_at);
    println!(
        "live pipe: first frame on the channel {:.0} ms after ffmpeg's first output",
        delay.as_secs_f64() * 1000.0
    );
    assert!(
        delay < Duration::from_secs(1),
        "the floor started {delay:?} after its input"
    );
    assert!(floor.wait().unwrap().success());
    listener.finish(Duration::from_secs(30));
    let c = correlation(&said, 1.0, &heard);
    println!("live pipe: correlation {c:.3}");
    assert!(c >= 0.9, "what the floor's listener heard: {c:.3}");
}

/// `GET path` on the relay, as text (status line, headers, body).
fn http_get(url: &str, path: &str, auth: Option<&str>) -> String {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("ws://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let auth = auth
        .map(|a| format!("Authorization: Basic {a}\r\n"))
        .unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

fn listeners(url: &str, channel: &str) -> u64 {
    let metrics = http_get(url, "/metrics", None);
    let key = format!("boothcast_listeners{{channel=\"{channel}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {metrics}"))
}

/// Energy of `x` at `freq` (Goertzel), normalized by length.
fn tone_power(x: &[f32], freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / f64::from(SAMPLE_RATE);
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in x {
        let s = f64::from(v) + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    (s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2) / (x.len() as f64).powi(2)
}

#[test]
fn an_http_stream_follows_its_channel_from_the_floor_to_the_interpreter_and_back() {
    let dir = tmpdir("stream");
    let floor_wav = dir.join("floor.wav");
    let booth_wav = dir.join("booth.wav");
    for (path, freq) in [(&floor_wav, "440"), (&booth_wav, "1000")] {
        tool(
            Command::new("sox")
                .args(["-n", "-r", "48000"])
                .arg(path)
                .args(["synth", "20", "sine", freq, "vol", "0.5"]),
        );
    }
    let (_relay, url) = serve(&dir, proc::EVENT);
    let _floor = Proc::floor(&url, &floor_wav);
    let mut booth = Proc::spawn(
        Command::new(BIN)
            .args([
                "booth",
                "--server",
                &url,
                "--booth",
                "en",
                "--secret",
                "secret-en",
            ])
            .arg("--headless")
            .arg("--input-file")
            .arg(&booth_wav)
            .stdin(Stdio::piped())
            .stderr(Stdio::null()),
    );
    booth.wait_for("\"type\":\"welcome\"", Duration::from_secs(10));
    // A player records 10 s of the English channel's stream.
    let recorded = dir.join("recorded.wav");
    let player = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(format!(
            "http://{}/listen/plenary/en.opus",
            url.trim_start_matches("ws://")
        ))
        .args(["-t", "10", "-ac", "1", "-ar", "48000", "-y"])
        .arg(&recorded)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // And a raw reader of the same stream, to look at its pages.
    let raw = {
        use std::io::{Read, Write};
        let addr = url.trim_start_matches("ws://").to_string();
        std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            write!(
                s,
                "GET /listen/plenary/en.opus HTTP/1.0\r\nHost: {addr}\r\n\r\n"
            )
            .unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let until = Instant::now() + Duration::from_secs(10);
            let mut out = Vec::new();
            let mut reads = 0;
            let mut buf = [0u8; 16384];
            while Instant::now() < until {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        out.extend_from_slice(&buf[..n]);
                        reads += 1;
                    }
                    Err(_) => {}
                }
            }
            (out, reads)
        })
    };
    let started = Instant::now();
    while listeners(&url, "plenary/en") != 2 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the player is not counted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Two seconds of the floor (auto-floor), the interpreter live for three, then muted: the
    // hold (silence), and the floor again.
    std::thread::sleep(Duration::from_secs(2));
    booth.send("live");
    booth.wait_for("\"live\":\"plenary/en\"", Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(3));
    booth.send("mute");
    let out = player.wait_with_output().unwrap();
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && errors.trim().is_empty(),
        "ffmpeg: {errors}"
    );
    let (raw, reads) = raw.join().unwrap();
    ogg_is_one_continuous_stream(&raw);
    // Written every 200 ms (the relaxed class), not a page at a time: about 50 writes in 10 s
    // where a write a frame would be 500.
    println!(
        "HTTP stream: {} bytes in {reads} reads over 10 s",
        raw.len()
    );
    assert!(
        (20..=150).contains(&reads),
        "{reads} reads in 10 s: not written every 200 ms"
    );
    // Both gone: the relay notices at its next write (within a frame or a silence tick).
    let left = Instant::now();
    while listeners(&url, "plenary/en") != 0 {
        assert!(
            left.elapsed() < Duration::from_secs(2),
            "the players did not leave the audience"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let pcm = audio::read_wav(&recorded).unwrap();
    let seconds = pcm.len() as f64 / f64::from(SAMPLE_RATE);
    assert!(seconds > 9.9, "{seconds:.2} s recorded");
    // What each 200 ms carried: F (the floor's 440 Hz), I (the interpreter's 1 kHz), or
    // - (silence: the interpreter's hold).
    let timeline: String = pcm
        .chunks_exact(SAMPLE_RATE as usize / 5)
        .map(|w| {
            let (f, i) = (tone_power(w, 440.0), tone_power(w, 1000.0));
            if f.max(i) < 1e-4 {
                '-'
            } else if f > 10.0 * i {
                'F'
            } else if i > 10.0 * f {
                'I'
            } else {
                '~'
            }
        })
        .collect();
    println!("HTTP stream, 200 ms each: {timeline}");
    let runs: Vec<char> = timeline
        .chars()
        .filter(|c| *c != '~')
        .fold(Vec::new(), |mut v, c| {
            if v.last() != Some(&c) {
                v.push(c);
            }
            v
        });
    assert_eq!(
        runs.iter().filter(|c| **c != '-').collect::<String>(),
        "FIF",
        "the stream did not carry the floor, the interpreter, then the floor: {timeline}"
    );
    let interpreter = timeline.matches('I').count();
    assert!(
        (12..=18).contains(&interpreter),
        "the interpreter for {interpreter} × 200 ms, not about 3 s: {timeline}"
    );
}

/// The body of an HTTP/1.0 answer (no chunking) is one logical Ogg stream: one serial, page
/// numbers without a gap, and granule positions that grow by exactly the packets' durations,
/// across every switch of the channel.
fn ogg_is_one_continuous_stream(http: &[u8]) {
    let start = http.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut data = &http[start..];
    let (mut serial, mut sequence, mut granule, mut pages) = (None, 0u32, 0u64, 0);
    while data.len() >= 27 {
        assert_eq!(&data[..4], b"OggS");
        let segments = usize::from(data[26]);
        if data.len() < 27 + segments {
            break;
        }
        let lacing = &data[27..27 + segments];
        let len = 27 + segments + lacing.iter().map(|&l| usize::from(l)).sum::<usize>();
        if data.len() < len {
            break;
        }
        let page_granule = u64::from_le_bytes(data[6..14].try_into().unwrap());
        let page_serial = u32::from_le_bytes(data[14..18].try_into().unwrap());
        let page_sequence = u32::from_le_bytes(data[18..22].try_into().unwrap());
        assert_eq!(
            *serial.get_or_insert(page_serial),
            page_serial,
            "one logical stream"
        );
        assert_eq!(page_sequence, sequence, "page {sequence}: no gap");
        // The packets of the page (none spans pages here), and what they last.
        let mut body = &data[27 + segments..len];
        let mut packet = Vec::new();
        for &l in lacing {
            packet.extend_from_slice(&body[..usize::from(l)]);
            body = &body[usize::from(l)..];
            if l < 255 {
                if sequence >= 2 {
                    granule += opus::packet::get_nb_samples(&packet, 48_000).unwrap() as u64;
                }
                packet.clear();
            }
        }
        if sequence >= 2 {
            assert_eq!(page_granule, granule, "page {sequence}: granule");
        }
        sequence += 1;
        pages += 1;
        data = &data[len..];
    }
    println!(
        "HTTP stream: {pages} pages, one serial, granules continuous to {:.2} s",
        granule as f64 / 48_000.0
    );
    assert!(granule > 9 * 48_000, "{granule} samples in 10 s");
}

#[test]
fn an_http_stream_asks_for_the_access_code() {
    let dir = tmpdir("stream-code");
    let event = proc::EVENT.replace("[secrets]", "access_code = \"1234\"\n[secrets]");
    let (_relay, url) = serve(&dir, &event);
    let none = http_get(&url, "/listen/plenary/en.opus", None);
    assert!(none.starts_with("HTTP/1.0 401"), "{none}");
    assert!(
        none.contains("www-authenticate: Basic realm=\"boothcast\""),
        "{none}"
    );
    assert!(none.contains("this event needs an access code"), "{none}");
    // "delegate:4321", then "delegate:1234".
    let wrong = http_get(
        &url,
        "/listen/plenary/en.opus",
        Some("ZGVsZWdhdGU6NDMyMQ=="),
    );
    assert!(wrong.contains("wrong access code"), "{wrong}");
    let unknown = http_get(
        &url,
        "/listen/plenary/xx.opus",
        Some("ZGVsZWdhdGU6MTIzNA=="),
    );
    assert!(unknown.starts_with("HTTP/1.0 404"), "{unknown}");
    // The code in the address, as players take it: ffmpeg sends it as Basic authentication.
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(format!(
            "http://delegate:1234@{}/listen/plenary/floor.opus",
            url.trim_start_matches("ws://")
        ))
        .args(["-t", "1", "-f", "null", "-"])
        .output()
        .unwrap();
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && errors.trim().is_empty(),
        "ffmpeg: {errors}"
    );
}

#[test]
fn listen_writes_a_wav_stream_to_standard_output_for_other_tools() {
    let dir = tmpdir("stdout");
    let said = dir.join("said.wav");
    speak("The session is suspended for ten minutes.", &said);
    let (_relay, url) = serve(&dir, proc::EVENT);
    // listen | ffmpeg: the stream's sizes say "until the end", and ffmpeg reads it as it comes.
    let converted = dir.join("converted.wav");
    let json = dir.join("lines.txt");
    let mut pipeline = Proc::spawn(Command::new("sh").arg("-c").arg(format!(
        "'{BIN}' listen --server {url} --lang plenary/floor --seconds 6 --buffer-ms 1000 \
         --output-file - 2>'{}' \
         | ffmpeg -v error -y -f wav -i - '{}' && echo converted",
        json.display(),
        converted.display()
    )));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&json).is_ok_and(|t| t.contains("\"type\":\"subscribed\"")) {
        assert!(Instant::now() < deadline, "the listener did not subscribe");
        std::thread::sleep(Duration::from_millis(50));
    }
    let floor = Command::new(BIN)
        .args([
            "floor",
            "--server",
            &url,
            "--secret",
            "floor-secret",
            "--input-file",
        ])
        .arg(&said)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(floor.success());
    pipeline.wait_for("converted", Duration::from_secs(15));
    let lines = std::fs::read_to_string(&json).unwrap();
    assert!(lines.contains("\"type\":\"summary\""), "{lines}");
    let c = correlation(&said, 1.0, &converted);
    println!("listen --output-file - | ffmpeg: correlation {c:.3}");
    assert!(c >= 0.9, "{c:.3}");
}

/// A listener that writes what it hears to `out`, with the file listener's own jitter margin
/// (40 ms, as a delegate's player keeps): frames that come later than that are dropped as late.
fn listen_tight(url: &str, channel: &str, seconds: &str, out: &Path) -> Proc {
    Proc::spawn(
        Command::new(BIN)
            .args(["listen", "--server", url, "--lang", channel])
            .args(["--seconds", seconds, "--output-file"])
            .arg(out)
            .stderr(Stdio::null()),
    )
}

/// The `summary` of a listener's output lines.
fn summary(lines: &[String]) -> serde_json::Value {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "summary")
        .map(|v| v["summary"].clone())
        .unwrap_or_else(|| panic!("no summary in {lines:#?}"))
}

/// When each audio frame on `channel` came, to a WebSocket listener of our own, for `seconds`.
fn frame_times(url: &str, channel: &str, seconds: u64) -> std::thread::JoinHandle<Vec<Instant>> {
    use tokio_tungstenite::tungstenite::{connect, Message};
    let (mut ws, _) = connect(format!("{url}/ws")).unwrap();
    let hello = format!(r#"{{"type":"hello","role":"listener","channel":"{channel}"}}"#);
    ws.send(Message::Text(hello.into())).unwrap();
    if let tokio_tungstenite::tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
    }
    std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(seconds);
        let mut times = Vec::new();
        while Instant::now() < until {
            match ws.read() {
                Ok(Message::Binary(_)) => times.push(Instant::now()),
                Ok(_) => {}
                Err(tokio_tungstenite::tungstenite::Error::Io(_)) => {}
                Err(_) => break,
            }
        }
        times
    })
}

/// What frames that came at `times` give listeners who join at any of them: a file listener
/// (40 ms margin) places each frame 20 ms after the one before, behind its first frame, and
/// drops one that comes later than its place. Returns the share of the frames of the 3 s after
/// each first frame that would be dropped, and the most any frame came after a 20 ms clock
/// through the earliest of them (ms).
fn late_for_joiners(times: &[Instant]) -> (f64, f64) {
    // How late each frame is on a 20 ms clock through the first, µs.
    let late: Vec<i64> = times
        .iter()
        .enumerate()
        .map(|(k, t)| (*t - times[0]).as_micros() as i64 - 20_000 * k as i64)
        .collect();
    let (mut dropped, mut heard) = (0u64, 0u64);
    for (i, first) in late.iter().enumerate() {
        for later in late.iter().skip(i + 1).take(150) {
            heard += 1;
            if later - first > 40_000 {
                dropped += 1;
            }
        }
    }
    let earliest = late.iter().min().copied().unwrap_or(0);
    let off = late.iter().map(|l| l - earliest).max().unwrap_or(0);
    (dropped as f64 / heard.max(1) as f64, off as f64 / 1000.0)
}

/// What a live pipe gave its listeners: the correlation of what the first one (there before
/// the floor started) heard with what was said, its summary, the late and all frames of the
/// listeners who joined while it played, the floor's log and its `ended` line.
struct Piped {
    correlation: f64,
    summary: serde_json::Value,
    joined_late: u64,
    joined_frames: u64,
    /// The share of frames listeners joining at any frame would drop as late.
    dropped: f64,
    log: String,
    ended: serde_json::Value,
}

/// `ffmpeg -re` writing speech in the form `args` gives to a pipe into `boothcast floor
/// --input-file -`, heard by listeners with a 40 ms margin: one there from the start, and six
/// who join one after the other while the floor speaks (a delegate joins at any moment: a
/// frame that leaves in a clump is late for a listener whose first frame was the last of an
/// earlier clump).
fn live_pipe(name: &str, args: &str) -> Piped {
    let dir = tmpdir(name);
    let said = dir.join("said.wav");
    speak(
        "Good morning. The floor is given to the delegation of Azerbaijan, on the report of the working group.",
        &said,
    );
    let (_relay, url) = serve(&dir, proc::EVENT);
    let heard = dir.join("heard.wav");
    let mut listener = listen_tight(&url, "plenary/floor", "12", &heard);
    listener.wait_for("\"type\":\"subscribed\"", Duration::from_secs(10));
    let times = frame_times(&url, "plenary/floor", 12);
    let log = dir.join("floor.log");
    let lines = dir.join("floor.jsonl");
    let mut floor = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ffmpeg -v error -re -i '{}' {args} - | '{BIN}' floor --server {url} \
             --secret floor-secret --input-file - >'{}' 2>'{}'",
            said.display(),
            lines.display(),
            log.display()
        ))
        .spawn()
        .unwrap();
    listener.wait_for("\"type\":\"hearing\"", Duration::from_secs(10));
    let mut joined = Vec::new();
    for i in 0..6 {
        std::thread::sleep(Duration::from_millis(370));
        let out = dir.join(format!("joined{i}.wav"));
        joined.push(listen_tight(&url, "plenary/floor", "3", &out));
    }
    assert!(floor.wait().unwrap().success());
    let summary = summary(&listener.finish(Duration::from_secs(30)));
    let (mut joined_late, mut joined_frames) = (0, 0);
    for l in joined {
        let s = self::summary(&l.finish(Duration::from_secs(30)));
        joined_late += s["late"].as_u64().unwrap();
        joined_frames += s["frames"].as_u64().unwrap();
    }
    let log = std::fs::read_to_string(&log).unwrap();
    let ended = std::fs::read_to_string(&lines)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "ended")
        .expect("the floor's ended line");
    let correlation = correlation(&said, 1.0, &heard);
    let times = times.join().unwrap();
    let gap = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let (dropped, off) = late_for_joiners(&times);
    println!(
        "{name}: {} frames, gaps up to {} ms, up to {off:.0} ms off a 20 ms clock, {:.1} % late \
         for listeners joining at any frame; correlation {correlation:.3}, late {} of {} \
         frames; listeners who joined: late {joined_late} of {joined_frames} frames; floor \
         overruns {}\n{log}",
        times.len(),
        gap.as_millis(),
        dropped * 100.0,
        summary["late"],
        summary["frames"],
        ended["overruns"]
    );
    Piped {
        correlation,
        summary,
        joined_late,
        joined_frames,
        dropped,
        log,
        ended,
    }
}

/// ffmpeg writes MP3 to a pipe in bursts (what it read of its input at once, about 0.1 s): the
/// floor sends it on a steady clock, and listeners with a 40 ms margin, whenever they joined,
/// hear all of it.
#[test]
fn a_live_mp3_pipe_is_sent_evenly() {
    let p = live_pipe("pipe-mp3", "-ar 44100 -b:a 128k -f mp3");
    assert!(
        p.correlation >= 0.9,
        "heard: {:.3}, {}",
        p.correlation,
        p.summary
    );
    assert!(p.joined_frames > 300, "{}", p.joined_frames);
    // A frame late now and then on a busy machine; not clumps.
    assert!(
        p.joined_late * 100 <= p.joined_frames,
        "late {} of {} frames",
        p.joined_late,
        p.joined_frames
    );
    // Frames leave on a steady clock, not in clumps of what came at once, for whoever joins
    // whenever (a share rather than a time: a busy machine delays a frame now and then).
    assert!(p.dropped < 0.01, "{:.1} % late", p.dropped * 100.0);
    assert!(!p.log.contains("dropped"), "{}", p.log);
}

/// ffmpeg's Ogg pages hold a second each, and come a second apart: the floor holds a page and
/// sends it evenly, drops nothing, and says so once in its log with what would shorten it.
#[test]
fn a_live_ogg_opus_pipe_is_sent_evenly_behind_its_pages() {
    let p = live_pipe("pipe-ogg", "-c:a libopus -f ogg");
    assert!(
        p.correlation >= 0.9,
        "heard: {:.3}, {}",
        p.correlation,
        p.summary
    );
    assert!(
        p.joined_late * 100 <= p.joined_frames,
        "late {} of {} frames",
        p.joined_late,
        p.joined_frames
    );
    assert!(p.dropped < 0.01, "{:.1} % late", p.dropped * 100.0);
    assert_eq!(p.ended["overruns"], 0, "{}", p.ended);
    assert_eq!(p.log.matches("arrives in bursts").count(), 1, "{}", p.log);
    assert!(p.log.contains("(Ogg pages)"), "{}", p.log);
    assert!(p.log.contains("-page_duration 20000"), "{}", p.log);
}

/// Files cut short play what is there, with one warning naming the file: an Ogg Opus file
/// whose last page is cut, an MP3 cut in the middle of a frame.
#[test]
fn files_cut_short_play_what_is_there_with_one_warning() {
    let dir = tmpdir("cut");
    speak(
        "Distinguished delegates, the working group on border security has finished its report.",
        &dir.join("said.wav"),
    );
    let said = audio::read_wav(&dir.join("said.wav")).unwrap();
    let mut files = Vec::new();
    for (name, args) in [
        ("said.opus", &["-c:a", "libopus"][..]),
        ("said.mp3", &["-c:a", "libmp3lame", "-b:a", "64k"][..]),
    ] {
        let whole = std::fs::read(ffmpeg(&dir, "said.wav", args, name)).unwrap();
        let cut = dir.join(format!("cut-{name}"));
        std::fs::write(&cut, &whole[..whole.len() * 6 / 10 + 7]).unwrap();
        // What is there, as the input decodes it.
        let there = boothcast::input::decode_file(&cut, 10 * SAMPLE_RATE as usize).unwrap();
        files.push((cut, there.len() as f64 / said.len() as f64));
    }
    let (_relay, url) = serve(&dir, &event(files.len()));
    let mut listeners = Vec::new();
    for i in 0..files.len() {
        let heard = dir.join(format!("heard{i}.wav"));
        let mut l = listen(&url, &format!("r{i}/floor"), "7", &heard);
        l.wait_for("\"type\":\"subscribed\"", Duration::from_secs(10));
        listeners.push((l, heard));
    }
    let floors: Vec<_> = files
        .iter()
        .enumerate()
        .map(|(i, (file, _))| {
            Command::new(BIN)
                .args([
                    "floor",
                    "--room",
                    &format!("r{i}"),
                    "--secret",
                    "floor-secret",
                ])
                .args(["--server", &url, "--input-file"])
                .arg(file)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (floor, (file, fraction)) in floors.into_iter().zip(&files) {
        let out = floor.wait_with_output().unwrap();
        assert!(out.status.success());
        let log = String::from_utf8_lossy(&out.stderr);
        println!(
            "{} ({:.0} % of the speech): {log}",
            file.display(),
            fraction * 100.0
        );
        assert_eq!(log.matches("ends early").count(), 1, "{log}");
        assert!(log.contains(&*file.to_string_lossy()), "{log}");
        assert!((0.3..0.9).contains(fraction), "{fraction}");
    }
    for ((l, heard), (file, fraction)) in listeners.into_iter().zip(&files) {
        l.finish(Duration::from_secs(30));
        let c = correlation(&dir.join("said.wav"), *fraction, &heard);
        println!("{}: correlation {c:.3}", file.display());
        assert!(c >= 0.9, "{}: {c:.3}", file.display());
    }
}

/// AAC starts with the encoder's priming (1,024 samples), which an M4A file's edit list
/// declares: it is dropped, so an M4A starts with its sound where the WAV it was made from does.
#[test]
fn an_m4a_starts_where_its_wav_does() {
    let dir = tmpdir("m4a");
    speak("Thank you, chair.", &dir.join("said.wav"));
    let m4a = ffmpeg(&dir, "said.wav", &["-c:a", "aac"], "said.m4a");
    let max = 10 * SAMPLE_RATE as usize;
    let wav = boothcast::input::decode_file(&dir.join("said.wav"), max).unwrap();
    let aac = boothcast::input::decode_file(&m4a, max).unwrap();
    // A lag either way: each signal as the one that may come later.
    let late = align(&wav, &aac, SAMPLE_RATE as usize / 10);
    let early = align(&aac, &wav, SAMPLE_RATE as usize / 10);
    println!(
        "M4A against WAV: {} samples late (correlation {:.3}), {} early ({:.3}); {} and {} samples long",
        late.lag, late.correlation, early.lag, early.correlation, aac.len(), wav.len()
    );
    let lag = if late.correlation >= early.correlation {
        late.lag
    } else {
        early.lag
    };
    assert!(late.correlation.max(early.correlation) > 0.9);
    // Within a millisecond.
    assert!(lag <= 48, "the M4A is {lag} samples off");
}

/// `listen --output-file -` writes nothing but the WAV stream to standard output: every JSON
/// line (the welcome of each connection, a refusal) goes to standard error; the stream starts
/// once a relay welcomed the listener, and a refused listener writes nothing there at all.
#[test]
fn listen_to_standard_output_writes_only_sound_across_reconnects_and_refusals() {
    use std::io::{BufRead, BufReader, Read};
    let dir = tmpdir("stdout-only");
    let said = dir.join("said.wav");
    speak("The session is suspended for ten minutes.", &said);
    let (first, first_url) = serve(&dir, proc::EVENT);
    let (_second, second_url) = serve(&dir, proc::EVENT);

    // Refused (no such channel): nothing on standard output, the refusal on standard error.
    let out = Command::new(BIN)
        .args(["listen", "--server", &first_url, "--lang", "plenary/xx"])
        .args(["--seconds", "3", "--output-file", "-"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("\"type\":\"error\""), "{err}");
    assert_eq!(
        out.stdout.len(),
        0,
        "written on a refusal: {:?}",
        out.stdout
    );

    // Welcomed by the first relay, which then goes away; welcomed again by the second.
    let mut child = Command::new(BIN)
        .args(["listen", "--server", &first_url, "--server", &second_url])
        .args(["--lang", "plenary/floor", "--seconds", "9"])
        .args(["--buffer-ms", "1000", "--output-file", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let wav = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        stdout.read_to_end(&mut bytes).unwrap();
        bytes
    });
    let (tx, lines) = std::sync::mpsc::channel();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let mut wait_for = |text: &str, count: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.iter().filter(|l: &&String| l.contains(text)).count() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {text} × {count}: {seen:#?}"));
            seen.push(line);
        }
        seen.clone()
    };
    wait_for("\"type\":\"subscribed\"", 1);
    drop(first);
    wait_for("\"type\":\"subscribed\"", 2);
    let floor = Command::new(BIN)
        .args(["floor", "--server", &second_url, "--secret", "floor-secret"])
        .arg("--input-file")
        .arg(&said)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(floor.success());
    let lines = wait_for("\"type\":\"summary\"", 1);
    assert!(child.wait().unwrap().success());
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("\"type\":\"welcome\""))
            .count(),
        2,
        "{lines:#?}"
    );
    let mut bytes = wav.join().unwrap();
    assert!(bytes.len() > 44 + 8 * 96_000, "{} bytes", bytes.len());
    assert_eq!(&bytes[..4], b"RIFF");
    assert_eq!(&bytes[36..40], b"data");
    let json = bytes[44..].windows(7).position(|w| w == b"{\"type\"");
    assert_eq!(json, None, "JSON in the sound at byte {json:?}");
    // What was heard from the second relay, with the stream's sizes made true for the reader.
    let len = bytes.len() as u32;
    bytes[4..8].copy_from_slice(&(len - 8).to_le_bytes());
    bytes[40..44].copy_from_slice(&(len - 44).to_le_bytes());
    let heard = dir.join("heard.wav");
    std::fs::write(&heard, &bytes).unwrap();
    let c = correlation(&said, 1.0, &heard);
    println!("listen --output-file - across a reconnect: correlation {c:.3}");
    assert!(c >= 0.9, "{c:.3}");
}
