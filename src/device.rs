//! Real audio devices through cpal: listing them, capturing a microphone as mono 48 kHz, and
//! playing to headphones, each device on its own thread.
//!
//! The cpal callbacks never lock, allocate, log or block: samples cross between the callback
//! and the rest of the program through lock-free single-producer single-consumer rings
//! (`rtrb`), and counters are atomics. Each `cpal::Stream` lives on a thread of its own, driven
//! by [`Command`]s; the handle ([`Capture`], [`Playback`]) stops and joins that thread when
//! dropped. A device that fails or disappears is reopened with back-off; every opening makes a
//! new ring, handed to the reading (or writing) side through a channel.
//!
//! Device names are those `boothcast devices` prints: a PulseAudio source or sink name (such as
//! `alsa_input.usb-...` or `booth_mic.monitor`) when a PulseAudio server runs, ALSA PCM names
//! (`default`, `pulse`, `hw:CARD=...`) otherwise.

use crate::audio::{self, Decoder, SAMPLE_RATE};
use crate::jitter::{self, JitterBuffer, Next};
use crate::protocol::{FrameHeader, HEADER_LEN};
use bytes::Bytes;
use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, SampleFormat, SizedSample, StreamConfig};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

/// The device's own buffer per callback, asked for: 5 ms first, two of them in the device (cpal
/// asks ALSA for two periods). The whole budget, sound in to sound out, is 45 ms at 10 ms
/// frames, of which the codec takes 16.5 ms: every period of buffering is heard. Capture in
/// 5 ms periods also completes 10 and 20 ms frames evenly (10 ms periods reached ALSA's
/// PulseAudio plugin as 6.7 ms ones, which complete 10 ms frames 6.7 and 13.3 ms apart, a
/// jitter every listener then had to buffer). A device (or a machine) that cannot keep up with
/// a period, [`XRUNS_TO_STEP`] xruns within [`XRUN_WINDOW`], is reopened with the next one:
/// glitches every second are worse than 10 ms more delay. Now and then an xrun is not: on a
/// busy desktop 5 ms periods run dry up to 22 times in 30 s, and a reopening costs a gap of
/// its own and restarts the jitter buffer.
const PERIODS: [Duration; 3] = [
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(20),
];
const XRUNS_TO_STEP: u64 = 20;
const XRUN_WINDOW: Duration = Duration::from_secs(10);
/// The rings hold 200 ms: the lip-sync budget. A reader further behind than that has already
/// lost the listener; the samples that do not fit are counted (overruns) rather than delivered
/// late.
const RING: Duration = Duration::from_millis(200);
/// Reopening a failed device: 200 ms doubling to 5 s, as for the relay connection.
const REOPEN_FIRST: Duration = Duration::from_millis(200);
const REOPEN_MAX: Duration = Duration::from_secs(5);
/// How often the device thread looks at its stream's health and its commands.
const WATCH: Duration = Duration::from_millis(50);
/// A stream that reports errors and has not called back for this long is broken and is
/// reopened. Long beside a period, short beside a meeting: a PulseAudio stream can take a
/// fraction of a second to (re)start.
const STUCK: Duration = Duration::from_secs(2);
/// A stream whose thread spins on an error (through ALSA's PulseAudio plugin, a stream the
/// sound server killed reports hundreds of errors a millisecond) is broken once it has
/// reported this many without calling back for [`SPIN_FOR`]. An xrun's passing errors stop
/// within a few milliseconds and the callbacks come back.
const SPINNING: u64 = 10_000;
const SPIN_FOR: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(
        "no audio {direction} device named `{name}`; `boothcast devices` lists them ({known})"
    )]
    NotFound {
        direction: &'static str,
        name: String,
        known: String,
    },
    #[error("no default audio {0} device: is a sound server (PulseAudio) running? `boothcast devices` lists the devices")]
    NoDefault(&'static str),
    #[error("cannot open audio {direction} device `{name}`: {reason}")]
    Open {
        direction: &'static str,
        name: String,
        reason: String,
    },
    #[error("audio device `{name}` uses sample format {format}, which boothcast does not read")]
    Format { name: String, format: String },
    #[error("the audio device thread could not start: {0}")]
    Thread(String),
    #[error(transparent)]
    Audio(#[from] audio::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Input,
    Output,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Input => "input",
            Direction::Output => "output",
        }
    }
}

/// A device's default configuration.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Format {
    pub channels: u16,
    pub rate: u32,
    pub sample_format: String,
}

/// One device as `boothcast devices` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Info {
    /// The audio system (PulseAudio, ALSA).
    pub host: String,
    /// The name to pass to `--input-device` / `--output-device`.
    pub name: String,
    pub description: String,
    pub input: Option<Format>,
    pub output: Option<Format>,
    pub default_input: bool,
    pub default_output: bool,
}

/// The audio systems to look in: the default one (PulseAudio when its server runs) first.
fn hosts() -> Vec<cpal::Host> {
    let first = cpal::default_host();
    let mut hosts = vec![];
    for id in cpal::available_hosts() {
        if id != first.id() {
            if let Ok(h) = cpal::host_from_id(id) {
                hosts.push(h);
            }
        }
    }
    hosts.insert(0, first);
    hosts
}

fn device_name(d: &cpal::Device) -> String {
    d.id()
        .map(|id| id.id().to_string())
        .or_else(|_| d.description().map(|x| x.name().to_string()))
        .unwrap_or_else(|_| "?".into())
}

fn format(c: &cpal::SupportedStreamConfig) -> Format {
    Format {
        channels: c.channels(),
        rate: c.sample_rate(),
        sample_format: c.sample_format().to_string(),
    }
}

/// Every input and output device of every audio system, with its default configuration.
pub fn list() -> Vec<Info> {
    let mut out = Vec::new();
    for host in hosts() {
        let default_in = host.default_input_device().map(|d| device_name(&d));
        let default_out = host.default_output_device().map(|d| device_name(&d));
        let Ok(devices) = host.devices() else {
            continue;
        };
        for d in devices {
            let name = device_name(&d);
            let input = d.default_input_config().ok().map(|c| format(&c));
            let output = d.default_output_config().ok().map(|c| format(&c));
            if input.is_none() && output.is_none() {
                continue;
            }
            out.push(Info {
                host: host.id().name().to_string(),
                description: d
                    .description()
                    .map(|x| x.name().to_string())
                    .unwrap_or_default(),
                default_input: input.is_some() && default_in.as_deref() == Some(name.as_str()),
                default_output: output.is_some() && default_out.as_deref() == Some(name.as_str()),
                name,
                input,
                output,
            });
        }
    }
    out
}

/// Finds a device by its name (or description), or the default one.
fn find(direction: Direction, name: Option<&str>) -> Result<(cpal::Device, String), Error> {
    let Some(name) = name else {
        let host = cpal::default_host();
        let d = match direction {
            Direction::Input => host.default_input_device(),
            Direction::Output => host.default_output_device(),
        }
        .ok_or(Error::NoDefault(direction.name()))?;
        let n = device_name(&d);
        return Ok((d, n));
    };
    let mut known = Vec::new();
    for host in hosts() {
        let Ok(devices) = host.devices() else {
            continue;
        };
        for d in devices {
            let fits = match direction {
                Direction::Input => d.supports_input(),
                Direction::Output => d.supports_output(),
            };
            if !fits {
                continue;
            }
            let n = device_name(&d);
            let description = d.description().map(|x| x.name().to_string());
            if n == name || description.as_deref().ok() == Some(name) {
                return Ok((d, n));
            }
            known.push(n);
        }
    }
    known.truncate(12);
    Err(Error::NotFound {
        direction: direction.name(),
        name: name.to_string(),
        known: if known.is_empty() {
            "none found".into()
        } else {
            format!("e.g. {}", known.join(", "))
        },
    })
}

/// The stream configuration to ask for: the device's default channels and sample format, at
/// 48 kHz when the device can (no resampling), with a small fixed buffer when it allows one.
fn choose_config(
    device: &cpal::Device,
    direction: Direction,
    period: Duration,
) -> Result<(StreamConfig, SampleFormat), cpal::Error> {
    let default = match direction {
        Direction::Input => device.default_input_config()?,
        Direction::Output => device.default_output_config()?,
    };
    let ranges: Vec<cpal::SupportedStreamConfigRange> = match direction {
        Direction::Input => device.supported_input_configs()?.collect(),
        Direction::Output => device.supported_output_configs()?.collect(),
    };
    let same = |r: &&cpal::SupportedStreamConfigRange| {
        r.channels() == default.channels() && r.sample_format() == default.sample_format()
    };
    let rate = if ranges
        .iter()
        .filter(same)
        .any(|r| r.contains_rate(SAMPLE_RATE))
    {
        SAMPLE_RATE
    } else {
        default.sample_rate()
    };
    let period = (rate as u64 * period.as_micros() as u64 / 1_000_000) as u32;
    let buffer_size = match default.buffer_size() {
        cpal::SupportedBufferSize::Range { min, max } if (*min..=*max).contains(&period) => {
            cpal::BufferSize::Fixed(period)
        }
        _ => cpal::BufferSize::Default,
    };
    Ok((
        StreamConfig {
            channels: default.channels(),
            sample_rate: rate,
            buffer_size,
        },
        default.sample_format(),
    ))
}

/// Commands to a device thread.
enum Command {
    /// Stop the stream and end the thread.
    Stop,
}

/// A device thread: opens the stream, watches it, reopens it after a failure, until stopped.
struct Driver {
    commands: mpsc::Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How a stream is doing, as its callbacks tell it (atomics only: the data callback writes
/// here).
#[derive(Default)]
struct Health {
    /// The stream is gone (device lost, stream invalidated): reopen it.
    failed: AtomicBool,
    /// Data callbacks so far.
    callbacks: AtomicU64,
    /// Errors that cpal recovers from by itself, so far.
    errors: AtomicU64,
    /// Xruns since the device was first opened: the device found its own buffer empty (output)
    /// or full (input), and cpal restarted it.
    xruns: AtomicU64,
    /// Which of [`PERIODS`] the device is opened with.
    step: AtomicU64,
}

impl Health {
    fn reset(&self) {
        self.failed.store(false, Ordering::Release);
        self.errors.store(0, Ordering::Relaxed);
    }

    /// The period to open the device with.
    fn period(&self) -> Duration {
        let step = self.step.load(Ordering::Relaxed) as usize;
        PERIODS[step.min(PERIODS.len() - 1)]
    }
}

/// Watches a stream for the device thread: a stream that keeps reporting errors without
/// calling back is as good as failed.
struct Watch {
    callbacks: u64,
    errors: u64,
    progress: std::time::Instant,
    /// Xruns at the start of the current window, and when it started.
    xruns: u64,
    window: std::time::Instant,
}

impl Watch {
    fn new(health: &Health, now: std::time::Instant) -> Watch {
        Watch {
            callbacks: 0,
            errors: 0,
            progress: now,
            xruns: health.xruns.load(Ordering::Relaxed),
            window: now,
        }
    }

    /// The stream ran dry (or over) [`XRUNS_TO_STEP`] times within an [`XRUN_WINDOW`] and a
    /// longer period is left to try.
    fn too_many_xruns(&mut self, health: &Health, now: std::time::Instant) -> bool {
        let xruns = health.xruns.load(Ordering::Relaxed);
        if now.duration_since(self.window) >= XRUN_WINDOW {
            self.window = now;
            self.xruns = xruns;
            return false;
        }
        let longer = (health.step.load(Ordering::Relaxed) as usize) + 1 < PERIODS.len();
        longer && xruns - self.xruns >= XRUNS_TO_STEP
    }

    fn broken(&mut self, health: &Health) -> bool {
        if health.failed.load(Ordering::Acquire) {
            return true;
        }
        let callbacks = health.callbacks.load(Ordering::Relaxed);
        let errors = health.errors.load(Ordering::Relaxed);
        if callbacks != self.callbacks || errors == self.errors {
            // Calling back, or quiet (an idle stream may not call back): fine.
            self.callbacks = callbacks;
            self.errors = errors;
            self.progress = std::time::Instant::now();
            return false;
        }
        let waited = self.progress.elapsed();
        waited >= STUCK || (errors - self.errors >= SPINNING && waited >= SPIN_FOR)
    }
}

/// What a device thread needs to (re)open its stream: it returns the stream, whose callbacks
/// report to the given [`Health`].
type Opener = Box<dyn FnMut(&Arc<Health>) -> Result<cpal::Stream, Error> + Send>;

impl Driver {
    /// Starts the thread and waits for the first opening, whose error is returned.
    fn start(label: String, health: Arc<Health>, mut open: Opener) -> Result<Driver, Error> {
        let (commands, rx) = mpsc::channel();
        let (first_tx, first_rx) = mpsc::sync_channel::<Result<(), Error>>(1);
        let thread = std::thread::Builder::new()
            .name(format!("audio {label}"))
            .spawn(move || {
                let mut watch = Watch::new(&health, std::time::Instant::now());
                let mut stream = match open(&health) {
                    Ok(s) => {
                        let _ = first_tx.send(Ok(()));
                        Some(s)
                    }
                    Err(e) => {
                        let _ = first_tx.send(Err(e));
                        return;
                    }
                };
                let mut backoff = REOPEN_FIRST;
                loop {
                    let wait = if stream.is_some() { WATCH } else { backoff };
                    match rx.recv_timeout(wait) {
                        Ok(Command::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                    }
                    if stream.is_some() && watch.broken(&health) {
                        tracing::warn!(device = %label, errors = health.errors.load(Ordering::Relaxed),
                            "audio device failed; reopening");
                        stream = None;
                        continue;
                    }
                    if stream.is_some() && watch.too_many_xruns(&health, std::time::Instant::now()) {
                        let from = health.period();
                        health.step.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(device = %label, "{XRUNS_TO_STEP} xruns within {} s with {} ms periods: reopening with {} ms periods",
                            XRUN_WINDOW.as_secs(), from.as_millis(), health.period().as_millis());
                        // At once: the device works, it only needs more room.
                        stream = None;
                    }
                    if stream.is_none() {
                        health.reset();
                        match open(&health) {
                            Ok(s) => {
                                tracing::info!(device = %label, "audio device reopened");
                                stream = Some(s);
                                watch = Watch::new(&health, std::time::Instant::now());
                                backoff = REOPEN_FIRST;
                            }
                            Err(e) => {
                                tracing::warn!(device = %label, "{e}; retrying in {} ms", backoff.as_millis());
                                backoff = (backoff * 2).min(REOPEN_MAX);
                            }
                        }
                    }
                }
                drop(stream);
            })
            .map_err(|e| Error::Thread(e.to_string()))?;
        let first = first_rx
            .recv()
            .unwrap_or_else(|_| Err(Error::Thread("the audio thread ended".into())));
        let driver = Driver {
            commands,
            thread: Some(thread),
        };
        first.map(|()| driver)
    }
}

/// The error callback: it runs on the stream's thread, so it only counts. A lost device or an
/// invalidated stream ends cpal's stream thread and needs a reopening. Everything else cpal
/// recovers from by itself: an xrun (the overrun and underrun counters show its effect), and
/// passing errors such as the EIO that ALSA's PulseAudio plugin answers `snd_pcm_avail_delay`
/// with after every xrun, until the new PulseAudio stream's first timing report arrives a few
/// milliseconds later. Reopening the device for those would turn a 10 ms glitch into a gap of a
/// quarter of a second; a stream that never gets over its errors stops calling back, and
/// [`Watch`] reopens it.
fn on_error(health: Arc<Health>) -> impl FnMut(cpal::Error) + Send + 'static {
    use cpal::ErrorKind::*;
    move |e| match e.kind() {
        DeviceNotAvailable | StreamInvalidated | HostUnavailable => {
            health.failed.store(true, Ordering::Release);
        }
        Xrun => {
            health.xruns.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            health.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn open_error(direction: Direction, name: &str) -> impl Fn(cpal::Error) -> Error + '_ {
    move |e| Error::Open {
        direction: direction.name(),
        name: name.to_string(),
        reason: e.to_string(),
    }
}

/// Calls `typed::<T>(...)` with `T` the sample type of `format`; `Err(None)` for a sample format
/// this program does not read or write.
macro_rules! by_format {
    ($format:expr, typed($($arg:expr),*)) => {
        match $format {
            SampleFormat::F32 => typed::<f32>($($arg),*),
            SampleFormat::I16 => typed::<i16>($($arg),*),
            SampleFormat::I32 => typed::<i32>($($arg),*),
            SampleFormat::U16 => typed::<u16>($($arg),*),
            SampleFormat::U8 => typed::<u8>($($arg),*),
            SampleFormat::I8 => typed::<i8>($($arg),*),
            SampleFormat::F64 => typed::<f64>($($arg),*),
            SampleFormat::I24 => typed::<cpal::I24>($($arg),*),
            _ => Err(None),
        }
    };
}

/// A stream that could not be built: cpal's error, or (`None`) a sample format this program
/// does not read or write.
fn stream_error(
    direction: Direction,
    name: &str,
    format: SampleFormat,
) -> impl Fn(Option<cpal::Error>) -> Error + '_ {
    move |e| match e {
        Some(e) => open_error(direction, name)(e),
        None => Error::Format {
            name: name.to_string(),
            format: format.to_string(),
        },
    }
}

fn ring_samples(rate: u32) -> usize {
    (rate as u64 * RING.as_millis() as u64 / 1000) as usize
}

// ---------------------------------------------------------------------------
// Capture

/// One opening of an input device: its ring and rate.
struct InFeed {
    samples: rtrb::Consumer<f32>,
    rate: u32,
}

/// A microphone: mono 48 kHz samples from any input device.
pub struct Capture {
    name: String,
    feeds: mpsc::Receiver<InFeed>,
    feed: Option<InFeed>,
    resampler: Option<Resampler>,
    /// Mono 48 kHz samples read and not yet taken.
    pending: Vec<f32>,
    overruns: Arc<AtomicU64>,
    _driver: Driver,
}

impl Capture {
    /// Opens an input device by name, or the default one.
    pub fn open(name: Option<&str>) -> Result<Capture, Error> {
        let (device, name) = find(Direction::Input, name)?;
        let overruns = Arc::new(AtomicU64::new(0));
        let (feeds_tx, feeds) = mpsc::channel();
        let counter = overruns.clone();
        let label = name.clone();
        let open: Opener = Box::new(move |health| {
            let err = open_error(Direction::Input, &label);
            let (config, format) =
                choose_config(&device, Direction::Input, health.period()).map_err(&err)?;
            let (producer, consumer) = rtrb::RingBuffer::new(ring_samples(config.sample_rate));
            let stream = build_input(
                &device,
                config,
                format,
                producer,
                counter.clone(),
                health.clone(),
            )
            .map_err(stream_error(Direction::Input, &label, format))?;
            stream.play().map_err(&err)?;
            tracing::info!(device = %label, channels = config.channels, rate = config.sample_rate,
                format = %format, buffer = ?config.buffer_size, "capturing");
            let _ = feeds_tx.send(InFeed {
                samples: consumer,
                rate: config.sample_rate,
            });
            Ok(stream)
        });
        let driver = Driver::start(format!("input {name}"), Arc::default(), open)?;
        Ok(Capture {
            name,
            feeds,
            feed: None,
            resampler: None,
            pending: Vec::with_capacity(ring_samples(SAMPLE_RATE)),
            overruns,
            _driver: driver,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Samples lost since opening: the ring had no room for them, or they were taken too late.
    pub fn overruns(&self) -> u64 {
        self.overruns.load(Ordering::Relaxed)
    }

    /// Moves what the device captured into `pending`, at 48 kHz.
    fn read(&mut self) -> Result<(), Error> {
        while let Ok(feed) = self.feeds.try_recv() {
            // The device was reopened: what the old ring still held is stale.
            self.resampler = if feed.rate == SAMPLE_RATE {
                None
            } else {
                Some(Resampler::new(feed.rate, SAMPLE_RATE)?)
            };
            self.feed = Some(feed);
        }
        let Some(feed) = self.feed.as_mut() else {
            return Ok(());
        };
        let n = feed.samples.slots();
        if n == 0 {
            return Ok(());
        }
        let chunk = feed
            .samples
            .read_chunk(n)
            .expect("slots() samples are readable");
        let (a, b) = chunk.as_slices();
        match self.resampler.as_mut() {
            None => {
                self.pending.extend_from_slice(a);
                self.pending.extend_from_slice(b);
            }
            Some(r) => {
                r.push(a, &mut self.pending)?;
                r.push(b, &mut self.pending)?;
            }
        }
        chunk.commit_all();
        Ok(())
    }

    /// The next `samples` samples if the device has captured them. Sound that waited longer
    /// than [`RING`] to be taken is dropped and counted as overruns: it would reach listeners
    /// too late to be played, and sending it in a burst would exceed the relay's limit on how
    /// fast a sender may send.
    pub fn take(&mut self, samples: usize) -> Result<Option<Vec<f32>>, Error> {
        self.read()?;
        let stale = self
            .pending
            .len()
            .saturating_sub(samples + ring_samples(SAMPLE_RATE));
        if stale > 0 {
            self.pending.drain(..stale);
            self.overruns.fetch_add(stale as u64, Ordering::Relaxed);
        }
        if self.pending.len() < samples {
            return Ok(None);
        }
        Ok(Some(self.pending.drain(..samples).collect()))
    }

    /// Drops everything captured so far (after an outage: it would only be late).
    pub fn discard(&mut self) -> Result<(), Error> {
        self.read()?;
        self.pending.clear();
        Ok(())
    }
}

/// Builds an input stream that downmixes to mono and pushes into `ring`.
/// `Err(None)`: a sample format this program does not read.
fn build_input(
    device: &cpal::Device,
    config: StreamConfig,
    format: SampleFormat,
    ring: rtrb::Producer<f32>,
    overruns: Arc<AtomicU64>,
    health: Arc<Health>,
) -> Result<cpal::Stream, Option<cpal::Error>> {
    fn typed<T>(
        device: &cpal::Device,
        config: StreamConfig,
        mut ring: rtrb::Producer<f32>,
        overruns: Arc<AtomicU64>,
        health: Arc<Health>,
    ) -> Result<cpal::Stream, Option<cpal::Error>>
    where
        T: SizedSample,
        f32: FromSample<T>,
    {
        let channels = usize::from(config.channels.max(1));
        let scale = 1.0 / channels as f32;
        let watched = health.clone();
        device
            .build_input_stream::<T, _, _>(
                config,
                move |data: &[T], _| {
                    // Realtime: no locks, no allocation, no logging.
                    watched.callbacks.fetch_add(1, Ordering::Relaxed);
                    let mut lost = 0;
                    for frame in data.chunks_exact(channels) {
                        let mut sum = 0.0f32;
                        for &s in frame {
                            sum += s.to_sample::<f32>();
                        }
                        if ring.push(sum * scale).is_err() {
                            lost += 1;
                        }
                    }
                    if lost > 0 {
                        overruns.fetch_add(lost, Ordering::Relaxed);
                    }
                },
                on_error(health),
                None,
            )
            .map_err(Some)
    }
    by_format!(format, typed(device, config, ring, overruns, health))
}

// ---------------------------------------------------------------------------
// Resampling

/// A streaming resampler for devices that do not run at 48 kHz: rubato's windowed sinc, as
/// `audio::read_wav` uses, with a shorter filter (64 taps: about 0.7 ms of delay at 48 kHz)
/// because here every sample of delay is heard.
struct Resampler {
    inner: rubato::SincFixedIn<f32>,
    input: Vec<f32>,
    output: Vec<Vec<f32>>,
}

impl Resampler {
    fn new(from: u32, to: u32) -> Result<Resampler, Error> {
        use rubato::{
            calculate_cutoff, SincInterpolationParameters, SincInterpolationType, WindowFunction,
        };
        const SINC_LEN: usize = 64;
        let window = WindowFunction::BlackmanHarris2;
        let params = SincInterpolationParameters {
            sinc_len: SINC_LEN,
            f_cutoff: calculate_cutoff(SINC_LEN, window),
            interpolation: SincInterpolationType::Linear,
            oversampling_factor: 128,
            window,
        };
        // Chunks of 2.5 ms at the input rate.
        let chunk = (from / 400).max(16) as usize;
        let inner = rubato::SincFixedIn::new(to as f64 / from as f64, 1.0, params, chunk, 1)
            .map_err(|e| audio::Error::Resample {
                path: "(audio device)".into(),
                rate: from,
                reason: e.to_string(),
            })?;
        let output = rubato::Resampler::output_buffer_allocate(&inner, true);
        Ok(Resampler {
            inner,
            input: Vec::with_capacity(chunk * 2),
            output,
        })
    }

    fn push(&mut self, samples: &[f32], out: &mut Vec<f32>) -> Result<(), Error> {
        use rubato::Resampler as _;
        self.input.extend_from_slice(samples);
        let mut pos = 0;
        while self.input.len() - pos >= self.inner.input_frames_next() {
            let need = self.inner.input_frames_next();
            let (_, n) = self
                .inner
                .process_into_buffer(&[&self.input[pos..pos + need]], &mut self.output, None)
                .map_err(|e| audio::Error::Resample {
                    path: "(audio device)".into(),
                    rate: 0,
                    reason: e.to_string(),
                })?;
            out.extend_from_slice(&self.output[0][..n]);
            pos += need;
        }
        self.input.drain(..pos);
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Playing a channel

/// A frame with a peak below this (-dBFS, as in the frame header) is a pause: the jitter
/// buffer may trim it unheard.
const QUIET_PEAK: u8 = 45;
/// Concealment after the last decoded frame fades out; beyond this, silence.
const MAX_PLC: usize = 5 * 960;
/// The longest Opus packet (RFC 6716, 3.2.1).
const MAX_PACKET: usize = 1275;
/// The longest Opus frame: 120 ms at 48 kHz.
const MAX_FRAME: usize = 5760;
/// Frames on their way from the network to the output callback. The callback takes them every
/// period (5 ms); 64 frames are 0.6 s or more of sound, so the ring fills only when the device
/// has stopped calling back, and then the frames that do not fit are dropped (the jitter
/// buffer conceals them, or restarts at live).
const ARRIVALS: usize = 64;

/// An Opus packet held by value: the output callback keeps and passes these without
/// allocating.
#[derive(Clone)]
struct Packet {
    len: u16,
    data: [u8; MAX_PACKET],
}

impl Packet {
    fn bytes(&self) -> &[u8] {
        &self.data[..usize::from(self.len)]
    }
}

/// A frame from the relay as it crosses to the output callback.
struct Arrival {
    at_us: u64,
    channel: u16,
    sequence: u32,
    samples: usize,
    quiet: bool,
    packet: Packet,
}

/// What the output callback reports (atomics only: the callback writes here).
#[derive(Default)]
struct PlayoutShared {
    /// `f64` bits, in ms.
    delay_ms: AtomicU64,
    target_ms: AtomicU64,
    underruns: AtomicU64,
    concealed: AtomicU64,
    late: AtomicU64,
    dropped: AtomicU64,
    resets: AtomicU64,
    undecodable: AtomicU64,
}

impl PlayoutShared {
    fn store(&self, s: &jitter::Stats, undecodable: u64) {
        self.delay_ms.store(s.delay_ms.to_bits(), Ordering::Relaxed);
        self.target_ms
            .store(s.target_ms.to_bits(), Ordering::Relaxed);
        self.underruns.store(s.underruns, Ordering::Relaxed);
        self.concealed.store(s.concealed, Ordering::Relaxed);
        self.late.store(s.late, Ordering::Relaxed);
        self.dropped.store(s.dropped, Ordering::Relaxed);
        self.resets.store(s.resets, Ordering::Relaxed);
        self.undecodable.store(undecodable, Ordering::Relaxed);
    }
}

/// Plays a relay channel (its frames as received) on an output device through the adaptive
/// jitter buffer, concealing losses with Opus PLC and FEC.
///
/// The output callback pulls: at each device period it takes the frames that have arrived,
/// asks the jitter buffer what is due now, and decodes it straight into the device's buffer.
/// Nothing is decided ahead of the device, so the jitter buffer's delay and the device's own
/// buffer (two 5 ms periods) are all that is added to the sound's way. The callback never
/// locks, allocates, logs or blocks: frames reach it by value through an `rtrb` ring, the
/// jitter buffer and the decoder work in space reserved when the device opens, and the
/// figures go out through atomics.
pub struct Player {
    name: String,
    volume: Volume,
    /// Where frames go: the ring of the device's current opening.
    arrivals: Option<rtrb::Producer<Arrival>>,
    opened: mpsc::Receiver<rtrb::Producer<Arrival>>,
    epoch: std::time::Instant,
    shared: Arc<PlayoutShared>,
    health: Arc<Health>,
    /// Frames that did not fit in the ring (the device was not calling back).
    overflow: u64,
    /// Frames whose Opus packet did not parse.
    unparsed: u64,
    _driver: Driver,
}

/// Highest volume: twice the signal, for a quiet channel in a noisy hall.
pub const MAX_VOLUME: f32 = 2.0;

/// A player's volume, 0.0 to [`MAX_VOLUME`]: a handle that can turn it while it plays (the
/// output callback reads it once per period).
#[derive(Debug, Clone)]
pub struct Volume(Arc<AtomicU32>);

impl Volume {
    pub fn new(volume: f32) -> Volume {
        let v = Volume(Arc::new(AtomicU32::new(0)));
        v.set(volume);
        v
    }

    pub fn get(&self) -> f32 {
        f32::from_bits(self.0.load(Ordering::Relaxed))
    }

    /// Sets the volume, kept within 0.0 to [`MAX_VOLUME`]; returns what it was set to.
    pub fn set(&self, volume: f32) -> f32 {
        let v = if volume.is_finite() {
            volume.clamp(0.0, MAX_VOLUME)
        } else {
            0.0
        };
        self.0.store(v.to_bits(), Ordering::Relaxed);
        v
    }
}

impl Player {
    /// Opens an output device by name, or the default one, at `volume`, with a jitter buffer
    /// that adapts within `config`.
    pub fn open(
        name: Option<&str>,
        volume: Volume,
        config: jitter::Config,
    ) -> Result<Player, Error> {
        let (device, name) = find(Direction::Output, name)?;
        let gain = volume.clone();
        let epoch = std::time::Instant::now();
        let shared = Arc::new(PlayoutShared::default());
        let (opened_tx, opened) = mpsc::channel();
        let label = name.clone();
        let figures = shared.clone();
        let open: Opener = Box::new(move |health| {
            let err = open_error(Direction::Output, &label);
            let (config_out, format) =
                choose_config(&device, Direction::Output, health.period()).map_err(&err)?;
            let (producer, consumer) = rtrb::RingBuffer::new(ARRIVALS);
            let render = Render::new(consumer, config, epoch, figures.clone(), config_out)?;
            let stream = build_output(
                &device,
                config_out,
                format,
                render,
                gain.clone(),
                health.clone(),
            )
            .map_err(stream_error(Direction::Output, &label, format))?;
            stream.play().map_err(&err)?;
            tracing::info!(device = %label, channels = config_out.channels,
                rate = config_out.sample_rate, format = %format,
                buffer = ?config_out.buffer_size, "playing");
            let _ = opened_tx.send(producer);
            Ok(stream)
        });
        let health = Arc::new(Health::default());
        let driver = Driver::start(format!("output {name}"), health.clone(), open)?;
        Ok(Player {
            name,
            volume,
            arrivals: None,
            opened,
            epoch,
            shared,
            health,
            overflow: 0,
            unparsed: 0,
            _driver: driver,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn volume(&self) -> &Volume {
        &self.volume
    }

    /// A frame from the relay (header and Opus packet).
    pub fn frame(&mut self, frame: &Bytes) {
        while let Ok(p) = self.opened.try_recv() {
            // The device was (re)opened: its callback starts from the next frame.
            self.arrivals = Some(p);
        }
        let Ok(header) = FrameHeader::parse(frame) else {
            return;
        };
        let opus = &frame[HEADER_LEN..];
        let samples = match audio::packet_samples(opus) {
            Ok(n) if n <= MAX_FRAME && opus.len() <= MAX_PACKET => n,
            _ => {
                self.unparsed += 1;
                return;
            }
        };
        let Some(ring) = self.arrivals.as_mut() else {
            return;
        };
        let mut packet = Packet {
            len: opus.len() as u16,
            data: [0; MAX_PACKET],
        };
        packet.data[..opus.len()].copy_from_slice(opus);
        let arrival = Arrival {
            at_us: self.epoch.elapsed().as_micros() as u64,
            channel: header.channel,
            sequence: header.sequence,
            samples,
            quiet: header.peak >= QUIET_PEAK,
            packet,
        };
        if ring.push(arrival).is_err() {
            self.overflow += 1;
        }
    }

    /// What the jitter buffer measured.
    pub fn stats(&self) -> jitter::Stats {
        let s = &self.shared;
        let ms = |a: &AtomicU64| f64::from_bits(a.load(Ordering::Relaxed));
        jitter::Stats {
            delay_ms: ms(&s.delay_ms),
            target_ms: ms(&s.target_ms),
            underruns: s.underruns.load(Ordering::Relaxed),
            concealed: s.concealed.load(Ordering::Relaxed),
            late: s.late.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed) + self.overflow,
            resets: s.resets.load(Ordering::Relaxed),
        }
    }

    /// Frames that could not be played: their Opus packet did not parse or decode.
    pub fn undecodable(&self) -> u64 {
        self.unparsed + self.shared.undecodable.load(Ordering::Relaxed)
    }

    /// Device xruns since opening: the device's own buffer ran dry (the sound server or this
    /// program was held up), and the listener heard a gap.
    pub fn underruns(&self) -> u64 {
        self.health.xruns.load(Ordering::Relaxed)
    }

    /// The device period in use, in ms (longer after repeated xruns).
    pub fn period_ms(&self) -> f64 {
        self.health.period().as_secs_f64() * 1000.0
    }
}

/// The output callback's side of a [`Player`]: everything it needs, reserved up front.
struct Render {
    arrivals: rtrb::Consumer<Arrival>,
    jitter: JitterBuffer<Packet>,
    decoder: Decoder,
    /// Decoded sound not yet played (a frame is longer than a period): `pcm[pos..len]`.
    pcm: Vec<f32>,
    pos: usize,
    len: usize,
    /// Samples concealed since the last decoded frame.
    concealing: usize,
    undecodable: u64,
    epoch: std::time::Instant,
    shared: Arc<PlayoutShared>,
    /// For a device that does not run at 48 kHz: the resampler, its input and its output.
    resampler: Option<Resampler>,
    chunk: Vec<f32>,
    resampled: Vec<f32>,
}

impl Render {
    fn new(
        arrivals: rtrb::Consumer<Arrival>,
        config: jitter::Config,
        epoch: std::time::Instant,
        shared: Arc<PlayoutShared>,
        device: StreamConfig,
    ) -> Result<Render, Error> {
        let resampler = if device.sample_rate == SAMPLE_RATE {
            None
        } else {
            Some(Resampler::new(SAMPLE_RATE, device.sample_rate)?)
        };
        Ok(Render {
            arrivals,
            jitter: JitterBuffer::new(config),
            decoder: Decoder::new()?,
            pcm: vec![0.0; MAX_FRAME],
            pos: 0,
            len: 0,
            concealing: MAX_PLC,
            undecodable: 0,
            epoch,
            shared,
            resampler,
            chunk: vec![0.0; jitter::STEP],
            resampled: Vec::with_capacity(ring_samples(device.sample_rate)),
        })
    }

    /// Fills `out` (mono, at the device's rate) with what is due now.
    fn render(&mut self, out: &mut [f32]) {
        let now_us = self.epoch.elapsed().as_micros() as u64;
        while let Ok(a) = self.arrivals.pop() {
            self.jitter
                .push(a.at_us, a.channel, a.sequence, a.samples, a.quiet, a.packet);
        }
        if self.resampler.is_none() {
            self.render_48k(now_us, out);
        } else {
            let mut chunk = std::mem::take(&mut self.chunk);
            while self.resampled.len() < out.len() {
                self.render_48k(now_us, &mut chunk);
                let Some(r) = self.resampler.as_mut() else {
                    break;
                };
                if r.push(&chunk, &mut self.resampled).is_err() {
                    break;
                }
            }
            self.chunk = chunk;
            let n = out.len().min(self.resampled.len());
            out[..n].copy_from_slice(&self.resampled[..n]);
            out[n..].fill(0.0);
            self.resampled.drain(..n);
        }
        self.shared.store(&self.jitter.stats(), self.undecodable);
    }

    /// Fills `out` with mono 48 kHz sound: what is left of the last frame, then what the
    /// jitter buffer says is due at `now_us`.
    fn render_48k(&mut self, now_us: u64, out: &mut [f32]) {
        let mut done = 0;
        while done < out.len() {
            if self.pos < self.len {
                let n = (self.len - self.pos).min(out.len() - done);
                out[done..done + n].copy_from_slice(&self.pcm[self.pos..self.pos + n]);
                self.pos += n;
                done += n;
                continue;
            }
            // Sound decided now plays as far into this period as is already filled.
            let at = now_us + done as u64 * 1000 / 48;
            let (start, len) = match self.jitter.next(at) {
                Next::Play { frame, trim } => {
                    match self.decoder.decode_into(frame.bytes(), &mut self.pcm) {
                        Ok(n) => {
                            self.concealing = 0;
                            (trim.min(n), n)
                        }
                        Err(_) => {
                            self.undecodable += 1;
                            (0, self.fill(self.jitter.frame_samples()))
                        }
                    }
                }
                Next::Lost { samples, fec } => match fec {
                    Some(next) if self.concealing < MAX_PLC && samples <= MAX_FRAME => {
                        self.concealing += samples;
                        match self
                            .decoder
                            .recover_into(next.bytes(), &mut self.pcm[..samples])
                        {
                            Ok(n) => (0, n),
                            Err(_) => (0, self.fill(samples)),
                        }
                    }
                    _ => (0, self.fill(samples)),
                },
                Next::Fill { samples, .. } => (0, self.fill(samples)),
            };
            self.pos = start;
            self.len = len;
        }
    }

    /// Sound for a stretch with nothing to decode, into `pcm`: Opus PLC right after sound,
    /// then silence. Returns its length.
    fn fill(&mut self, samples: usize) -> usize {
        let samples =
            (samples.div_ceil(jitter::STEP) * jitter::STEP).clamp(jitter::STEP, MAX_FRAME);
        let out = &mut self.pcm[..samples];
        if self.concealing < MAX_PLC {
            self.concealing += samples;
            if self.decoder.conceal_into(out).is_ok() {
                return samples;
            }
        }
        out.fill(0.0);
        samples
    }
}

/// Builds an output stream that renders a [`Player`]'s channel on every channel of the device
/// at `volume`.
fn build_output(
    device: &cpal::Device,
    config: StreamConfig,
    format: SampleFormat,
    render: Render,
    volume: Volume,
    health: Arc<Health>,
) -> Result<cpal::Stream, Option<cpal::Error>> {
    fn typed<T>(
        device: &cpal::Device,
        config: StreamConfig,
        mut render: Render,
        volume: Volume,
        health: Arc<Health>,
    ) -> Result<cpal::Stream, Option<cpal::Error>>
    where
        T: SizedSample + FromSample<f32>,
    {
        let channels = usize::from(config.channels.max(1));
        // Mono sound for one callback; cpal's periods are fixed, this is room for several.
        let mut mono = vec![0.0f32; ring_samples(config.sample_rate)];
        let watched = health.clone();
        device
            .build_output_stream::<T, _, _>(
                config,
                move |data: &mut [T], _| {
                    // Realtime: no locks, no allocation, no logging.
                    watched.callbacks.fetch_add(1, Ordering::Relaxed);
                    let frames = (data.len() / channels).min(mono.len());
                    render.render(&mut mono[..frames]);
                    let gain = volume.get();
                    for (frame, &s) in data.chunks_exact_mut(channels).zip(&mono[..frames]) {
                        let v = T::from_sample((s * gain).clamp(-1.0, 1.0));
                        for out in frame {
                            *out = v;
                        }
                    }
                },
                on_error(health),
                None,
            )
            .map_err(Some)
    }
    by_format!(format, typed(device, config, render, volume, health))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn repeated_xruns_step_to_a_longer_period() {
        let health = Health::default();
        let t0 = Instant::now();
        let mut watch = Watch::new(&health, t0);
        assert_eq!(health.period(), Duration::from_millis(5));
        // Nineteen xruns in the window: carry on.
        health.xruns.store(19, Ordering::Relaxed);
        assert!(!watch.too_many_xruns(&health, t0 + Duration::from_secs(9)));
        // The window ends: counting starts again.
        assert!(!watch.too_many_xruns(&health, t0 + Duration::from_secs(10)));
        health.xruns.store(38, Ordering::Relaxed);
        assert!(!watch.too_many_xruns(&health, t0 + Duration::from_secs(15)));
        health.xruns.store(39, Ordering::Relaxed);
        assert!(watch.too_many_xruns(&health, t0 + Duration::from_secs(16)));
        health.step.store(1, Ordering::Relaxed);
        assert_eq!(health.period(), Duration::from_millis(10));
        // At the longest period there is nothing more to try.
        health.step.store(2, Ordering::Relaxed);
        assert_eq!(health.period(), Duration::from_millis(20));
        let mut watch = Watch::new(&health, t0);
        health.xruns.store(1000, Ordering::Relaxed);
        assert!(!watch.too_many_xruns(&health, t0 + Duration::from_secs(1)));
    }
}
