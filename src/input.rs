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
//! by the clock: frame *k* leaves when its last sample would have been captured. A pipe,
//! FIFO or standard input (`-`) is live: a frame leaves as soon as it has arrived, never
//! earlier than the clock allows (so a file piped in with `cat` still goes at real time), and
//! when the input stalls and then delivers its backlog at once, what is more than
//! [`MAX_BACKLOG`] behind the newest sound is dropped (counted as overruns), so a stall is a
//! gap and never a burst that the relay's sender rate limit would refuse.
//!
//! The decoding runs on its own thread and hands blocks of 48 kHz mono samples to the feed
//! through a bounded queue: a file's reader waits for room, a live reader drops what does not
//! fit (counted) so that the pipe upstream is always read.

use crate::audio::{self, SAMPLE_RATE};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use symphonia::core::codecs::audio::{AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, TrackType};
use symphonia::core::io::{MediaSource, MediaSourceStream, ReadOnlySource};
use symphonia::core::meta::MetadataOptions;
use tokio::sync::mpsc;

/// What a live input may have waiting beyond the frame being sent before the oldest is
/// dropped: a stall's backlog is not sent late. A quarter of a second also holds the largest
/// blocks common tools write to a pipe (ffmpeg's 1,024 samples at 8 kHz are 128 ms).
pub const MAX_BACKLOG: Duration = Duration::from_millis(250);
/// Blocks of decoded sound between the decoding thread and the feed (a block is one packet of
/// the input, at most a few tens of milliseconds for the common formats).
const QUEUE: usize = 64;
/// Silent frames sent after a file's end, so the listener's decoder finishes the last word.
const TAIL_FRAMES: u64 = 10;
/// `now` minus the duration of `samples`: the anchor that makes sample `samples` due now.
fn back(now: Instant, samples: u64) -> Instant {
    now.checked_sub(Duration::from_micros(
        samples * 1_000_000 / u64::from(SAMPLE_RATE),
    ))
    .unwrap_or(now)
}

/// [`MAX_BACKLOG`] in samples at 48 kHz.
fn backlog_limit() -> usize {
    MAX_BACKLOG.as_micros() as usize * SAMPLE_RATE as usize / 1_000_000
}

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
        .spawn(move || read(decoding, thread_path, kind, looped, tx, thread_overruns))
        .map_err(|source| Error::Thread {
            path: path.to_owned(),
            source,
        })?;
    Ok(Feed::new(rx, kind, frame, overruns))
}

/// Microseconds since the Unix epoch.
fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Decoding

/// The codec side of an input: symphonia's decoder, or libopus for Ogg Opus.
enum Codec {
    Symphonia(Box<dyn AudioDecoder>),
    /// libopus, 48 kHz mono (it downmixes stereo itself); `skip` samples of pre-skip left.
    Opus {
        decoder: audio::Decoder,
        skip: usize,
    },
}

/// One opened input: the demuxer, the decoder, and the way to 48 kHz mono.
struct Decoding {
    path: PathBuf,
    format: Box<dyn FormatReader>,
    codec: Codec,
    track: u32,
    rate: u32,
    /// Frames (at the input's rate, per channel) the container says it holds, when it says.
    expected: Option<u64>,
    decoded: u64,
    resampler: Option<Resampler>,
    interleaved: Vec<f32>,
}

impl Decoding {
    fn open(path: &Path, kind: Kind) -> Result<Decoding, Error> {
        // The first bytes of a stream are kept, to say what it is if it does not decode.
        let head = Arc::new(std::sync::Mutex::new(Vec::new()));
        let source: Box<dyn MediaSource> = if is_stdin(path) {
            Box::new(ReadOnlySource::new(Head::new(std::io::stdin(), &head)))
        } else {
            let file = std::fs::File::open(path).map_err(|source| Error::Open {
                path: path.to_owned(),
                source,
            })?;
            match kind {
                Kind::File => Box::new(file),
                // A FIFO must not be taken for seekable.
                Kind::Live => Box::new(ReadOnlySource::new(Head::new(file, &head))),
            }
        };
        let mss = MediaSourceStream::new(source, Default::default());
        let mut hint = Hint::new();
        if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
            hint.with_extension(ext);
        }
        let unsupported = |what: String| Error::Unsupported {
            path: shown(path),
            what,
        };
        let format = symphonia::default::get_probe()
            .probe(
                &hint,
                mss,
                FormatOptions::default(),
                MetadataOptions::default(),
            )
            .map_err(|e| {
                let head = head.lock().map(|h| h.clone()).unwrap_or_default();
                unsupported(describe(path, kind, head, &e))
            })?;
        let track = format
            .default_track(TrackType::Audio)
            .ok_or_else(|| unsupported("a media file without an audio track".into()))?;
        let params = track
            .codec_params
            .as_ref()
            .and_then(|p| p.audio())
            .ok_or_else(|| unsupported("a media file without an audio track".into()))?
            .clone();
        let id = track.id;
        let expected = track.num_frames;
        let delay = track.delay.unwrap_or(0) as usize;
        let (codec, rate) =
            if params.codec == symphonia::core::codecs::audio::well_known::CODEC_ID_OPUS {
                let decoder = audio::Decoder::new().map_err(|e| unsupported(e.to_string()))?;
                (
                    Codec::Opus {
                        decoder,
                        skip: delay,
                    },
                    SAMPLE_RATE,
                )
            } else {
                let decoder = symphonia::default::get_codecs()
                    .make_audio_decoder(&params, &AudioDecoderOptions::default())
                    .map_err(|_| {
                        unsupported(format!(
                            "{} coded as {}, which has no decoder here",
                            container(format.format_info().short_name),
                            codec_name(params.codec)
                        ))
                    })?;
                let rate = params
                    .sample_rate
                    .ok_or_else(|| unsupported("audio that does not say its sample rate".into()))?;
                (Codec::Symphonia(decoder), rate)
            };
        if !(8_000..=384_000).contains(&rate) {
            return Err(unsupported(format!(
                "audio at {rate} Hz, outside 8 to 384 kHz"
            )));
        }
        Ok(Decoding {
            path: path.to_owned(),
            format,
            codec,
            track: id,
            rate,
            expected,
            decoded: 0,
            resampler: (rate != SAMPLE_RATE)
                .then(|| Resampler::new(rate))
                .flatten(),
            interleaved: Vec::new(),
        })
    }

    /// The next block of 48 kHz mono samples; `None` at the end (an end that comes early
    /// is warned about, once).
    fn next(&mut self) -> Option<Vec<f32>> {
        loop {
            let packet = match self.format.next_packet() {
                Ok(Some(p)) => p,
                Ok(None) => return self.end(false),
                Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return self.end(true)
                }
                Err(SymError::DecodeError(reason)) => {
                    tracing::debug!(file = %self.path.display(), reason, "damaged data skipped");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(file = %self.path.display(), error = %e, "reading stopped: played what was read");
                    return self.end(false);
                }
            };
            if packet.track_id != self.track {
                continue;
            }
            let mono = match &mut self.codec {
                Codec::Symphonia(decoder) => match decoder.decode(&packet) {
                    Ok(buf) => {
                        let channels = buf.spec().channels().count().max(1);
                        self.decoded += buf.frames() as u64;
                        buf.copy_to_vec_interleaved(&mut self.interleaved);
                        downmix(&self.interleaved, channels)
                    }
                    // A damaged packet: the ones after it still decode.
                    Err(SymError::DecodeError(_) | SymError::IoError(_)) => continue,
                    Err(e) => {
                        tracing::warn!(file = %self.path.display(), error = %e, "decoding stopped: played what was decoded");
                        return self.end(false);
                    }
                },
                Codec::Opus { decoder, skip } => {
                    let mut pcm = match decoder.decode(&packet.data) {
                        Ok(pcm) => pcm,
                        Err(_) => continue,
                    };
                    self.decoded += pcm.len() as u64;
                    let cut = (*skip).min(pcm.len());
                    *skip -= cut;
                    pcm.drain(..cut);
                    pcm
                }
            };
            let out = match &mut self.resampler {
                Some(r) => r.push(&mono),
                None => mono,
            };
            if !out.is_empty() {
                return Some(out);
            }
        }
    }

    /// The end of the input: the resampler's tail, and a warning if it came early.
    fn end(&mut self, eof: bool) -> Option<Vec<f32>> {
        if eof {
            // Streams written to a pipe say nothing of their length; a file that does and
            // holds less than it says was cut short.
            if let Some(expected) = self.expected {
                // A packet's worth of slack: containers count in packets, decoders trim.
                if self.decoded + 5_760 < expected {
                    tracing::warn!(
                        file = %self.path.display(),
                        "the file ends early (cut short?): played the {:.2} s that are there of {:.2} s",
                        self.decoded as f64 / f64::from(self.rate),
                        expected as f64 / f64::from(self.rate),
                    );
                }
            }
            self.expected = None;
        }
        let tail = self
            .resampler
            .as_mut()
            .map(|r| r.finish())
            .unwrap_or_default();
        (!tail.is_empty()).then_some(tail)
    }
}

/// Averages interleaved channels into mono; non-finite samples become silence.
fn downmix(interleaved: &[f32], channels: usize) -> Vec<f32> {
    let inv = 1.0 / channels as f32;
    interleaved
        .chunks_exact(channels)
        .map(|f| {
            let sum: f32 = f.iter().map(|s| if s.is_finite() { *s } else { 0.0 }).sum();
            (sum * inv).clamp(-1.0, 1.0)
        })
        .collect()
}

/// A streaming windowed-sinc resampler to 48 kHz that keeps the input's timing: its own delay
/// is dropped from the front, and `finish` flushes what it still holds.
struct Resampler {
    inner: rubato::SincFixedIn<f32>,
    input: Vec<f32>,
    output: Vec<Vec<f32>>,
    /// Output samples still to drop (the filter's delay).
    skip: usize,
    /// Input and output samples so far, for the length at the end.
    consumed: u64,
    produced: u64,
    rate: u32,
}

/// Input samples per resampler call: about 10 ms at 48 kHz, small enough for a live input.
const RESAMPLE_CHUNK: usize = 512;

impl Resampler {
    fn new(rate: u32) -> Option<Resampler> {
        use rubato::{
            calculate_cutoff, Resampler as _, SincFixedIn, SincInterpolationParameters,
            SincInterpolationType, WindowFunction,
        };
        const SINC_LEN: usize = 128;
        let window = WindowFunction::BlackmanHarris2;
        let params = SincInterpolationParameters {
            sinc_len: SINC_LEN,
            f_cutoff: calculate_cutoff(SINC_LEN, window),
            interpolation: SincInterpolationType::Linear,
            oversampling_factor: 128,
            window,
        };
        let ratio = f64::from(SAMPLE_RATE) / f64::from(rate);
        let inner = SincFixedIn::<f32>::new(ratio, 1.0, params, RESAMPLE_CHUNK, 1).ok()?;
        let skip = inner.output_delay();
        let output = inner.output_buffer_allocate(true);
        Some(Resampler {
            inner,
            input: Vec::with_capacity(RESAMPLE_CHUNK),
            output,
            skip,
            consumed: 0,
            produced: 0,
            rate,
        })
    }

    fn push(&mut self, mono: &[f32]) -> Vec<f32> {
        use rubato::Resampler as _;
        let mut out = Vec::new();
        for &s in mono {
            self.input.push(s);
            if self.input.len() == RESAMPLE_CHUNK {
                if let Ok((_, n)) =
                    self.inner
                        .process_into_buffer(&[&self.input], &mut self.output, None)
                {
                    self.emit(n, &mut out);
                }
                self.consumed += RESAMPLE_CHUNK as u64;
                self.input.clear();
            }
        }
        out
    }

    fn emit(&mut self, n: usize, out: &mut Vec<f32>) {
        let drop = self.skip.min(n);
        self.skip -= drop;
        for &s in &self.output[0][drop..n] {
            out.push(s.clamp(-1.0, 1.0));
        }
        self.produced += (n - drop) as u64;
    }

    /// What is left: the last partial chunk and the filter's tail, up to the input's length.
    fn finish(&mut self) -> Vec<f32> {
        use rubato::Resampler as _;
        let mut out = Vec::new();
        self.consumed += self.input.len() as u64;
        let expected = self.consumed * u64::from(SAMPLE_RATE) / u64::from(self.rate);
        let input = std::mem::take(&mut self.input);
        let mut first = Some(input);
        while self.produced < expected {
            let r = match first.take() {
                Some(i) => {
                    self.inner
                        .process_partial_into_buffer(Some(&[&i]), &mut self.output, None)
                }
                None => self.inner.process_partial_into_buffer(
                    None::<&[&[f32]]>,
                    &mut self.output,
                    None,
                ),
            };
            match r {
                Ok((_, n)) if n > 0 => self.emit(n, &mut out),
                _ => break,
            }
        }
        let extra = (self.produced.saturating_sub(expected)) as usize;
        out.truncate(out.len().saturating_sub(extra));
        self.produced = expected;
        out
    }
}

/// The decoding thread: blocks of sound to the feed until the input ends (or, looped, for
/// ever), then the queue closes.
fn read(
    mut decoding: Decoding,
    path: PathBuf,
    kind: Kind,
    looped: bool,
    tx: mpsc::Sender<Vec<f32>>,
    overruns: Arc<AtomicU64>,
) {
    loop {
        while let Some(block) = decoding.next() {
            match kind {
                // A file waits for room: it is read ahead of the clock anyway.
                Kind::File => {
                    if tx.blocking_send(block).is_err() {
                        return;
                    }
                }
                // A stream is always read, so the pipe upstream never backs up.
                Kind::Live => match tx.try_send(block) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(b)) => {
                        overruns.fetch_add(b.len() as u64, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                },
            }
        }
        if !looped {
            return;
        }
        decoding = match Decoding::open(&path, kind) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the file again for the loop");
                return;
            }
        };
    }
}

// ---------------------------------------------------------------------------
// What an input is, for refusals

/// Says what an input that does not decode is, from its first bytes (`head`, for a stream)
/// and symphonia's error.
fn describe(path: &Path, kind: Kind, head: Vec<u8>, error: &SymError) -> String {
    match kind {
        Kind::File => {
            let mut head = vec![0u8; HEAD];
            match std::fs::File::open(path).and_then(|mut f| {
                use std::io::Read;
                f.read(&mut head)
            }) {
                Ok(n) => {
                    head.truncate(n);
                    sniff(&head)
                }
                Err(_) => format!("not a file that can be decoded ({error})"),
            }
        }
        Kind::Live if head.is_empty() => {
            "an empty stream: it ended before anything came (did the program writing it fail?)"
                .into()
        }
        Kind::Live => format!("a stream whose first bytes look like {}", sniff(&head)),
    }
}

/// Bytes of an input's beginning kept to say what it is.
const HEAD: usize = 64;

/// A reader that keeps the first [`HEAD`] bytes read through it.
struct Head<R> {
    inner: R,
    head: Arc<std::sync::Mutex<Vec<u8>>>,
    kept: usize,
}

impl<R> Head<R> {
    fn new(inner: R, head: &Arc<std::sync::Mutex<Vec<u8>>>) -> Head<R> {
        Head {
            inner,
            head: head.clone(),
            kept: 0,
        }
    }
}

impl<R: std::io::Read> std::io::Read for Head<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.kept < HEAD {
            let take = n.min(HEAD - self.kept);
            if let Ok(mut h) = self.head.lock() {
                h.extend_from_slice(&buf[..take]);
            }
            self.kept += take;
        }
        Ok(n)
    }
}

/// A few words on what a file whose first bytes are `head` is ("a text file").
fn sniff(head: &[u8]) -> String {
    let starts = |magic: &[u8]| head.starts_with(magic);
    if head.is_empty() {
        return "an empty file".into();
    }
    if (starts(b"RIFF") || starts(b"RF64") || starts(b"BW64")) && head.get(8..12) == Some(b"WAVE") {
        return wav_format(head);
    }
    if starts(b"OggS") {
        let codec = if contains(head, b"Speex") {
            "Speex"
        } else if contains(head, b"\x80theora") {
            "Theora video"
        } else {
            "a codec that cannot be decoded here"
        };
        return format!("an Ogg file of {codec}");
    }
    for (magic, what) in [
        (&b"\x89PNG"[..], "a PNG image"),
        (b"\xFF\xD8\xFF", "a JPEG image"),
        (b"%PDF", "a PDF document"),
        (b"PK\x03\x04", "a ZIP archive"),
        (b"\x7FELF", "a program (ELF)"),
        (b"#!", "a script"),
        (b"MThd", "a MIDI file (notes, not sound)"),
        (b"fLaC", "a damaged FLAC file"),
        (b"ID3", "an MP3 file with damaged audio"),
        (b".snd", "a Sun/NeXT .au file"),
    ] {
        if starts(magic) {
            return what.into();
        }
    }
    if head
        .iter()
        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
    {
        return "a text file".into();
    }
    let hex: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("a file of unknown type (it starts {})", hex.join(" "))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// "a WAV file coded as …", from the `fmt ` chunk when it is among the first bytes.
fn wav_format(head: &[u8]) -> String {
    let tag = head
        .windows(4)
        .position(|w| w == b"fmt ")
        .and_then(|i| head.get(i + 8..i + 10))
        .map(|b| u16::from_le_bytes([b[0], b[1]]));
    match tag {
        Some(tag) => {
            let name = match tag {
                0x0031 => " (GSM 6.10)",
                0x0050 => " (MPEG audio)",
                0x0055 => " (MP3)",
                0x0042 | 0x0022 => " (a speech codec)",
                0x0092 | 0x2000 => " (Dolby AC-3)",
                _ => "",
            };
            format!("a WAV file whose audio is coded as format {tag:#06x}{name}")
        }
        None => "a damaged WAV file".into(),
    }
}

fn container(short_name: &str) -> String {
    format!("a {short_name} file")
}

fn codec_name(id: symphonia::core::codecs::audio::AudioCodecId) -> String {
    symphonia::default::get_codecs()
        .get_audio_decoder(id)
        .map(|d| d.codec.info.short_name.to_string())
        .unwrap_or_else(|| format!("codec {id}"))
}

// ---------------------------------------------------------------------------
// Pacing

/// Frames of an input, paced (see the module docs).
pub struct Feed {
    rx: mpsc::Receiver<Vec<f32>>,
    kind: Kind,
    frame: usize,
    /// Samples arrived and not yet sent or dropped.
    pending: VecDeque<f32>,
    /// The media position of `pending`'s first sample, in samples since the start.
    pos: u64,
    ended: bool,
    /// Silent frames still to send after the end.
    tail: u64,
    /// The timeline: sample `n` of the input is due (fully captured) at `anchor + n / 48 kHz`.
    /// `None` until the first frame.
    anchor: Option<Instant>,
    /// When the feed started, on both clocks: capture times are `start_us` plus monotonic time.
    start: Instant,
    start_us: u64,
    /// After an outage, a file's timeline skips to here (a media position in samples).
    skip_to: u64,
    overruns: Arc<AtomicU64>,
}

impl Feed {
    fn new(
        rx: mpsc::Receiver<Vec<f32>>,
        kind: Kind,
        frame: usize,
        overruns: Arc<AtomicU64>,
    ) -> Feed {
        Feed {
            rx,
            kind,
            frame,
            pending: VecDeque::new(),
            pos: 0,
            ended: false,
            tail: TAIL_FRAMES,
            anchor: None,
            start: Instant::now(),
            start_us: unix_micros(),
            skip_to: 0,
            overruns,
        }
    }

    /// Wall-clock time of the feed's start, microseconds since the epoch.
    pub fn start_us(&self) -> u64 {
        self.start_us
    }

    /// Whether the input is a file or a live stream.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Samples dropped so far: a live input's backlog after a stall, or blocks that found the
    /// queue full.
    pub fn overruns(&self) -> u64 {
        self.overruns.load(Ordering::Relaxed)
    }

    fn push(&mut self, block: Option<Vec<f32>>) {
        match block {
            Some(b) => self.pending.extend(b),
            None => self.ended = true,
        }
    }

    /// Takes what has already arrived, without waiting.
    fn take_arrived(&mut self) {
        while !self.ended {
            match self.rx.try_recv() {
                Ok(b) => self.pending.extend(b),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => self.ended = true,
            }
        }
    }

    fn due(&self, anchor: Instant, samples: u64) -> Instant {
        anchor + Duration::from_micros(samples * 1_000_000 / u64::from(SAMPLE_RATE))
    }

    /// The next frame and the wall-clock time of its first sample (µs since the epoch), when it
    /// is due; `None` once the input has ended (and a short silent tail was sent).
    pub async fn next(&mut self) -> Option<(Vec<f32>, u64)> {
        let frame = self.frame;
        while self.pos < self.skip_to {
            let skip = ((self.skip_to - self.pos) as usize).min(self.pending.len());
            self.pending.drain(..skip);
            self.pos += skip as u64;
            if self.pos < self.skip_to {
                if self.ended {
                    self.skip_to = self.pos;
                    break;
                }
                let block = self.rx.recv().await;
                self.push(block);
            }
        }
        while self.pending.len() < frame && !self.ended {
            let block = self.rx.recv().await;
            self.push(block);
        }
        if self.pending.len() < frame && self.ended {
            if self.pending.is_empty() {
                if self.tail == 0 {
                    return None;
                }
                self.tail -= 1;
            }
            self.pending.resize(frame, 0.0);
        }
        let now = Instant::now();
        if self.kind == Kind::Live && !self.ended {
            // The newest sound of a live input has just been captured: it fixes the timeline.
            // The timeline moves later when the input is late (a stall: what waited beyond
            // MAX_BACKLOG is dropped), and earlier only when a backlog builds up (a source whose
            // clock runs fast, or a burst at the start), so the frames at the live edge go
            // out as soon as they are whole.
            self.take_arrived();
            let newest = self.pos + self.pending.len() as u64;
            let edge = back(now, newest);
            let backlog = self.pending.len() - frame;
            self.anchor = Some(match self.anchor {
                Some(a) if a >= edge && backlog <= backlog_limit() / 2 => a,
                _ => edge,
            });
            self.bound_backlog();
        }
        let end = self.pos + frame as u64;
        // A file's first frame is due now.
        let anchor = *self.anchor.get_or_insert_with(|| back(now, end));
        let due = self.due(anchor, end);
        if now < due {
            // Ahead of the clock (a file, or a stream sent faster than real time): wait.
            tokio::time::sleep_until(due.into()).await;
        }
        let pcm: Vec<f32> = self.pending.drain(..frame).collect();
        let anchor = self.anchor.expect("set above");
        let first = self.due(anchor, self.pos);
        let first_us = match first.checked_duration_since(self.start) {
            Some(d) => self.start_us + d.as_micros() as u64,
            None => self
                .start_us
                .saturating_sub((self.start - first).as_micros() as u64),
        };
        self.pos += frame as u64;
        Some((pcm, first_us))
    }

    /// A live input's backlog: what arrived beyond the frame being sent and `MAX_BACKLOG` is
    /// dropped, in whole frames, and counted.
    fn bound_backlog(&mut self) {
        self.take_arrived();
        let limit =
            self.frame + (MAX_BACKLOG.as_micros() as usize * SAMPLE_RATE as usize / 1_000_000);
        if self.pending.len() > limit {
            let excess = self.pending.len() - limit;
            let drop = excess.div_ceil(self.frame) * self.frame;
            let drop = drop.min(self.pending.len() - self.frame);
            self.pending.drain(..drop);
            self.pos += drop as u64;
            self.overruns.fetch_add(drop as u64, Ordering::Relaxed);
        }
    }

    /// After an outage: what was due meanwhile is gone. A file skips to now on its timeline; a
    /// stream drops what waited.
    pub fn skip_to_now(&mut self) {
        let Some(anchor) = self.anchor else {
            return;
        };
        match self.kind {
            Kind::File => {
                let now_pos =
                    anchor.elapsed().as_micros() as u64 * u64::from(SAMPLE_RATE) / 1_000_000;
                let frame = self.frame as u64;
                self.skip_to = self.skip_to.max(now_pos / frame * frame);
            }
            Kind::Live => self.discard(),
        }
    }

    /// Drops what a live input delivered (while no relay takes it).
    pub fn discard(&mut self) {
        self.take_arrived();
        let n = self.pending.len();
        self.pending.clear();
        self.pos += n as u64;
    }

    /// While not connected: a live input keeps being read and dropped, so the pipe upstream
    /// never backs up; a file waits. Returns only when the input has ended.
    pub async fn idle(&mut self) {
        match self.kind {
            Kind::File => std::future::pending().await,
            Kind::Live => {
                while !self.ended {
                    let block = self.rx.recv().await;
                    let n = block.as_ref().map(|b| b.len()).unwrap_or(0);
                    self.pos += n as u64;
                    if block.is_none() {
                        self.ended = true;
                    }
                }
                std::future::pending().await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A live input that stalls for half a second and then delivers its backlog at once: the
    /// backlog beyond `MAX_BACKLOG` is dropped (a gap), the rest goes out at once, and the
    /// frames after it are at the live edge again; no frame ever leaves ahead of the clock.
    #[tokio::test]
    async fn a_stalled_live_input_is_a_gap_not_a_burst() {
        let (tx, rx) = mpsc::channel(QUEUE);
        let overruns = Arc::new(AtomicU64::new(0));
        let mut feed = Feed::new(rx, Kind::Live, 960, overruns.clone());
        let block = vec![0.1f32; 480];
        let producer = tokio::spawn(async move {
            let start = Instant::now();
            let mut sent = 0u32;
            // 1 s in real time, 10 ms blocks; then nothing for 0.5 s; then 0.5 s at once; then
            // 0.5 s in real time again.
            for phase in [(100u32, true), (50, false), (50, true)] {
                for _ in 0..phase.0 {
                    tx.send(block.clone()).await.unwrap();
                    sent += 1;
                    if phase.1 {
                        let at = start + Duration::from_millis(10 * u64::from(sent));
                        tokio::time::sleep_until(at.into()).await;
                    }
                }
                if !phase.1 {
                    continue;
                }
                if sent == 100 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        });
        let mut frames = Vec::new();
        while let Some((_, capture_us)) = feed.next().await {
            frames.push((Instant::now(), capture_us));
        }
        producer.await.unwrap();
        let dropped_ms = overruns.load(Ordering::Relaxed) as f64 / 48.0;
        // The backlog beyond 250 ms (and the frame being sent) is gone.
        assert!(
            (200.0..=300.0).contains(&dropped_ms),
            "dropped {dropped_ms} ms"
        );
        // No more than the kept backlog leaves together.
        let mut together = 1;
        let mut most = 1;
        for w in frames.windows(2) {
            if w[1].0 - w[0].0 < Duration::from_millis(2) {
                together += 1;
                most = most.max(together);
            } else {
                together = 1;
            }
        }
        assert!(most <= 15, "{most} frames left at once");
        // Capture times never go back, and jump where the sound was dropped.
        let gaps: Vec<u64> = frames
            .windows(2)
            .map(|w| w[1].1.saturating_sub(w[0].1))
            .collect();
        assert!(frames.windows(2).all(|w| w[1].1 >= w[0].1));
        assert!(gaps.iter().any(|g| *g > 200_000), "{gaps:?}");
    }
}
