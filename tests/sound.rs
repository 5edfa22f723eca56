//! Sound in from what a sound engineer has, and out to what a listener has, with the real
//! binary: files in every common form (made here with sox and ffmpeg) as the floor and as a
//! booth; a live pipe from ffmpeg; the HTTP stream played by ffmpeg across a booth going live
//! and muting.

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
    for (file, what) in [
        (&text, "it is a text file"),
        (
            &gsm,
            "it is a WAV file whose audio is coded as format 0x0031 (GSM 6.10)",
        ),
        (&empty, "it is an empty file"),
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
    }
    // Standard input: nothing at all (the program writing it failed), then text.
    for (input, what) in [
        ("", "it is an empty stream"),
        (
            "agenda: opening remarks\n",
            "a stream whose first bytes look like a text file",
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
        floor
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
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
            let mut buf = [0u8; 4096];
            while Instant::now() < until {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(_) => {}
                }
            }
            out
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
    let raw = raw.join().unwrap();
    ogg_is_one_continuous_stream(&raw);
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
