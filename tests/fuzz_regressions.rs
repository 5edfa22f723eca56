//! The fuzz targets' checks (`fuzz/src/lib.rs`, included here) on the committed seeds
//! (`fuzz/seeds/<target>/`) and on every input a fuzz target has failed on
//! (`tests/fuzz-seeds/<target>/`), and the precise refusal each of those inputs gets now.
//! `scripts/fuzz.sh` runs the targets themselves.

#[path = "../fuzz/src/lib.rs"]
mod checks;

use boothcast::config::Event;
use boothcast::protocol::{FrameError, SenderHealth, ServerMessage};
use boothcast::relay;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn dir(parts: &[&str]) -> PathBuf {
    parts.iter().fold(
        Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf(),
        |p, s| p.join(s),
    )
}

/// Every file under `fuzz/seeds/<target>/` and `tests/fuzz-seeds/<target>/`.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for d in [
        dir(&["fuzz", "seeds", target]),
        dir(&["tests", "fuzz-seeds", target]),
    ] {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            out.push((path, data));
        }
    }
    out.sort();
    assert!(!out.is_empty(), "no seeds for {target}");
    out
}

/// Runs `check` on every input of `target`, and names each input that fails.
fn run(target: &str, check: fn(&[u8])) {
    let failed: Vec<String> = inputs(target)
        .into_iter()
        .filter_map(|(path, data)| {
            catch_unwind(AssertUnwindSafe(|| check(&data)))
                .err()
                .map(|_| path.display().to_string())
        })
        .collect();
    assert!(failed.is_empty(), "{target}: failed on {failed:?}");
}

fn regression(target: &str, name: &str) -> Vec<u8> {
    std::fs::read(dir(&["tests", "fuzz-seeds", target, name])).unwrap()
}

#[test]
fn frame_seeds() {
    run("frame", checks::frame);
}

#[test]
fn opus_packet_seeds() {
    run("opus_packet", checks::opus_packet);
}

#[test]
fn client_message_seeds() {
    run("client_message", checks::client_message);
}

#[test]
fn server_message_seeds() {
    run("server_message", checks::server_message);
}

#[test]
fn event_seeds() {
    run("event", checks::event);
}

#[test]
fn input_file_seeds() {
    run("input_file", checks::input_file);
    // The seeds are real files of every kind of container: each decodes to sound.
    for entry in std::fs::read_dir(dir(&["fuzz", "seeds", "input_file"])).unwrap() {
        let path = entry.unwrap().path();
        let samples = boothcast::input::decode_file(&path, checks::INPUT_MAX_SAMPLES).unwrap();
        assert!(samples.len() > 480, "{}: {}", path.display(), samples.len());
    }
}

#[test]
fn wav_seeds() {
    run("wav", checks::wav);
}

/// The relay carried a code 3 Opus packet counting zero frames, which the recorder then failed
/// to write (a packet of 0 samples), marking the recording failed.
#[test]
fn a_packet_of_zero_frames_is_refused() {
    let no_frame = Err(FrameError::Opus(
        "the Opus packet holds no frame (a code 3 packet with a frame count of 0)".into(),
    ));
    for name in ["zero-frame-code3", "zero-frame-code3-as-found"] {
        assert_eq!(
            relay::check_frame(&regression("frame", name)),
            no_frame,
            "{name}"
        );
    }
}

/// A NUL in a comment was refused with an empty message ("fuzz.toml:12: syntax: ").
#[test]
fn a_control_character_in_the_event_file_is_named() {
    for (name, line) in [
        ("nul-in-comment.toml", 1),
        ("nul-in-comment-line-12.toml", 12),
    ] {
        let text = String::from_utf8(regression("event", name)).unwrap();
        let err = Event::parse(&text, "event.toml", &|_| None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!("event.toml:{line}: syntax: invalid TOML: unexpected character '\\0'"),
            "{name}"
        );
    }
}

/// An unknown empty key was refused with no field: "fuzz.toml:1: : unknown field ``".
#[test]
fn an_unknown_empty_key_is_named() {
    let text = String::from_utf8(regression("event", "empty-key.toml")).unwrap();
    let err = Event::parse(&text, "event.toml", &|_| None)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "event.toml:1: \"\": unknown field ``, expected one of `event`, `secrets`, `rooms`"
    );
}

/// A client read `jitter_ms` 4.444444444444444e44 from the relay's JSON as the next float up:
/// serde_json parses floats exactly only with its `float_roundtrip` feature.
#[test]
fn figures_read_back_exactly() {
    let text = String::from_utf8(regression("server_message", "long-decimal-jitter")).unwrap();
    let m = ServerMessage::parse(&text).unwrap();
    assert_eq!(ServerMessage::parse(&m.to_json()).unwrap(), m);
    let sent = ServerMessage::Health {
        senders: vec![SenderHealth {
            who: "en/1".into(),
            rtt_ms: Some(0.1 + 0.2),
            jitter_ms: 4.444444444444444e44,
            frames: 1,
            lost: 0,
            reconnects: 0,
            overruns: 0,
            silent_ms: None,
            node: None,
        }],
    };
    assert_eq!(ServerMessage::parse(&sent.to_json()).unwrap(), sent);
}

/// Damaged files on which symphonia 0.6.1 fails, upstream: a Matroska file on which
/// `next_packet` loops for ever (`floor --input-file` would send nothing and spin a core; the
/// `input_file` fuzz target leaves Matroska out until it is fixed), and a WAV header whose
/// block size overflows (a panic in debug builds, wrapping arithmetic in release builds).
/// Run with `--run-ignored only` to see whether a new symphonia fixes them.
#[test]
#[ignore = "symphonia 0.6.1 hangs or overflows on these inputs"]
fn damaged_files_that_symphonia_fails_on_end() {
    for name in [
        "input_file-mkv-next-packet",
        "input_file-wav-block-align-overflow",
    ] {
        let path = dir(&["tests", "fuzz-seeds", "known-upstream", name]);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ =
                tx.send(boothcast::input::decode_file(&path, checks::INPUT_MAX_SAMPLES).is_ok());
        });
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{name}: decoding does not end: {e:?}"));
    }
}

/// A damaged MP4 file whose demuxer reported the same damage for ever: the input looped on it
/// (`floor --input-file` sent nothing and spun a core). It now ends after 1,000 damaged
/// packets in a row, with what it had read.
#[test]
fn endless_damage_ends_the_input() {
    let path = dir(&["tests", "fuzz-seeds", "input_file", "mp4-endless-damage"]);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx
            .send(boothcast::input::decode_file(&path, checks::INPUT_MAX_SAMPLES).map(|s| s.len()));
    });
    let decoded = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("decoding ends within 10 s");
    assert!(decoded.is_ok(), "{decoded:?}");
}
