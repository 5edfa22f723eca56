//! Sound in for the floor and the booths: audio files and live streams, decoded, taken to
//! 48 kHz mono and cut into frames at the pace a microphone would deliver them.
//!
//! # Decoding
//! Files and streams are decoded by [symphonia], a pure-Rust demuxing and decoding library
//! that is actively maintained, needs no system libraries (no FFmpeg to install or link on a
//! booth's laptop), is fuzzed upstream, and reads from anything that implements `Read`, so a
//! pipe is read as it arrives. It is built with all its formats and codecs: WAV (PCM 8/16/24/32
//! bit, float, A-law, µ-law, ADPCM; plain, `WAVE_FORMAT_EXTENSIBLE` and Broadcast WAV; chunks of
//! odd length are skipped with their pad byte; size fields of `0xFFFFFFFF`, as ffmpeg writes
//! them to a pipe, read as "until the end"), AIFF, CAF, FLAC, MP1/MP2/MP3, Ogg Vorbis and Ogg
//! FLAC, AAC and ALAC in MP4/M4A, Matroska/WebM, ADTS AAC. symphonia demuxes Ogg Opus but does
//! not decode Opus: those packets go to libopus, which the relay links anyway
//! ([`crate::audio::Decoder`]), with the stream's pre-skip dropped. Every case of the WAV
//! table above is read by symphonia as it is (tested in `tests/sound.rs`), so no header
//! fix-up sits in front of it.
//!
//! A file cut short (a recorder killed mid-write) plays what is there, with one warning naming
//! the file: it is known to be cut when it holds less than its header says, when its last Ogg
//! page is cut ([`container`]), or when it opens only when read from its start as a stream. An
//! Ogg file cut before its first page of sound ends has nothing to play, and is refused as
//! such. A file that cannot be decoded is refused with [`Error::Unsupported`], which says what
//! the file is (a WAV header cut short, a channel count that cannot be, an MP4 without its
//! index...) and what would be accepted. The encoder delay an MP4/M4A file declares (its edit
//! list: the AAC encoder's priming) is dropped, as libopus's pre-skip is, so that every format's
//! sound starts at the same time.
//!
//! # Pacing
//! [`Feed::next`] hands out one frame at a time with its capture time. A regular file is paced
//! by the clock: frame *k* leaves when its last sample would have been captured. A pipe, a FIFO
//! or standard input (`-`) is live: its sound is sent on a steady clock as it arrives, behind a
//! pacing buffer ([`pace`]) that holds just as much as the input's bursts need. Programs write
//! to a pipe in bursts: ffmpeg `-re` what it read of its own input (about 0.1 s at a time), an
//! Ogg muxer a page at a time (ffmpeg's pages hold 1 s). Sent as they arrive, such bursts leave
//! in clumps that listeners drop as late; held by the length of the burst, they leave every
//! 20 ms. The hold is measured (the longest burst of the last seconds, plus a few milliseconds
//! for this process's own threads, plus 0.1 s during the first seconds while the bursts are
//! learned), said once in the log with what would shorten it, and shortened again when the
//! bursts get shorter (frames leave a little early, nothing is dropped). What would wait more than [`MAX_HOLD`] for longer than a
//! moment is dropped, the oldest first (counted as overruns, said once in the log): a stall of
//! the input is a gap followed by at most [`MAX_HOLD`] of what it held back, and a recording
//! sent through a pipe faster than real time is skipped through, so a recording must come at
//! real time (`ffmpeg -re`). What a program writes at once as it ends is sent in full.
//!
//! The decoding runs on its own thread and hands blocks of 48 kHz mono samples, each with the
//! time it was decoded, to the feed through a bounded queue: a file's reader waits for room, a
//! live reader drops what does not fit (counted) so that the pipe upstream is always read.

mod container;
mod decode;
mod describe;
mod feed;
pub mod pace;

pub use feed::Feed;

use decode::Decoding;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The most a live input's pacing buffer holds beyond the frame being sent: bursts up to this
/// long (two of ffmpeg's Ogg pages) are sent evenly; what would wait longer is dropped, the
/// oldest first, so that a stall's backlog does not stay behind for long.
pub const MAX_HOLD: Duration = Duration::from_secs(2);
/// Blocks of decoded sound between the decoding thread and the feed (a block is one packet of
/// the input, from 2.5 ms to a few tens of milliseconds): a burst of [`MAX_HOLD`] in packets of
/// 10 ms or more fits while the feed takes it.
pub(crate) const QUEUE: usize = 256;

/// Decoded sound: 48 kHz mono samples, and when they were decoded.
pub(crate) struct Block {
    pub at: Instant,
    pub pcm: Vec<f32>,
}

/// What the inputs accept, for refusals.
pub const ACCEPTED: &str = "WAV (PCM 8/16/24/32-bit, float, A-law/µ-law, ADPCM, extensible, \
    Broadcast WAV), FLAC, MP3, Ogg Vorbis, Ogg Opus, AIFF, CAF, MP4/M4A (AAC, ALAC), \
    Matroska/WebM (those codecs), as a file, a FIFO, or a stream on standard input (`-`)";

/// Errors of an input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file or pipe could not be opened (the reason is in the message, not a source).
    #[error("cannot open {}: {error}; check the path and its permissions", path.display())]
    Open {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The path names a directory.
    #[error("{} is a directory: name a sound file (or a FIFO, or `-` for standard input)", path.display())]
    Directory { path: PathBuf },
    /// Not a format or codec that can be decoded.
    #[error("cannot decode {}: it is {what}; accepted: {ACCEPTED}", path.display())]
    Unsupported { path: PathBuf, what: String },
    /// `--loop` with an input that cannot be read twice.
    #[error("{} is a stream (a pipe, FIFO or standard input): it cannot be looped; loop a file instead", path.display())]
    LoopStream { path: PathBuf },
    /// The decoding thread could not be started.
    #[error("cannot start reading {}: {error}", path.display())]
    Thread {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Where an input's sound comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file: paced by the clock, may be looped.
    File,
    /// A pipe, FIFO, socket, character device or standard input: paced by its arrival.
    Live,
}

/// The kind of input `path` names (`-` is standard input).
///
/// Errors: [`Error::Open`] when it does not exist or cannot be looked at, [`Error::Directory`].
pub fn kind(path: &Path) -> Result<Kind, Error> {
    if is_stdin(path) {
        return Ok(Kind::Live);
    }
    let meta = std::fs::metadata(path).map_err(|error| Error::Open {
        path: path.to_owned(),
        error,
    })?;
    if meta.is_dir() {
        return Err(Error::Directory {
            path: path.to_owned(),
        });
    }
    Ok(if meta.is_file() {
        Kind::File
    } else {
        Kind::Live
    })
}

/// `-` names standard input.
pub fn is_stdin(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// How an input is named in messages: its path, or "standard input".
fn shown(path: &Path) -> PathBuf {
    if is_stdin(path) {
        PathBuf::from("standard input")
    } else {
        path.to_owned()
    }
}

/// Decodes the regular file at `path` as [`open`] does, but at once instead of paced: its
/// sound as 48 kHz mono samples, at most `max_samples` of them (decoding stops there). For
/// tests and fuzzing.
///
/// Errors: [`Error::Open`], [`Error::Directory`], [`Error::Unsupported`] (with what the file
/// is).
pub fn decode_file(path: &Path, max_samples: usize) -> Result<Vec<f32>, Error> {
    if kind(path)? != Kind::File {
        return Err(Error::Unsupported {
            path: path.to_owned(),
            what: "not a regular file".into(),
        });
    }
    let mut decoding = Decoding::open(path, Kind::File)?;
    let mut out = Vec::new();
    while out.len() < max_samples {
        let Some(block) = decoding.next() else { break };
        out.extend_from_slice(&block[..block.len().min(max_samples - out.len())]);
    }
    Ok(out)
}

/// Opens `path` (a file, a FIFO, or `-` for standard input), checks that it decodes, and
/// starts reading it on its own thread. `frame` is the samples per frame (at 48 kHz).
///
/// Errors: [`Error::Open`], [`Error::Directory`], [`Error::Unsupported`] (with what the input
/// is), [`Error::LoopStream`] for `looped` with a stream, [`Error::Thread`].
pub fn open(path: &Path, looped: bool, frame: usize) -> Result<Feed, Error> {
    let kind = kind(path)?;
    if looped && kind == Kind::Live {
        return Err(Error::LoopStream {
            path: path.to_owned(),
        });
    }
    let decoding = Decoding::open(path, kind)?;
    let bursts = decoding.bursts();
    let (tx, rx) = mpsc::channel(QUEUE);
    let overruns = Arc::new(AtomicU64::new(0));
    let thread_overruns = overruns.clone();
    let thread_path = path.to_owned();
    std::thread::Builder::new()
        .name("input".into())
        .spawn(move || decode::read(decoding, thread_path, kind, looped, tx, thread_overruns))
        .map_err(|error| Error::Thread {
            path: path.to_owned(),
            error,
        })?;
    Ok(Feed::new(rx, kind, frame, overruns).told(shown(path), bursts))
}
