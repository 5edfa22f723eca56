//! The fuzz targets' checks (`fuzz/src/lib.rs`, included here) on the committed seeds
//! (`fuzz/seeds/<target>/`) and on every input a fuzz target has failed on
//! (`tests/fuzz-seeds/<target>/`), and the precise refusal each of those inputs gets now.
//! `scripts/fuzz.sh` runs the targets themselves.

#[path = "../fuzz/src/lib.rs"]
mod checks;

use boothcast::config::Event;
use boothcast::protocol::FrameError;
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
