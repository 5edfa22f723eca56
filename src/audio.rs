//! Audio plumbing for the relay: WAV in and out, Opus encoding and decoding
//! with loss concealment and in-band FEC, levels, and signal alignment.
//!
//! Everything inside the relay runs at [`SAMPLE_RATE`] (48 kHz), mono, as
//! `f32` samples nominally in `-1.0..=1.0`. Opus works natively at 48 kHz, so
//! fixing the rate here means nothing downstream ever resamples.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use bytes::Bytes;

/// The one sample rate used throughout the relay, in Hz.
pub const SAMPLE_RATE: u32 = 48_000;

/// Lowest and highest input WAV rates accepted by [`read_wav`]. Outside this
/// range files are almost certainly mislabelled rather than real recordings.
const MIN_WAV_RATE: u32 = 8_000;
const MAX_WAV_RATE: u32 = 192_000;

/// Opus conceals and recovers in whole 2.5 ms steps (120 samples at 48 kHz).
const PLC_STEP: usize = SAMPLE_RATE as usize / 400;

/// Upper bound for a single [`Decoder::conceal`] / [`Decoder::recover`] call.
/// Opus fades concealment to silence long before this; the bound only keeps a
/// bogus gap length (e.g. from a wrapped sequence number) from allocating
/// gigabytes.
const MAX_CONCEAL_SAMPLES: usize = SAMPLE_RATE as usize;

/// Largest packet a single Opus frame group can need: 3 × 1275 bytes for a
/// 60 ms frame at the maximum bitrate, rounded up as libopus recommends.
const MAX_PACKET_BYTES: usize = 4_000;

/// Longest packet (120 ms) that Opus can describe, in samples at 48 kHz.
const MAX_PACKET_SAMPLES: usize = 5_760;

/// Errors from this module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The WAV file could not be opened or decoded.
    #[error(
        "cannot read WAV file {}: {source}; check that the file exists, is complete, and is an \
         uncompressed PCM (8/16/24/32-bit) or 32-bit float WAV",
        path.display()
    )]
    ReadWav {
        path: PathBuf,
        #[source]
        source: hound::Error,
    },

    /// The WAV file is valid but uses a format this module does not accept.
    #[error("WAV file {} is not supported: {reason}", path.display())]
    UnsupportedWav { path: PathBuf, reason: String },

    /// Sample-rate conversion of an input file failed.
    #[error(
        "cannot resample WAV file {} from {rate} Hz to 48 kHz: {reason}; convert it to 48 kHz \
         with another tool and try again",
        path.display()
    )]
    Resample {
        path: PathBuf,
        rate: u32,
        reason: String,
    },

    /// A WAV output file could not be created.
    #[error(
        "cannot create WAV file {}: {source}; check that the directory exists and is writable",
        path.display()
    )]
    CreateWav {
        path: PathBuf,
        #[source]
        source: hound::Error,
    },

    /// Writing to a WAV output file failed.
    #[error(
        "cannot write WAV file {}: {source}; check free disk space (audio up to the last \
         checkpoint, at most one second earlier, is already safe in the file)",
        path.display()
    )]
    WriteWav {
        path: PathBuf,
        #[source]
        source: hound::Error,
    },

    /// A frame duration Opus (or this relay) does not offer.
    #[error("Opus frame duration of {ms} ms is not supported; use 10, 20, 40 or 60 ms")]
    UnsupportedFrameDuration { ms: u32 },

    /// An encoder setting is out of range.
    #[error("encoder setting `{setting}` = {value} is out of range; it must be {allowed}")]
    InvalidEncoderConfig {
        setting: &'static str,
        value: u32,
        allowed: &'static str,
    },

    /// [`Encoder::encode`] was given a buffer that is not exactly one frame.
    #[error(
        "the encoder takes exactly {expected} samples per frame but got {actual}; buffer input \
         until a whole frame is available"
    )]
    FrameLength { expected: usize, actual: usize },

    /// A concealment or recovery length Opus cannot produce.
    #[error(
        "cannot conceal {samples} samples: the count must be a multiple of 120 (2.5 ms) and at \
         most 48000 (1 s); split longer gaps into several calls"
    )]
    ConcealLength { samples: usize },

    /// A packet that is not valid Opus.
    #[error("malformed Opus packet: {reason}; drop it and cover the gap with Decoder::conceal")]
    MalformedPacket { reason: String },

    /// libopus reported an unexpected failure.
    #[error("Opus failed to {operation}: {source}")]
    Codec {
        operation: &'static str,
        #[source]
        source: opus::Error,
    },
}

fn codec(operation: &'static str) -> impl FnOnce(opus::Error) -> Error {
    move |source| Error::Codec { operation, source }
}

fn malformed(source: opus::Error) -> Error {
    Error::MalformedPacket {
        reason: source.description().to_owned(),
    }
}

// ---------------------------------------------------------------------------
// WAV input

/// Reads a WAV file and returns it as 48 kHz mono samples in `-1.0..=1.0`.
///
/// Accepts rates from 8 kHz to 192 kHz, any channel count, and 8/16/24/32-bit
/// integer or 32-bit float samples. Channels are averaged to mono, then the
/// signal is resampled to 48 kHz with a windowed-sinc resampler (skipped when
/// the file already is 48 kHz). The output has the same duration as the input.
pub fn read_wav(path: &Path) -> Result<Vec<f32>, Error> {
    let read_err = |source| Error::ReadWav {
        path: path.to_owned(),
        source,
    };
    let unsupported = |reason: String| Error::UnsupportedWav {
        path: path.to_owned(),
        reason,
    };

    let mut reader = hound::WavReader::open(path).map_err(read_err)?;
    let spec = reader.spec();
    if !(MIN_WAV_RATE..=MAX_WAV_RATE).contains(&spec.sample_rate) {
        return Err(unsupported(format!(
            "sample rate {} Hz is outside 8000..=192000 Hz",
            spec.sample_rate
        )));
    }
    let channels = usize::from(spec.channels);
    if channels == 0 {
        return Err(unsupported("the header declares zero channels".into()));
    }
    // The frame count comes from the header and is only a capacity hint;
    // capping it (at about six minutes of 48 kHz audio) stops a corrupt
    // header from requesting gigabytes up front.
    let frames_hint = usize::try_from(reader.duration()).unwrap_or(0).min(1 << 24);

    let mono = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Int, bits @ (8 | 16 | 24 | 32)) => {
            // Full scale for N-bit audio is 2^(N-1); hound already converts
            // unsigned 8-bit samples to signed.
            let scale = 1.0 / f64::from(1u32 << (bits - 1));
            let samples = reader
                .samples::<i32>()
                .map(|s| s.map(|v| f64::from(v) * scale));
            downmix(samples, channels, frames_hint).map_err(read_err)?
        }
        (hound::SampleFormat::Float, 32) => {
            let samples = reader.samples::<f32>().map(|s| s.map(f64::from));
            downmix(samples, channels, frames_hint).map_err(read_err)?
        }
        (format, bits) => {
            let kind = match format {
                hound::SampleFormat::Int => "integer",
                hound::SampleFormat::Float => "float",
            };
            return Err(unsupported(format!(
                "{bits}-bit {kind} samples; convert it to 16-bit PCM or 32-bit float"
            )));
        }
    };

    let mut out = resample_to_48k(mono, spec.sample_rate).map_err(|reason| Error::Resample {
        path: path.to_owned(),
        rate: spec.sample_rate,
        reason,
    })?;
    // Sinc resampling rings slightly above full scale next to clipped input;
    // callers are promised -1..=1.
    for s in &mut out {
        *s = s.clamp(-1.0, 1.0);
    }
    Ok(out)
}

/// Averages interleaved channels into mono. Non-finite values (possible in
/// float files) become silence so they cannot poison the resampler.
fn downmix(
    samples: impl Iterator<Item = Result<f64, hound::Error>>,
    channels: usize,
    frames_hint: usize,
) -> Result<Vec<f32>, hound::Error> {
    let mut mono = Vec::with_capacity(frames_hint);
    let mut acc = 0.0f64;
    let mut in_frame = 0usize;
    let inv = 1.0 / channels as f64;
    for s in samples {
        let s = s?;
        acc += if s.is_finite() { s } else { 0.0 };
        in_frame += 1;
        if in_frame == channels {
            mono.push((acc * inv).clamp(-1.0, 1.0) as f32);
            acc = 0.0;
            in_frame = 0;
        }
    }
    // A trailing partial frame is dropped: it has no well-defined mono value
    // and hound already rejects files whose data length is not frame-aligned.
    Ok(mono)
}

/// Resamples mono audio to 48 kHz, keeping its duration. Errors are returned
/// as text because rubato's two error types only matter for the message.
fn resample_to_48k(input: Vec<f32>, rate: u32) -> Result<Vec<f32>, String> {
    use rubato::{
        calculate_cutoff, Resampler, SincFixedIn, SincInterpolationParameters,
        SincInterpolationType, WindowFunction,
    };

    if rate == SAMPLE_RATE || input.is_empty() {
        return Ok(input);
    }
    const CHUNK: usize = 1024;
    const SINC_LEN: usize = 256;
    let window = WindowFunction::BlackmanHarris2;
    // The parameters rubato recommends for high quality: a long filter, cutoff
    // placed just below Nyquist for that window, and enough oversampling that
    // linear interpolation between sinc points is inaudible.
    let params = SincInterpolationParameters {
        sinc_len: SINC_LEN,
        f_cutoff: calculate_cutoff(SINC_LEN, window),
        interpolation: SincInterpolationType::Linear,
        oversampling_factor: 256,
        window,
    };
    let ratio = f64::from(SAMPLE_RATE) / f64::from(rate);
    let mut resampler =
        SincFixedIn::<f32>::new(ratio, 1.0, params, CHUNK, 1).map_err(|e| e.to_string())?;

    let expected = usize::try_from(
        (input.len() as u64 * u64::from(SAMPLE_RATE) + u64::from(rate) / 2) / u64::from(rate),
    )
    .map_err(|_| "the file is too long to hold in memory".to_string())?;
    // The resampler delays its output by half the filter length; produce that
    // much extra and drop it from the front so the output lines up with the
    // input sample for sample.
    let delay = resampler.output_delay();
    let mut out = Vec::with_capacity(expected + delay + resampler.output_frames_max());
    let mut buf = resampler.output_buffer_allocate(true);

    let mut pos = 0;
    while input.len() - pos >= resampler.input_frames_next() {
        let need = resampler.input_frames_next();
        let (_, n) = resampler
            .process_into_buffer(&[&input[pos..pos + need]], &mut buf, None)
            .map_err(|e| e.to_string())?;
        out.extend_from_slice(&buf[0][..n]);
        pos += need;
    }
    if pos < input.len() {
        let (_, n) = resampler
            .process_partial_into_buffer(Some(&[&input[pos..]]), &mut buf, None)
            .map_err(|e| e.to_string())?;
        out.extend_from_slice(&buf[0][..n]);
    }
    while out.len() < expected + delay {
        let (_, n) = resampler
            .process_partial_into_buffer(None::<&[&[f32]]>, &mut buf, None)
            .map_err(|e| e.to_string())?;
        if n == 0 {
            // Cannot happen with a sane resampler, but never spin forever.
            break;
        }
        out.extend_from_slice(&buf[0][..n]);
    }
    out.drain(..delay.min(out.len()));
    out.resize(expected, 0.0);
    Ok(out)
}

// ---------------------------------------------------------------------------
// WAV output

/// Streaming writer for 48 kHz mono 16-bit WAV files.
///
/// The header is rewritten at least once per second of audio, so if the
/// process is killed the file on disk is still a valid WAV holding everything
/// up to the last checkpoint. Dropping the writer without [`finish`] also
/// finalizes the file, but any error doing so is lost.
///
/// A 16-bit mono 48 kHz WAV hits the format's 4 GiB limit after about 12.4
/// hours; writes past that fail with [`Error::WriteWav`].
///
/// [`finish`]: WavWriter::finish
pub struct WavWriter {
    inner: Sink,
    path: PathBuf,
    unflushed: usize,
}

/// Where a [`WavWriter`] writes: a file (its header kept true), or a stream.
enum Sink {
    File(hound::WavWriter<BufWriter<File>>),
    /// Standard output: the header's sizes say "until the end" (`0xFFFFFFFF`), as ffmpeg and
    /// sox write WAV to a pipe and read it from one.
    Stream(BufWriter<std::io::Stdout>),
}

/// The header of a 48 kHz mono 16-bit WAV stream whose length is not known: RIFF and data
/// sizes `0xFFFFFFFF`.
fn stream_header() -> [u8; 44] {
    let mut h = [0u8; 44];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    h[8..12].copy_from_slice(b"WAVE");
    h[12..16].copy_from_slice(b"fmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes()); // PCM
    h[22..24].copy_from_slice(&1u16.to_le_bytes()); // mono
    h[24..28].copy_from_slice(&SAMPLE_RATE.to_le_bytes());
    h[28..32].copy_from_slice(&(SAMPLE_RATE * 2).to_le_bytes()); // bytes a second
    h[32..34].copy_from_slice(&2u16.to_le_bytes()); // block align
    h[34..36].copy_from_slice(&16u16.to_le_bytes()); // bits
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
    h
}

impl WavWriter {
    /// Creates (or truncates) `path` and writes a valid, empty WAV header.
    pub fn create(path: &Path) -> Result<Self, Error> {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: SAMPLE_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut inner =
            hound::WavWriter::create(path, spec).map_err(|source| Error::CreateWav {
                path: path.to_owned(),
                source,
            })?;
        // Put a valid header on disk straight away so even a recording killed
        // in its first second leaves a readable (empty) file behind.
        inner.flush().map_err(|source| Error::CreateWav {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            inner: Sink::File(inner),
            path: path.to_owned(),
            unflushed: 0,
        })
    }

    /// Writes a WAV stream to standard output, for piping into other tools: the header's
    /// sizes are `0xFFFFFFFF` ("until the end"), the samples follow as they come.
    pub fn stdout() -> Result<Self, Error> {
        use std::io::Write;
        let path = PathBuf::from("-");
        let mut out = BufWriter::new(std::io::stdout());
        out.write_all(&stream_header())
            .and_then(|_| out.flush())
            .map_err(|e| Error::CreateWav {
                path: path.clone(),
                source: hound::Error::IoError(e),
            })?;
        Ok(Self {
            inner: Sink::Stream(out),
            path,
            unflushed: 0,
        })
    }

    /// Appends samples. Values outside `-1.0..=1.0` are clipped and NaN is
    /// written as silence.
    pub fn write(&mut self, samples: &[f32]) -> Result<(), Error> {
        for &s in samples {
            // `as` saturates and maps NaN to 0, which is what we want here.
            let v = (s.clamp(-1.0, 1.0) * f32::from(i16::MAX)).round() as i16;
            let written = match &mut self.inner {
                Sink::File(w) => w.write_sample(v),
                Sink::Stream(w) => {
                    use std::io::Write;
                    w.write_all(&v.to_le_bytes()).map_err(hound::Error::IoError)
                }
            };
            written.map_err(|e| self.write_err(e))?;
            self.unflushed += 1;
            if self.unflushed >= SAMPLE_RATE as usize {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Updates the header and pushes everything written so far to the OS, so
    /// the file is complete up to this point even if the process dies.
    pub fn flush(&mut self) -> Result<(), Error> {
        let flushed = match &mut self.inner {
            Sink::File(w) => w.flush(),
            Sink::Stream(w) => {
                use std::io::Write;
                w.flush().map_err(hound::Error::IoError)
            }
        };
        flushed.map_err(|e| self.write_err(e))?;
        self.unflushed = 0;
        Ok(())
    }

    /// Finalizes the header and closes the file.
    pub fn finish(self) -> Result<(), Error> {
        let path = self.path;
        let finished = match self.inner {
            Sink::File(w) => w.finalize(),
            Sink::Stream(mut w) => {
                use std::io::Write;
                w.flush().map_err(hound::Error::IoError)
            }
        };
        finished.map_err(|source| Error::WriteWav { path, source })
    }

    fn write_err(&self, source: hound::Error) -> Error {
        Error::WriteWav {
            path: self.path.clone(),
            source,
        }
    }
}

// ---------------------------------------------------------------------------
// Opus

/// An Opus frame duration offered by the relay.
///
/// 2.5 ms and 5 ms are deliberately absent: Opus can only code them in its
/// CELT-only mode, which carries no in-band FEC and spends far more bits on
/// speech than SILK/hybrid at the same quality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum FrameDuration {
    Ms10,
    #[default]
    Ms20,
    Ms40,
    Ms60,
}

impl FrameDuration {
    /// Validates a duration in milliseconds: 10, 20, 40 or 60.
    pub fn from_ms(ms: u32) -> Result<Self, Error> {
        match ms {
            10 => Ok(Self::Ms10),
            20 => Ok(Self::Ms20),
            40 => Ok(Self::Ms40),
            60 => Ok(Self::Ms60),
            _ => Err(Error::UnsupportedFrameDuration { ms }),
        }
    }

    /// Duration in milliseconds.
    pub fn ms(self) -> u32 {
        match self {
            Self::Ms10 => 10,
            Self::Ms20 => 20,
            Self::Ms40 => 40,
            Self::Ms60 => 60,
        }
    }

    /// Samples per frame at 48 kHz.
    pub fn samples(self) -> usize {
        (SAMPLE_RATE / 1000 * self.ms()) as usize
    }

    /// Duration as a [`std::time::Duration`].
    pub fn duration(self) -> std::time::Duration {
        std::time::Duration::from_millis(u64::from(self.ms()))
    }
}

impl std::fmt::Display for FrameDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ms", self.ms())
    }
}

/// Encoder settings.
pub mod encode {
    use super::FrameDuration;

    /// Settings for [`Encoder`](super::Encoder).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Config {
        /// Frame duration; 20 ms is the usual trade-off between latency and
        /// overhead.
        pub frame: FrameDuration,
        /// Target bitrate in bit/s, 6000..=510000. 32 kbit/s keeps speech
        /// fullband with room for FEC.
        pub bitrate: u32,
        /// In-band forward error correction: each packet also carries a coarse
        /// copy of the previous frame, so one lost packet can be rebuilt.
        pub fec: bool,
        /// Loss the encoder should expect, 0..=100; higher values spend more of
        /// the bitrate on FEC. Only used when `fec` is on.
        pub expected_loss_percent: u8,
        /// Encoder effort, 0..=10.
        pub complexity: u8,
    }

    impl Default for Config {
        fn default() -> Self {
            Self {
                frame: FrameDuration::Ms20,
                bitrate: 32_000,
                fec: true,
                expected_loss_percent: 10,
                complexity: 9,
            }
        }
    }
}

/// Opus encoder for 48 kHz mono speech.
///
/// Tuned for interpretation: VoIP application, voice signal hint, VBR, and a
/// fullband ceiling because interpreters rely on sibilants and consonant
/// detail up to ~15 kHz. Opus still picks the actual bandwidth from the
/// bitrate and content; at the default 32 kbit/s speech is coded fullband.
pub struct Encoder {
    inner: opus::Encoder,
    frame: FrameDuration,
    lookahead: usize,
    pcm: Vec<f32>,
    packet: Vec<u8>,
}

impl Encoder {
    /// Creates an encoder, validating `config`.
    pub fn new(config: &encode::Config) -> Result<Self, Error> {
        let invalid = |setting, value, allowed| Error::InvalidEncoderConfig {
            setting,
            value,
            allowed,
        };
        if !(6_000..=510_000).contains(&config.bitrate) {
            return Err(invalid("bitrate", config.bitrate, "6000..=510000 bit/s"));
        }
        if config.complexity > 10 {
            return Err(invalid("complexity", config.complexity.into(), "0..=10"));
        }
        if config.expected_loss_percent > 100 {
            return Err(invalid(
                "expected_loss_percent",
                config.expected_loss_percent.into(),
                "0..=100",
            ));
        }

        let mut inner =
            opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)
                .map_err(codec("create an encoder"))?;
        configure(&mut inner, config).map_err(codec("configure the encoder"))?;
        let lookahead = inner
            .get_lookahead()
            .map_err(codec("report its lookahead"))?;

        Ok(Self {
            inner,
            frame: config.frame,
            lookahead: usize::try_from(lookahead).unwrap_or(0),
            pcm: vec![0.0; config.frame.samples()],
            packet: vec![0; MAX_PACKET_BYTES],
        })
    }

    /// Samples per frame: [`encode`](Self::encode) takes exactly this many.
    pub fn frame_samples(&self) -> usize {
        self.frame.samples()
    }

    /// The configured frame duration.
    pub fn frame(&self) -> FrameDuration {
        self.frame
    }

    /// Encodes exactly one frame ([`frame_samples`](Self::frame_samples)
    /// samples) and returns the Opus packet.
    pub fn encode(&mut self, pcm: &[f32]) -> Result<Bytes, Error> {
        if pcm.len() != self.pcm.len() {
            return Err(Error::FrameLength {
                expected: self.pcm.len(),
                actual: pcm.len(),
            });
        }
        // libopus assumes finite input; NaN or infinity from a misbehaving
        // capture device could upset its analysis, so sanitize first.
        for (dst, &src) in self.pcm.iter_mut().zip(pcm) {
            *dst = if src.is_finite() {
                src.clamp(-1.0, 1.0)
            } else {
                0.0
            };
        }
        let n = self
            .inner
            .encode_float(&self.pcm, &mut self.packet)
            .map_err(codec("encode a frame"))?;
        Ok(Bytes::copy_from_slice(&self.packet[..n]))
    }

    /// Encoder delay in samples: decoded audio lags the input by this much.
    pub fn lookahead_samples(&self) -> usize {
        self.lookahead
    }
}

/// Applies the relay's speech settings to a fresh encoder.
fn configure(inner: &mut opus::Encoder, config: &encode::Config) -> Result<(), opus::Error> {
    inner.set_signal(opus::Signal::Voice)?;
    inner.set_max_bandwidth(opus::Bandwidth::Fullband)?;
    // Range checked by the caller, so the cast is lossless.
    inner.set_bitrate(opus::Bitrate::Bits(config.bitrate as i32))?;
    inner.set_vbr(true)?;
    inner.set_complexity(config.complexity.into())?;
    inner.set_inband_fec(config.fec)?;
    if config.fec {
        // Without a loss estimate Opus budgets no bits for FEC, so enabling
        // it alone would change almost nothing.
        inner.set_packet_loss_perc(config.expected_loss_percent.into())?;
    }
    Ok(())
}

/// Opus decoder, 48 kHz mono, with packet-loss concealment and FEC recovery.
pub struct Decoder {
    inner: opus::Decoder,
}

impl Decoder {
    /// Creates a decoder.
    pub fn new() -> Result<Self, Error> {
        let inner = opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)
            .map_err(codec("create a decoder"))?;
        Ok(Self { inner })
    }

    /// Decodes one packet. The number of samples returned is whatever the
    /// packet holds (see [`packet_samples`]). Stereo packets are downmixed.
    pub fn decode(&mut self, packet: &[u8]) -> Result<Vec<f32>, Error> {
        let samples = packet_samples(packet)?;
        let mut out = vec![0.0; samples];
        let n = self
            .decode_into(packet, &mut out)
            .map_err(|e| decode_err(e, "decode a packet"))?;
        out.truncate(n);
        Ok(out)
    }

    /// Decodes one packet into `out` (at least [`packet_samples`] long) without allocating,
    /// for a realtime thread; returns the samples written.
    pub fn decode_into(&mut self, packet: &[u8], out: &mut [f32]) -> Result<usize, opus::Error> {
        self.inner.decode_float(packet, out, false)
    }

    /// Fills `out` (a multiple of 120 samples) by Opus PLC, without allocating.
    pub fn conceal_into(&mut self, out: &mut [f32]) -> Result<usize, opus::Error> {
        self.inner.decode_float(&[], out, false)
    }

    /// Rebuilds a lost frame of `out.len()` samples from the FEC data in `next_packet`,
    /// without allocating (see [`recover`](Self::recover)).
    pub fn recover_into(
        &mut self,
        next_packet: &[u8],
        out: &mut [f32],
    ) -> Result<usize, opus::Error> {
        self.inner.decode_float(next_packet, out, true)
    }

    /// Synthesizes `samples` samples to cover lost packets (Opus PLC).
    ///
    /// `samples` must be a multiple of 120 (2.5 ms) and at most 48000.
    pub fn conceal(&mut self, samples: usize) -> Result<Vec<f32>, Error> {
        check_conceal_len(samples)?;
        if samples == 0 {
            return Ok(Vec::new());
        }
        let mut out = vec![0.0; samples];
        let n = self
            .conceal_into(&mut out)
            .map_err(codec("conceal lost audio"))?;
        out.truncate(n);
        Ok(out)
    }

    /// Rebuilds a lost frame of `samples` samples from the in-band FEC data
    /// carried by `next_packet`, the packet that followed the lost one.
    ///
    /// The caller must then decode `next_packet` normally with
    /// [`decode`](Self::decode). If `next_packet` carries no FEC data, Opus
    /// falls back to concealment, so the result is always usable.
    pub fn recover(&mut self, next_packet: &[u8], samples: usize) -> Result<Vec<f32>, Error> {
        check_conceal_len(samples)?;
        packet_samples(next_packet)?;
        if samples == 0 {
            return Ok(Vec::new());
        }
        let mut out = vec![0.0; samples];
        let n = self
            .recover_into(next_packet, &mut out)
            .map_err(|e| decode_err(e, "recover a frame from FEC data"))?;
        out.truncate(n);
        Ok(out)
    }
}

fn check_conceal_len(samples: usize) -> Result<(), Error> {
    if !samples.is_multiple_of(PLC_STEP) || samples > MAX_CONCEAL_SAMPLES {
        return Err(Error::ConcealLength { samples });
    }
    Ok(())
}

fn decode_err(e: opus::Error, operation: &'static str) -> Error {
    if e.code() == opus::ErrorCode::InvalidPacket {
        malformed(e)
    } else {
        Error::Codec {
            operation,
            source: e,
        }
    }
}

/// Number of samples at 48 kHz in an Opus packet, read from its TOC and frame
/// count. The whole packet structure is validated, so a packet that passes
/// here will not be rejected as malformed by the decoder.
pub fn packet_samples(packet: &[u8]) -> Result<usize, Error> {
    if packet.is_empty() {
        return Err(Error::MalformedPacket {
            reason: "the packet is empty (an Opus packet has at least a TOC byte)".into(),
        });
    }
    if i32::try_from(packet.len()).is_err() {
        // libopus takes lengths as C ints; refuse rather than let the
        // bindings panic.
        return Err(Error::MalformedPacket {
            reason: format!("the packet is {} bytes long", packet.len()),
        });
    }
    let frames = opus::packet::parse(packet).map_err(malformed)?.frames.len();
    let per_frame = opus::packet::get_samples_per_frame(packet, SAMPLE_RATE).map_err(malformed)?;
    let samples = frames * per_frame;
    if samples > MAX_PACKET_SAMPLES {
        return Err(Error::MalformedPacket {
            reason: format!("the packet claims {samples} samples, more than 120 ms"),
        });
    }
    Ok(samples)
}

// ---------------------------------------------------------------------------
// Levels

/// Signal level of a block of samples, linear, `0.0..=1.0`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Level {
    pub rms: f32,
    pub peak: f32,
}

/// Peak and RMS of `pcm`. Samples beyond full scale count as full scale and
/// non-finite ones as silence, so meters stay in range; empty input is silent.
pub fn level(pcm: &[f32]) -> Level {
    if pcm.is_empty() {
        return Level::default();
    }
    let mut sum_sq = 0.0f64;
    let mut peak = 0.0f32;
    for &s in pcm {
        let a = if s.is_finite() { s.abs().min(1.0) } else { 0.0 };
        sum_sq += f64::from(a) * f64::from(a);
        peak = peak.max(a);
    }
    Level {
        rms: (sum_sq / pcm.len() as f64).sqrt().min(1.0) as f32,
        peak,
    }
}

// ---------------------------------------------------------------------------
// Alignment

/// Result of [`align`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Alignment {
    /// Delay of the recorded signal: `recorded[i + lag] ≈ reference[i]`.
    pub lag: usize,
    /// Normalized (Pearson) correlation at `lag` over the overlapping part,
    /// `-1.0..=1.0`; 0 when either side is silent or empty.
    pub correlation: f64,
}

/// Decimation factor of the coarse search.
const ALIGN_DECIMATION: usize = 8;

/// Below this many multiply-adds a plain full-rate search is cheaper than
/// setting up the coarse-to-fine machinery.
const ALIGN_DIRECT_BUDGET: u64 = 4_000_000;

/// Finds the lag in `0..=max_lag` at which `recorded` best matches
/// `reference` (`recorded[i + lag] ≈ reference[i]`) by normalized
/// cross-correlation of the raw samples over their overlap.
///
/// Lags whose overlap is shorter than half of the longest possible overlap
/// are not considered: with only a sliver of overlap, chance similarity would
/// outscore the true alignment.
///
/// The search runs coarse-to-fine so that seconds of lag over many seconds of
/// audio stay cheap: the signals are box-filtered and decimated by 8, every
/// coarse lag is scored at once with an FFT cross-correlation, and the best
/// few coarse peaks are refined sample by sample at full rate.
pub fn align(reference: &[f32], recorded: &[f32], max_lag: usize) -> Alignment {
    let longest_overlap = reference.len().min(recorded.len());
    if longest_overlap == 0 {
        return Alignment {
            lag: 0,
            correlation: 0.0,
        };
    }
    let min_overlap = longest_overlap.div_ceil(2);
    let max_lag = max_lag.min(recorded.len() - min_overlap);

    let fine = Stats::new(reference, recorded);
    let score = |lag: usize| {
        let n = fine.overlap(lag);
        fine.pearson(lag, dot(&reference[..n], &recorded[lag..lag + n]))
    };
    let best_of = |lags: std::ops::RangeInclusive<usize>| {
        lags.map(|lag| Alignment {
            lag,
            correlation: score(lag),
        })
        .fold(None, |best: Option<Alignment>, a| match best {
            Some(b) if b.correlation >= a.correlation => Some(b),
            _ => Some(a),
        })
    };

    let direct_cost = (max_lag as u64 + 1) * longest_overlap as u64;
    let coarse_ref = decimate(reference);
    let coarse_rec = decimate(recorded);
    if direct_cost <= ALIGN_DIRECT_BUDGET || coarse_ref.len() < 16 || coarse_rec.len() < 16 {
        return best_of(0..=max_lag).unwrap_or(Alignment {
            lag: 0,
            correlation: 0.0,
        });
    }

    let coarse_max = (max_lag / ALIGN_DECIMATION).min(coarse_rec.len() - 1);
    let coarse = coarse_scores(&coarse_ref, &coarse_rec, coarse_max);

    // Refine up to three well-separated coarse peaks: periodic material (a
    // tone, a steady vowel) gives several near-equal coarse peaks, and the
    // coarse grid cannot tell them apart reliably.
    let mut candidates: Vec<usize> = Vec::with_capacity(3);
    let mut best_coarse = f64::NEG_INFINITY;
    for _ in 0..3 {
        let next = coarse
            .iter()
            .enumerate()
            .filter(|(i, _)| candidates.iter().all(|&c| c.abs_diff(*i) > 2))
            .max_by(|a, b| a.1.total_cmp(b.1));
        match next {
            Some((i, &c)) if c.is_finite() && (candidates.is_empty() || c >= 0.8 * best_coarse) => {
                best_coarse = best_coarse.max(c);
                candidates.push(i);
            }
            _ => break,
        }
    }

    let radius = ALIGN_DECIMATION + 2;
    candidates
        .iter()
        .filter_map(|&c| {
            let centre = c * ALIGN_DECIMATION;
            best_of(centre.saturating_sub(radius)..=(centre + radius).min(max_lag))
        })
        .fold(None, |best: Option<Alignment>, a| match best {
            Some(b) if b.correlation >= a.correlation => Some(b),
            _ => Some(a),
        })
        .unwrap_or(Alignment {
            lag: 0,
            correlation: 0.0,
        })
}

/// Box-filters and decimates by [`ALIGN_DECIMATION`]. The averaging is a
/// crude low-pass, good enough to keep aliasing from swamping the coarse
/// correlation peak.
fn decimate(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len() / ALIGN_DECIMATION];
    let scale = 1.0 / ALIGN_DECIMATION as f32;
    // `while` and indexing for the reason given on [`dot`].
    let mut i = 0;
    while i < out.len() {
        let base = i * ALIGN_DECIMATION;
        let mut acc = 0.0f32;
        let mut k = 0;
        while k < ALIGN_DECIMATION {
            acc += x[base + k];
            k += 1;
        }
        out[i] = acc * scale;
        i += 1;
    }
    out
}

/// Dot product in f64.
///
/// The alignment loops use `while` and plain indexing rather than ranges or
/// iterator adaptors because `align` mostly runs inside tests and benchmarks
/// built without optimization, where every `next()` is a real function call
/// per sample and would make the search several times slower.
fn dot(x: &[f32], y: &[f32]) -> f64 {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &y[..n]);
    // Four accumulators also shorten the dependency chain when optimized.
    let (mut a0, mut a1, mut a2, mut a3) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let mut i = 0;
    while i + 4 <= n {
        a0 += x[i] as f64 * y[i] as f64;
        a1 += x[i + 1] as f64 * y[i + 1] as f64;
        a2 += x[i + 2] as f64 * y[i + 2] as f64;
        a3 += x[i + 3] as f64 * y[i + 3] as f64;
        i += 4;
    }
    while i < n {
        a0 += x[i] as f64 * y[i] as f64;
        i += 1;
    }
    (a0 + a1) + (a2 + a3)
}

/// Prefix sums that give the mean and energy of any overlap in O(1), so only
/// the cross term has to be computed per lag.
struct Stats {
    ref_len: usize,
    rec_len: usize,
    ref_sum: Vec<f64>,
    ref_sq: Vec<f64>,
    rec_sum: Vec<f64>,
    rec_sq: Vec<f64>,
}

impl Stats {
    fn new(reference: &[f32], recorded: &[f32]) -> Self {
        let (ref_sum, ref_sq) = prefix_sums(reference);
        let (rec_sum, rec_sq) = prefix_sums(recorded);
        Self {
            ref_len: reference.len(),
            rec_len: recorded.len(),
            ref_sum,
            ref_sq,
            rec_sum,
            rec_sq,
        }
    }

    fn overlap(&self, lag: usize) -> usize {
        self.ref_len.min(self.rec_len.saturating_sub(lag))
    }

    /// Pearson correlation at `lag` given the cross term `Σ ref[i]·rec[i+lag]`.
    fn pearson(&self, lag: usize, dot: f64) -> f64 {
        let n = self.overlap(lag);
        if n < 2 {
            return 0.0;
        }
        let nf = n as f64;
        let sx = self.ref_sum[n];
        let sxx = self.ref_sq[n];
        let sy = self.rec_sum[lag + n] - self.rec_sum[lag];
        let syy = self.rec_sq[lag + n] - self.rec_sq[lag];
        let vx = sxx - sx * sx / nf;
        let vy = syy - sy * sy / nf;
        // Relative floor: differences of large prefix sums leave rounding
        // noise that must not read as signal on a silent stretch.
        if vx <= 1e-9 * sxx.max(f64::MIN_POSITIVE) || vy <= 1e-9 * syy.max(f64::MIN_POSITIVE) {
            return 0.0;
        }
        ((dot - sx * sy / nf) / (vx * vy).sqrt()).clamp(-1.0, 1.0)
    }
}

/// Indexes in a `while` loop for the reason given on [`dot`].
fn prefix_sums(x: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let mut sum = vec![0.0f64; x.len() + 1];
    let mut sq = vec![0.0f64; x.len() + 1];
    let (mut s, mut q) = (0.0f64, 0.0f64);
    let mut i = 0;
    while i < x.len() {
        let v = x[i] as f64;
        s += v;
        q += v * v;
        sum[i + 1] = s;
        sq[i + 1] = q;
        i += 1;
    }
    (sum, sq)
}

/// Pearson correlation of `x` against `y` at every lag in `0..=max_lag`, with
/// the cross terms from one FFT cross-correlation. Loops index in `while`
/// loops for the reason given on [`dot`].
fn coarse_scores(x: &[f32], y: &[f32], max_lag: usize) -> Vec<f64> {
    let stats = Stats::new(x, y);
    // Terms of y past x.len() + max_lag never meet x; dropping them keeps the
    // transform small. The size must hold x.len() + max_lag so that no lag
    // wraps around the circular correlation.
    let y = &y[..y.len().min(x.len() + max_lag)];
    let n = (x.len() + max_lag).max(y.len()).next_power_of_two();

    // Two real signals in one complex FFT: z = x + i·y.
    let mut re = vec![0.0f64; n];
    let mut im = vec![0.0f64; n];
    let mut i = 0;
    while i < x.len() {
        re[i] = x[i] as f64;
        i += 1;
    }
    i = 0;
    while i < y.len() {
        im[i] = y[i] as f64;
        i += 1;
    }
    fft(&mut re, &mut im, false);

    // X[k] = (Z[k] + conj Z[n-k]) / 2 and Y[k] = (Z[k] - conj Z[n-k]) / 2i;
    // the cross-correlation spectrum is conj(X)·Y. Each pair (k, n-k) is
    // read before either is overwritten.
    let mut k = 0;
    while k <= n / 2 {
        let j = (n - k) % n;
        let (zr, zi, wr, wi) = (re[k], im[k], re[j], im[j]);
        // For index k, with conj Z[j] = (wr, -wi).
        let (xr, xi) = ((zr + wr) / 2.0, (zi - wi) / 2.0);
        let (yr, yi) = ((zi + wi) / 2.0, -(zr - wr) / 2.0);
        re[k] = xr * yr + xi * yi;
        im[k] = xr * yi - xi * yr;
        if j != k {
            // For index j: X[j] = conj X[k], Y[j] = conj Y[k], so
            // conj(X[j])·Y[j] = conj(conj(X[k])·Y[k]).
            re[j] = re[k];
            im[j] = -im[k];
        }
        k += 1;
    }
    fft(&mut re, &mut im, true);

    let scale = 1.0 / n as f64;
    let mut scores = vec![f64::NEG_INFINITY; max_lag + 1];
    let mut lag = 0;
    while lag <= max_lag {
        if stats.overlap(lag) >= 2 {
            scores[lag] = stats.pearson(lag, re[lag] * scale);
        }
        lag += 1;
    }
    scores
}

/// In-place iterative radix-2 FFT; `re.len()` must be a power of two. The
/// inverse is unscaled. Loops index in `while` loops for the reason given on
/// [`dot`].
fn fft(re: &mut [f64], im: &mut [f64], inverse: bool) {
    let n = re.len();
    debug_assert!(n.is_power_of_two() && im.len() == n);
    let mut j = 0;
    let mut i = 1;
    while i < n {
        let mut bit = n >> 1;
        while j & bit != 0 {
            j ^= bit;
            bit >>= 1;
        }
        j |= bit;
        if i < j {
            re.swap(i, j);
            im.swap(i, j);
        }
        i += 1;
    }
    let sign = if inverse { 1.0 } else { -1.0 };
    let mut tw_re = vec![0.0f64; n / 2];
    let mut tw_im = vec![0.0f64; n / 2];
    let mut k = 0;
    while k < n / 2 {
        let a = sign * 2.0 * std::f64::consts::PI * k as f64 / n as f64;
        tw_re[k] = a.cos();
        tw_im[k] = a.sin();
        k += 1;
    }
    let mut len = 2;
    while len <= n {
        let half = len / 2;
        let step = n / len;
        let mut start = 0;
        while start < n {
            let mut k = 0;
            while k < half {
                let (wr, wi) = (tw_re[k * step], tw_im[k * step]);
                let a = start + k;
                let b = a + half;
                let tr = re[b] * wr - im[b] * wi;
                let ti = re[b] * wi + im[b] * wr;
                re[b] = re[a] - tr;
                im[b] = im[a] - ti;
                re[a] += tr;
                im[a] += ti;
                k += 1;
            }
            start += len;
        }
        len <<= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f32::consts::PI;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "boothcast-audio-{}-{}-{name}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).expect("create temp dir");
            Self(dir)
        }

        fn file(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn sine(freq: f32, rate: u32, seconds: f32, amp: f32) -> Vec<f32> {
        let n = (rate as f32 * seconds) as usize;
        (0..n)
            .map(|i| amp * (2.0 * PI * freq * i as f32 / rate as f32).sin())
            .collect()
    }

    /// Linear chirp from `f0` to `f1` Hz at 48 kHz.
    fn chirp(f0: f32, f1: f32, seconds: f32, amp: f32) -> Vec<f32> {
        let n = (SAMPLE_RATE as f32 * seconds) as usize;
        let k = (f1 - f0) / seconds;
        (0..n)
            .map(|i| {
                let t = i as f32 / SAMPLE_RATE as f32;
                amp * (2.0 * PI * (f0 * t + 0.5 * k * t * t)).sin()
            })
            .collect()
    }

    /// Deterministic white noise in -amp..amp (xorshift).
    fn noise(n: usize, seed: u64, amp: f32) -> Vec<f32> {
        let mut s = seed.max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                amp * ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
            })
            .collect()
    }

    /// Frequency estimate from rising zero crossings, skipping the edges where
    /// resampler transients live.
    fn tone_frequency(x: &[f32], rate: u32) -> f32 {
        let skip = x.len() / 10;
        let mid = &x[skip..x.len() - skip];
        let rising: Vec<usize> = mid
            .windows(2)
            .enumerate()
            .filter(|(_, w)| w[0] < 0.0 && w[1] >= 0.0)
            .map(|(i, _)| i)
            .collect();
        let cycles = (rising.len() - 1) as f32;
        let span = (rising[rising.len() - 1] - rising[0]) as f32;
        cycles * rate as f32 / span
    }

    fn peak_abs(x: &[f32]) -> f32 {
        x.iter().fold(0.0f32, |m, s| m.max(s.abs()))
    }

    #[test]
    fn reads_16k_stereo_16bit_wav() {
        let dir = TempDir::new("wav16k");
        let path = dir.file("in.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        // Left at 0.6 and right at 0.4 of the same tone: the mean is 0.5.
        for s in sine(440.0, 16_000, 1.0, 1.0) {
            w.write_sample((s * 0.6 * 32767.0) as i16).unwrap();
            w.write_sample((s * 0.4 * 32767.0) as i16).unwrap();
        }
        w.finalize().unwrap();

        let out = read_wav(&path).unwrap();
        assert!(out.len().abs_diff(48_000) <= 960, "len {}", out.len());
        let f = tone_frequency(&out, SAMPLE_RATE);
        assert!((f - 440.0).abs() < 2.0, "frequency {f}");
        let peak = peak_abs(&out[4800..43_200]);
        assert!((peak - 0.5).abs() < 0.02, "peak {peak}");
    }

    #[test]
    fn reads_44k1_mono_float_wav() {
        let dir = TempDir::new("wav44k1");
        let path = dir.file("in.wav");
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 44_100,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for s in sine(440.0, 44_100, 1.0, 0.8) {
            w.write_sample(s).unwrap();
        }
        w.finalize().unwrap();

        let out = read_wav(&path).unwrap();
        assert!(out.len().abs_diff(48_000) <= 960, "len {}", out.len());
        let f = tone_frequency(&out, SAMPLE_RATE);
        assert!((f - 440.0).abs() < 2.0, "frequency {f}");
        let peak = peak_abs(&out[4800..43_200]);
        assert!((peak - 0.8).abs() < 0.02, "peak {peak}");
    }

    #[test]
    fn reads_8bit_and_24bit_and_48k_without_change() {
        let dir = TempDir::new("wavbits");
        for (bits, rate) in [(8u16, 8_000u32), (24, 96_000), (16, 48_000)] {
            let path = dir.file(&format!("in{bits}.wav"));
            let spec = hound::WavSpec {
                channels: 1,
                sample_rate: rate,
                bits_per_sample: bits,
                sample_format: hound::SampleFormat::Int,
            };
            let full = (1i32 << (bits - 1)) - 1;
            let mut w = hound::WavWriter::create(&path, spec).unwrap();
            let src = sine(440.0, rate, 0.5, 0.5);
            for &s in &src {
                w.write_sample((s * full as f32).round() as i32).unwrap();
            }
            w.finalize().unwrap();

            let out = read_wav(&path).unwrap();
            assert!(
                out.len().abs_diff(24_000) <= 960,
                "{bits}-bit len {}",
                out.len()
            );
            let f = tone_frequency(&out, SAMPLE_RATE);
            assert!((f - 440.0).abs() < 3.0, "{bits}-bit frequency {f}");
            if rate == SAMPLE_RATE {
                assert_eq!(out.len(), src.len());
                assert!(out.iter().zip(&src).all(|(a, b)| (a - b).abs() < 1e-3));
            }
        }
    }

    #[test]
    fn wav_errors_name_the_file() {
        let dir = TempDir::new("waverr");
        let missing = dir.file("missing.wav");
        let msg = read_wav(&missing).unwrap_err().to_string();
        assert!(msg.contains("missing.wav"), "{msg}");

        let path = dir.file("slow.wav");
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 4_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        w.write_sample(0i16).unwrap();
        w.finalize().unwrap();
        let err = read_wav(&path).unwrap_err();
        assert!(matches!(err, Error::UnsupportedWav { .. }), "{err}");
        assert!(err.to_string().contains("slow.wav"), "{err}");
    }

    fn round_trip(input: &[f32]) -> (Vec<f32>, usize) {
        let mut enc = Encoder::new(&encode::Config::default()).unwrap();
        let mut dec = Decoder::new().unwrap();
        let frame = enc.frame_samples();
        assert_eq!(frame, 960);
        let mut out = Vec::new();
        for chunk in input.chunks_exact(frame) {
            let packet = enc.encode(chunk).unwrap();
            assert_eq!(packet_samples(&packet).unwrap(), frame);
            out.extend(dec.decode(&packet).unwrap());
        }
        (out, enc.lookahead_samples())
    }

    #[test]
    fn sine_round_trip_aligns() {
        let input = sine(1000.0, SAMPLE_RATE, 1.0, 0.5);
        let (out, lookahead) = round_trip(&input);
        assert_eq!(out.len(), input.len());
        let a = align(&input, &out, 4800);
        assert!(a.correlation > 0.9, "{a:?} lookahead {lookahead}");
    }

    #[test]
    fn chirp_round_trip_aligns_at_codec_delay() {
        // The main speech band. Above ~8 kHz Opus codes parametrically at
        // this bitrate (band energies, not waveforms), so a waveform
        // correlation there says nothing about quality.
        let input = chirp(100.0, 4000.0, 1.0, 0.5);
        let (out, lookahead) = round_trip(&input);
        let a = align(&input, &out, 4800);
        assert!(a.correlation > 0.9, "{a:?}");
        // A chirp has a unique alignment at the codec delay, give or take the
        // few samples of frequency-dependent group delay in SILK's filters.
        assert!(
            a.lag.abs_diff(lookahead) <= 8,
            "{a:?} lookahead {lookahead}"
        );
    }

    #[test]
    fn noise_is_coded_fullband() {
        let mut enc = Encoder::new(&encode::Config::default()).unwrap();
        let input = noise(48_000, 7, 0.3);
        let mut last = None;
        for chunk in input.chunks_exact(enc.frame_samples()) {
            last = Some(enc.encode(chunk).unwrap());
        }
        let bw = opus::packet::get_bandwidth(&last.unwrap()).unwrap();
        assert_eq!(bw, opus::Bandwidth::Fullband);
    }

    #[test]
    fn frame_durations_match_packet_samples() {
        for ms in [10, 40, 60] {
            let frame = FrameDuration::from_ms(ms).unwrap();
            assert_eq!(frame.ms(), ms);
            assert_eq!(frame.samples(), 48 * ms as usize);
            let config = encode::Config {
                frame,
                ..Default::default()
            };
            let mut enc = Encoder::new(&config).unwrap();
            let mut dec = Decoder::new().unwrap();
            let input = chirp(200.0, 4000.0, 0.5, 0.5);
            for chunk in input.chunks_exact(enc.frame_samples()) {
                let packet = enc.encode(chunk).unwrap();
                assert_eq!(packet_samples(&packet).unwrap(), frame.samples());
                assert_eq!(dec.decode(&packet).unwrap().len(), frame.samples());
            }
        }
        for ms in [0, 5, 15, 30, 80, 120] {
            assert!(matches!(
                FrameDuration::from_ms(ms),
                Err(Error::UnsupportedFrameDuration { .. })
            ));
        }
    }

    #[test]
    fn bad_input_is_rejected() {
        let mut enc = Encoder::new(&encode::Config::default()).unwrap();
        assert!(matches!(
            enc.encode(&[0.0; 100]),
            Err(Error::FrameLength {
                expected: 960,
                actual: 100
            })
        ));
        // NaN input must not break the encoder.
        let packet = enc.encode(&[f32::NAN; 960]).unwrap();
        assert_eq!(packet_samples(&packet).unwrap(), 960);

        let config = encode::Config {
            complexity: 11,
            ..Default::default()
        };
        assert!(matches!(
            Encoder::new(&config),
            Err(Error::InvalidEncoderConfig { .. })
        ));

        assert!(packet_samples(&[]).is_err());
        // Code 3 packet whose frame count byte is missing.
        assert!(packet_samples(&[0x03]).is_err());
        // Code 3 with zero frames is illegal.
        assert!(packet_samples(&[0x03, 0x00]).is_err());
        let mut dec = Decoder::new().unwrap();
        assert!(matches!(
            dec.decode(&[0x03, 0x00]),
            Err(Error::MalformedPacket { .. })
        ));
        assert!(matches!(
            dec.decode(&[]),
            Err(Error::MalformedPacket { .. })
        ));
    }

    #[test]
    fn conceal_returns_requested_samples() {
        let mut enc = Encoder::new(&encode::Config::default()).unwrap();
        let mut dec = Decoder::new().unwrap();
        let input = sine(300.0, SAMPLE_RATE, 0.2, 0.5);
        for chunk in input.chunks_exact(960) {
            dec.decode(&enc.encode(chunk).unwrap()).unwrap();
        }
        for n in [960, 480, 120, 2880] {
            assert_eq!(dec.conceal(n).unwrap().len(), n);
        }
        assert!(dec.conceal(0).unwrap().is_empty());
        assert!(matches!(
            dec.conceal(100),
            Err(Error::ConcealLength { samples: 100 })
        ));
        assert!(dec.conceal(MAX_CONCEAL_SAMPLES + PLC_STEP).is_err());
    }

    #[test]
    fn recover_rebuilds_lost_frame_from_fec() {
        let mut enc = Encoder::new(&encode::Config::default()).unwrap();
        // Speech-like: a gliding harmonic tone with syllable-rate envelope.
        let input: Vec<f32> = chirp(150.0, 300.0, 1.0, 1.0)
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                let t = i as f32 / SAMPLE_RATE as f32;
                let env = 0.3 + 0.2 * (2.0 * PI * 4.0 * t).sin();
                env * (s + 0.5 * s * s * s)
            })
            .collect();
        let packets: Vec<Bytes> = input
            .chunks_exact(960)
            .map(|c| enc.encode(c).unwrap())
            .collect();

        let lost = 30;
        let mut reference = Decoder::new().unwrap();
        let mut with_fec = Decoder::new().unwrap();
        let mut with_plc = Decoder::new().unwrap();
        let mut ideal = Vec::new();
        for (i, p) in packets.iter().enumerate().take(lost + 1) {
            let r = reference.decode(p).unwrap();
            if i < lost {
                with_fec.decode(p).unwrap();
                with_plc.decode(p).unwrap();
            } else {
                ideal = r;
            }
        }
        let fec = with_fec.recover(&packets[lost + 1], 960).unwrap();
        let plc = with_plc.conceal(960).unwrap();
        assert_eq!(fec.len(), 960);
        // The rebuilt frame must resemble the real one, and do so better
        // than blind concealment, or the packet carried no FEC at all.
        let err = |x: &[f32]| -> f32 { x.iter().zip(&ideal).map(|(a, b)| (a - b).powi(2)).sum() };
        let energy: f32 = ideal.iter().map(|a| a * a).sum();
        assert!(
            err(&fec) < 0.5 * energy && err(&fec) < err(&plc),
            "fec err {} plc err {} energy {energy}",
            err(&fec),
            err(&plc)
        );
        // And decoding continues normally afterwards.
        assert_eq!(with_fec.decode(&packets[lost + 1]).unwrap().len(), 960);
        // A short lost frame is filled by concealment plus FEC.
        assert_eq!(
            with_fec.recover(&packets[lost + 2], 1920).unwrap().len(),
            1920
        );
    }

    #[test]
    fn align_finds_injected_lag_fast() {
        let lag = 12_345;
        let reference = noise(10 * SAMPLE_RATE as usize, 42, 0.5);
        let mut recorded = noise(lag, 99, 0.05);
        recorded.extend(reference.iter().map(|s| s * 0.7));
        let start = Instant::now();
        let a = align(&reference, &recorded, 2 * SAMPLE_RATE as usize);
        let elapsed = start.elapsed();
        assert_eq!(a.lag, lag, "{a:?}");
        assert!(a.correlation > 0.99, "{a:?}");
        // Generous bound so a loaded CI machine does not flake; typically far
        // below this even in a debug build.
        assert!(elapsed.as_secs_f32() < 3.0, "align took {elapsed:?}");
    }

    #[test]
    fn align_small_inputs() {
        let reference = noise(2000, 5, 0.5);
        let mut recorded = vec![0.0; 37];
        recorded.extend(&reference);
        let a = align(&reference, &recorded, 100);
        assert_eq!(a.lag, 37);
        assert!(a.correlation > 0.999);
        assert_eq!(align(&[], &recorded, 10).correlation, 0.0);
        assert_eq!(align(&reference, &[0.0; 100], 10).correlation, 0.0);
    }

    #[test]
    fn level_measures_rms_and_peak() {
        let l = level(&sine(1000.0, SAMPLE_RATE, 0.1, 0.5));
        assert!((l.peak - 0.5).abs() < 1e-3);
        assert!((l.rms - 0.5 / 2f32.sqrt()).abs() < 1e-3);
        assert_eq!(level(&[]), Level::default());
        let l = level(&[2.0, f32::NAN, -3.0]);
        assert!(l.peak <= 1.0 && l.rms <= 1.0);
    }

    #[test]
    fn wav_writer_round_trips_through_hound() {
        let dir = TempDir::new("writer");
        let path = dir.file("out.wav");
        let input = sine(440.0, SAMPLE_RATE, 1.5, 0.5);
        let mut w = WavWriter::create(&path).unwrap();
        for chunk in input.chunks(1000) {
            w.write(chunk).unwrap();
        }
        w.finish().unwrap();

        let mut r = hound::WavReader::open(&path).unwrap();
        let spec = r.spec();
        assert_eq!(
            (spec.channels, spec.sample_rate, spec.bits_per_sample),
            (1, 48_000, 16)
        );
        let got: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
        assert_eq!(got.len(), input.len());
        for (g, s) in got.iter().zip(&input) {
            assert!((f32::from(*g) / 32767.0 - s).abs() < 1e-4);
        }
        assert_eq!(read_wav(&path).unwrap().len(), input.len());
    }

    #[test]
    fn unfinished_wav_is_readable_up_to_last_checkpoint() {
        let dir = TempDir::new("killed");
        let path = dir.file("killed.wav");
        let mut w = WavWriter::create(&path).unwrap();
        // 1.5 s in 100 ms pieces: the writer checkpoints after the first
        // second on its own; the last half second is never checkpointed.
        for chunk in sine(440.0, SAMPLE_RATE, 1.5, 0.5).chunks(4800) {
            w.write(chunk).unwrap();
        }
        // Simulate the process being killed: no finish, no destructor.
        std::mem::forget(w);
        let r = hound::WavReader::open(&path).unwrap();
        assert_eq!(r.len(), 48_000);
        assert_eq!(
            r.into_samples::<i16>().filter(Result::is_ok).count(),
            48_000
        );

        // An explicit flush checkpoints everything written so far.
        let path = dir.file("flushed.wav");
        let mut w = WavWriter::create(&path).unwrap();
        w.write(&[0.25; 1234]).unwrap();
        w.flush().unwrap();
        std::mem::forget(w);
        assert_eq!(hound::WavReader::open(&path).unwrap().len(), 1234);
    }
}
