//! Decoding: symphonia (or libopus for Ogg Opus) to blocks of 48 kHz mono samples, on the
//! input's own thread; and what an input that does not decode is.

use super::describe::describe;
use super::feed::Bursts;
use super::{container, is_stdin, shown, Block, Error, Kind};
use crate::audio::{self, SAMPLE_RATE};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use symphonia::core::codecs::audio::{AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, TrackType};
use symphonia::core::io::{MediaSource, MediaSourceStream, ReadOnlySource};
use symphonia::core::meta::MetadataOptions;
use tokio::sync::mpsc;

/// The codec side of an input: symphonia's decoder, or libopus for Ogg Opus.
enum Codec {
    /// symphonia's decoder; `skip` frames (at the input's rate) of encoder delay left to drop.
    Symphonia {
        decoder: Box<dyn AudioDecoder>,
        skip: usize,
    },
    /// libopus, 48 kHz mono (it downmixes stereo itself); `skip` samples of pre-skip left.
    Opus {
        decoder: audio::Decoder,
        skip: usize,
    },
}

/// One opened input: the demuxer, the decoder, and the way to 48 kHz mono.
pub(super) struct Decoding {
    path: PathBuf,
    format: Box<dyn FormatReader>,
    codec: Codec,
    track: u32,
    rate: u32,
    /// Frames (at the input's rate, per channel) the container says it holds, when it says.
    expected: Option<u64>,
    /// The file's end is known to be cut (it could be read only as a stream).
    cut: bool,
    decoded: u64,
    resampler: Option<Resampler>,
    interleaved: Vec<f32>,
}

impl Decoding {
    pub(super) fn open(path: &Path, kind: Kind) -> Result<Decoding, Error> {
        let unsupported = |what: String| Error::Unsupported {
            path: shown(path),
            what,
        };
        let mut cut = false;
        let format = match probe(path, kind, false)? {
            Ok(format) => format,
            Err((e, head)) => {
                // A file whose end is cut can still be read from its start as a stream: its
                // demuxer then does not look at its end (symphonia's Ogg reader does, for the
                // length, and fails on a page cut short).
                let retry = kind == Kind::File && ends_early(&e);
                match retry.then(|| probe(path, kind, true)).transpose()? {
                    Some(Ok(format)) => {
                        cut = true;
                        format
                    }
                    _ => return Err(unsupported(describe(path, kind, head, &e))),
                }
            }
        };
        // symphonia's Ogg reader takes a file's last whole page for its end.
        cut |= kind == Kind::File
            && format.format_info().short_name == "ogg"
            && container::ogg_cut(path);
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
        // The encoder delay an MP4 declares in its edit list; symphonia leaves it in.
        let priming = (kind == Kind::File && format.format_info().short_name == "isomp4")
            .then(|| container::mp4_priming(path))
            .flatten();
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
                // A delay of more than a second is not a codec's: an edit that starts the
                // track later on purpose, which is left as it is.
                let skip = priming
                    .filter(|s| *s < 1.0)
                    .map(|s| (s * f64::from(rate)).round() as usize)
                    .unwrap_or(0);
                (Codec::Symphonia { decoder, skip }, rate)
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
            cut,
            decoded: 0,
            resampler: (rate != SAMPLE_RATE)
                .then(|| Resampler::new(rate))
                .flatten(),
            interleaved: Vec::new(),
        })
    }

    /// How the input's bursts are named in the log, and what would shorten them (for a live
    /// input's pacing).
    pub(super) fn bursts(&self) -> Bursts {
        match self.format.format_info().short_name {
            "ogg" => (
                "Ogg pages",
                "have ffmpeg write WAV or use -page_duration 20000",
            ),
            "matroska" | "mkv" => (
                "Matroska clusters",
                "have ffmpeg write WAV or use -cluster_time_limit 20",
            ),
            _ => (
                "blocks as written",
                "have the program writing it write smaller blocks (ffmpeg -re writes what it \
                 reads of its input at once: a live source in small packets is sent at once)",
            ),
        }
    }

    /// The next block of 48 kHz mono samples; `None` at the end (an end that comes early
    /// is warned about, once).
    pub(super) fn next(&mut self) -> Option<Vec<f32>> {
        // Damaged data is skipped, but a demuxer may report the same damage again and again
        // without moving on (or a packet table may list endless undecodable packets): after
        // this many failures in a row the input ends instead of spinning.
        let mut failures = 0;
        loop {
            if failures == MAX_FAILURES {
                tracing::warn!(file = %self.path.display(), "reading stopped: {MAX_FAILURES} damaged packets in a row; played what was read");
                return self.end(false);
            }
            let packet = match self.format.next_packet() {
                Ok(Some(p)) => p,
                Ok(None) => return self.end(true),
                Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return self.end(true)
                }
                Err(SymError::DecodeError(reason)) => {
                    tracing::debug!(file = %self.path.display(), reason, "damaged data skipped");
                    failures += 1;
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
                Codec::Symphonia { decoder, skip } => match decoder.decode(&packet) {
                    Ok(buf) => {
                        let channels = buf.spec().channels().count().max(1);
                        self.decoded += buf.frames() as u64;
                        buf.copy_to_vec_interleaved(&mut self.interleaved);
                        let mut mono = downmix(&self.interleaved, channels);
                        let cut = (*skip).min(mono.len());
                        *skip -= cut;
                        mono.drain(..cut);
                        mono
                    }
                    // A damaged packet: the ones after it still decode.
                    Err(SymError::DecodeError(_) | SymError::IoError(_)) => {
                        failures += 1;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(file = %self.path.display(), error = %e, "decoding stopped: played what was decoded");
                        return self.end(false);
                    }
                },
                Codec::Opus { decoder, skip } => {
                    let mut pcm = match decoder.decode(&packet.data) {
                        Ok(pcm) => pcm,
                        Err(_) => {
                            failures += 1;
                            continue;
                        }
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

    /// The end of the input (`eof`: its data ran out, rather than reading stopped on damage):
    /// the resampler's tail, and a warning if it came early.
    fn end(&mut self, eof: bool) -> Option<Vec<f32>> {
        if eof {
            // Streams written to a pipe say nothing of their length; a file that does and
            // holds less than it says was cut short, as is one whose end could not be read.
            let played = self.decoded as f64 / f64::from(self.rate);
            match self.expected {
                Some(expected) if self.decoded + CUT_SLACK < expected => tracing::warn!(
                    file = %self.path.display(),
                    "the file ends early (cut short?): played the {played:.2} s that are there of {:.2} s",
                    expected as f64 / f64::from(self.rate),
                ),
                _ if self.cut => tracing::warn!(
                    file = %self.path.display(),
                    "the file ends early (cut short?): played the {played:.2} s that are there",
                ),
                _ => {}
            }
            self.expected = None;
            self.cut = false;
        }
        let tail = self
            .resampler
            .as_mut()
            .map(|r| r.finish())
            .unwrap_or_default();
        (!tail.is_empty()).then_some(tail)
    }
}

/// Damaged packets in a row after which an input ends (see [`Decoding::next`]).
const MAX_FAILURES: u32 = 1000;

/// Frames (at the input's rate) a complete file may decode short of what its container says:
/// two MP3 packets, as containers count whole packets and decoders trim the codec's delay.
const CUT_SLACK: u64 = 2 * 1152;

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
pub(super) fn read(
    mut decoding: Decoding,
    path: PathBuf,
    kind: Kind,
    looped: bool,
    tx: mpsc::Sender<Block>,
    overruns: Arc<AtomicU64>,
) {
    loop {
        while let Some(pcm) = decoding.next() {
            let block = Block {
                at: Instant::now(),
                pcm,
            };
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
                        overruns.fetch_add(b.pcm.len() as u64, Ordering::Relaxed);
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

/// symphonia's demuxer for `path`: the file as it is (seekable), or, with `as_stream` or for a
/// live input, read from its start only. The outer error is the input not opening; the inner
/// one symphonia's refusal, with the first bytes of a stream.
#[allow(clippy::type_complexity)]
fn probe(
    path: &Path,
    kind: Kind,
    as_stream: bool,
) -> Result<Result<Box<dyn FormatReader>, (SymError, Vec<u8>)>, Error> {
    // The first bytes of a stream are kept, to say what it is if it does not decode.
    let head = Arc::new(std::sync::Mutex::new(Vec::new()));
    let source: Box<dyn MediaSource> = if is_stdin(path) {
        Box::new(ReadOnlySource::new(Head::new(std::io::stdin(), &head)))
    } else {
        let file = std::fs::File::open(path).map_err(|error| Error::Open {
            path: path.to_owned(),
            error,
        })?;
        match kind {
            Kind::File if !as_stream => Box::new(file),
            // A FIFO must not be taken for seekable.
            _ => Box::new(ReadOnlySource::new(Head::new(file, &head))),
        }
    };
    let mss = MediaSourceStream::new(source, Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(ext);
    }
    Ok(symphonia::default::get_probe()
        .probe(
            &hint,
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|e| (e, head.lock().map(|h| h.clone()).unwrap_or_default())))
}

// ---------------------------------------------------------------------------
// What an input is, for refusals (`describe` says it in words)

/// Whether symphonia stopped because its input ended before what it was reading did.
pub(super) fn ends_early(error: &SymError) -> bool {
    matches!(error, SymError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof)
}

/// Bytes of a stream's beginning kept to say what it is: a WAV header with its usual chunks.
pub(super) const HEAD: usize = 4096;

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

fn container(short_name: &str) -> String {
    format!("a {short_name} file")
}

fn codec_name(id: symphonia::core::codecs::audio::AudioCodecId) -> String {
    symphonia::default::get_codecs()
        .get_audio_decoder(id)
        .map(|d| d.codec.info.short_name.to_string())
        .unwrap_or_else(|| format!("codec {id}"))
}
