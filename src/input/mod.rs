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
//! table above is read by symphonia as it is (tested in `tests/sound_in.rs`), so no header
//! fix-up sits in front of it.
//!
//! A file cut short (a recorder killed mid-write) plays what is there, with one warning naming
//! the file. A file that cannot be decoded is refused with [`Error::Unsupported`], which says
//! what the file is and what would be accepted.
//!
//! # Pacing
//! [`Feed::next`] hands out one frame at a time with its capture time. A regular file is paced
//! by the clock: frame *k* leaves when its last sample would have been captured. A pipe, a FIFO
//! or standard input (`-`) is live: its newest sound has just been captured, so it sets the
//! timeline, and a frame leaves as soon as it is whole. When the input stalls and then
//! delivers its backlog at once (or starts with a burst, as `ffmpeg -re` does), what is more
//! than [`MAX_BACKLOG`] behind the newest sound is dropped (counted as overruns): a stall is a
//! gap, never a burst that the relay's sender rate limit would refuse, and the channel stays
//! live. A recording sent through a pipe must therefore come at real time (`ffmpeg -re`);
//! faster, it would be skipped through.
//!
//! The decoding runs on its own thread and hands blocks of 48 kHz mono samples to the feed
//! through a bounded queue: a file's reader waits for room, a live reader drops what does not
//! fit (counted) so that the pipe upstream is always read.

mod decode;
mod feed;

pub use feed::Feed;

use decode::Decoding;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// What a live input may have waiting beyond the frame being sent before the oldest is
/// dropped: a stall's backlog is not sent late. A quarter of a second also holds the largest
/// blocks common tools write to a pipe (ffmpeg's 1,024 samples at 8 kHz are 128 ms).
pub const MAX_BACKLOG: Duration = Duration::from_millis(250);
/// Blocks of decoded sound between the decoding thread and the feed (a block is one packet of
/// the input, at most a few tens of milliseconds for the common formats).
pub(crate) const QUEUE: usize = 64;

/// What the inputs accept, for refusals.
pub const ACCEPTED: &str = "WAV (PCM 8/16/24/32-bit, float, A-law/µ-law, ADPCM, extensible, \
    Broadcast WAV), FLAC, MP3, Ogg Vorbis, Ogg Opus, AIFF, CAF, MP4/M4A (AAC, ALAC), \
    Matroska/WebM (those codecs), as a file, a FIFO, or a stream on standard input (`-`)";

/// Errors of an input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file or pipe could not be opened.
    #[error("cannot open {}: {source}; check the path and its permissions", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not a format or codec that can be decoded.
    #[error("cannot decode {}: it is {what}; accepted: {ACCEPTED}", path.display())]
    Unsupported { path: PathBuf, what: String },
    /// `--loop` with an input that cannot be read twice.
    #[error("{} is a stream (a pipe, FIFO or standard input): it cannot be looped; loop a file instead", path.display())]
    LoopStream { path: PathBuf },
    /// The decoding thread could not be started.
    #[error("cannot start reading {}: {source}", path.display())]
    Thread {
        path: PathBuf,
        #[source]
        source: std::io::Error,
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
pub fn kind(path: &Path) -> Result<Kind, Error> {
    if is_stdin(path) {
        return Ok(Kind::Live);
    }
    let meta = std::fs::metadata(path).map_err(|source| Error::Open {
        path: path.to_owned(),
        source,
    })?;
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
/// Errors: [`Error::Open`], [`Error::Unsupported`] (with what the file is).
pub fn decode_file(path: &Path, max_samples: usize) -> Result<Vec<f32>, Error> {
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
/// Errors: [`Error::Open`], [`Error::Unsupported`] (with what the input is),
/// [`Error::LoopStream`] for `looped` with a stream.
pub fn open(path: &Path, looped: bool, frame: usize) -> Result<Feed, Error> {
    let kind = kind(path)?;
    if looped && kind == Kind::Live {
        return Err(Error::LoopStream {
            path: path.to_owned(),
        });
    }
    let decoding = Decoding::open(path, kind)?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let overruns = Arc::new(AtomicU64::new(0));
    let thread_overruns = overruns.clone();
    let thread_path = path.to_owned();
    std::thread::Builder::new()
        .name("input".into())
        .spawn(move || decode::read(decoding, thread_path, kind, looped, tx, thread_overruns))
        .map_err(|source| Error::Thread {
            path: path.to_owned(),
            source,
        })?;
    Ok(Feed::new(rx, kind, frame, overruns))
}
