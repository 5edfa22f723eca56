//! Recordings: every channel of the event, the floors included, to Ogg Opus files.
//!
//! Packets are written as the relay carries them, never re-encoded. All the files of one
//! recording session share one timeline, the relay's monotonic clock from the start of the
//! session: where a channel carried nothing (muted, silent), silence is written, so the files
//! stay aligned and can be played side by side.
//!
//! A frame is placed by its media time, not by when it arrived ([`Placement`]): each sender
//! (a booth console, a floor feed) is anchored once, by the arrival of its first frame, and its
//! frames then go where their own capture times say. A sender that stalls and then sends its
//! backlog in a burst, a network hold-up, or a change of the system clock moves nothing: the
//! files of a session stay aligned within one frame. The anchor follows a sender whose clock
//! runs slower or faster than the relay's, slowly (from the least delay over
//! [`DRIFT_WINDOW`]), so hours of recording do not drift apart. Frames whose sender the relay
//! does not know (a node of a cluster recording what the deciding node sends it) are placed by
//! their arrival. A session directory holds one `.opus` file per channel and `index.json` (the start,
//! the channels and their files, and a log of what each channel carried when).
//!
//! Recording never slows the relay: per channel a task takes frames off the channel's queue
//! like a listener and hands them to a writer thread through a bounded queue; if the disk
//! stalls and the queue fills, frames are dropped and counted (`boothcast_recording_lost_total`),
//! and listeners are untouched. Each Ogg page is written to the file as it is made (one page per
//! packet), so a killed relay leaves files that play up to its last moments.

use crate::ogg;
use crate::protocol::{ErrorCode, FrameHeader, HEADER_LEN};
use crate::relay::{unix_micros, Relay};
use crate::rules::{Refusal, Session};
use bytes::Bytes;
use std::collections::HashMap;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Frames waiting for the disk, all channels together: 2 s of every channel of a 25-channel
/// event at 20 ms frames. A disk that stalls longer loses frames, counted.
pub const WRITE_QUEUE: usize = 2500;
/// A gap in a channel shorter than this (half a 20 ms frame) is jitter, not silence: the
/// packet is appended. Beyond it, silence puts the packet in its place.
pub const GAP_TOLERANCE_SAMPLES: u64 = 480;
/// Every this long, a channel that carried nothing gets silence up to [`FILL_BEHIND`] before
/// now, and the files' buffers go to the disk: after a crash of the relay every file of the
/// session opens, and a silent channel's is shorter than the others by at most this, plus
/// `FILL_BEHIND`, plus its last page (what the last fill wrote), held back for the stop.
pub const FILL_EVERY: Duration = Duration::from_millis(500);
/// How far behind now silence is filled in: the relay's deadline for a silent sender
/// (`server::SENDER_DEADLINE`), so that the frames of a booth whose path stalled for less
/// than that, coming late in a burst, still find their places; a sender silent for longer is
/// gone, and its channel carries nothing.
pub const FILL_BEHIND: Duration = crate::server::SENDER_DEADLINE;
/// The least delay of a sender's frames over this long tells whether its clock drifts from
/// the relay's.
pub const DRIFT_WINDOW: Duration = Duration::from_secs(10);
/// Senders anchored in one session; past this the least recently heard is forgotten (the
/// senders of an event are far fewer).
pub const MAX_ANCHORS: usize = 1024;
/// Entries of the session's event log kept in `index.json`.
pub const MAX_LOG: usize = 10_000;
/// libopus's encoder look-ahead at 48 kHz, the pre-skip of every file.
pub const PRE_SKIP: u16 = 312;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot create the recording directory {dir}: {source}")]
    Dir { dir: String, source: std::io::Error },
    #[error("cannot create recording file {file}: {source}")]
    Create {
        file: String,
        source: std::io::Error,
    },
    #[error("cannot write recording file {file}: {source}")]
    File { file: String, source: ogg::Error },
    #[error("cannot write {file}: {source}")]
    Index {
        file: String,
        source: std::io::Error,
    },
}

enum Job {
    Frame {
        channel: usize,
        /// When the frame reached the recording, on the monotonic clock.
        at: Instant,
        /// The session that sent it (when the relay still remembers).
        sender: Option<Session>,
        /// The sender's capture time of its first sample, µs since the epoch on its clock.
        capture_us: u64,
        packet: Bytes,
        samples: u32,
    },
    Log(serde_json::Value),
    Finish(std::sync::mpsc::Sender<Result<Summary, Error>>),
}

/// What a finished recording session wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    pub seconds: f64,
}

/// A recording in progress. Dropping it without `stop` leaves the files as a crash would.
pub struct Recording {
    jobs: SyncSender<Job>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub dir: PathBuf,
}

struct Track {
    writer: ogg::Writer<BufWriter<std::fs::File>>,
    file: PathBuf,
}

/// Starts recording every channel into a new session directory under `root`.
pub fn start(relay: Arc<Relay>, root: &Path) -> Result<Recording, Error> {
    let start_us = unix_micros();
    let start = Instant::now();
    let dir = session_dir(root, start_us / 1_000_000)?;
    let event = relay.event().clone();
    let mut tracks = Vec::new();
    for (i, ch) in event.channels.iter().enumerate() {
        let file = dir.join(format!("{}.opus", ch.id.replace('/', "-")));
        let out = std::fs::File::create(&file).map_err(|source| Error::Create {
            file: file.display().to_string(),
            source,
        })?;
        let comments = vec![
            format!("TITLE={} ({})", ch.native, ch.id),
            format!("ALBUM={}", event.name),
            format!("LANGUAGE={}", ch.lang),
        ];
        let writer = ogg::Writer::new(BufWriter::new(out), i as u32 + 1, 1, PRE_SKIP, &comments)
            .map_err(|source| Error::File {
                file: file.display().to_string(),
                source,
            })?;
        tracks.push(Track { writer, file });
    }
    let index = serde_json::json!({
        "event": event.name,
        "started_unix_us": start_us,
        "channels": event.channels.iter().zip(&tracks).map(|(c, t)| serde_json::json!({
            "id": c.id,
            "name": c.name,
            "native": c.native,
            "file": t.file.file_name().map(|f| f.to_string_lossy().to_string()),
        })).collect::<Vec<_>>(),
    });
    let (jobs, rx) = sync_channel::<Job>(WRITE_QUEUE);
    let thread_relay = relay.clone();
    let thread_dir = dir.clone();
    let thread = std::thread::Builder::new()
        .name("recorder".into())
        .spawn(move || writer_thread(rx, tracks, thread_dir, index, start, thread_relay))
        .expect("a thread can be spawned");
    let mut tasks = Vec::new();
    for i in 0..event.channels.len() {
        let rx = relay.subscribe(i as u16, false);
        tasks.push(tokio::spawn(take_frames(
            relay.clone(),
            i,
            rx,
            jobs.clone(),
        )));
    }
    tasks.push(tokio::spawn(log_changes(
        relay.clone(),
        jobs.clone(),
        start,
    )));
    tracing::info!(dir = %dir.display(), channels = event.channels.len(), "recording");
    Ok(Recording {
        jobs,
        tasks,
        thread: Some(thread),
        dir,
    })
}

/// A new directory `session-SECONDS` under `root` (made if missing), or `session-SECONDS-N`
/// when a session started in the same second already has that name: a recording started
/// again at once never writes over the one before.
fn session_dir(root: &Path, seconds: u64) -> Result<PathBuf, Error> {
    let err = |dir: &Path, source| Error::Dir {
        dir: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(root).map_err(|e| err(root, e))?;
    for n in 1..=100u32 {
        let dir = match n {
            1 => root.join(format!("session-{seconds}")),
            n => root.join(format!("session-{seconds}-{n}")),
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(err(&dir, e)),
        }
    }
    let dir = root.join(format!("session-{seconds}"));
    Err(err(
        &dir,
        std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "100 sessions started in this second already",
        ),
    ))
}

impl Recording {
    /// Stops: pads every file to the same end, closes the streams, writes the index.
    pub async fn stop(mut self) -> Result<Summary, Error> {
        for t in &self.tasks {
            t.abort();
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let jobs = self.jobs.clone();
        // The queue may be full while the disk catches up: wait for room off the runtime.
        let _ = tokio::task::spawn_blocking(move || jobs.send(Job::Finish(tx))).await;
        let result = tokio::task::spawn_blocking(move || rx.recv())
            .await
            .ok()
            .and_then(|r| r.ok());
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        result.unwrap_or_else(|| {
            Ok(Summary {
                dir: self.dir.clone(),
                files: Vec::new(),
                seconds: 0.0,
            })
        })
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The recording of a relay (at most one at a time), shared by the engineers' connections
/// and, in a cluster, by the node's part in choosing where the cluster records.
#[derive(Clone)]
pub struct Recorder {
    dir: Option<PathBuf>,
    current: Arc<tokio::sync::Mutex<Option<Recording>>>,
}

impl Recorder {
    /// A recorder writing session directories under `dir`; without one, it refuses to start.
    pub fn new(dir: Option<PathBuf>) -> Recorder {
        Recorder {
            dir,
            current: Arc::new(tokio::sync::Mutex::new(None)),
        }
    }

    /// Whether it has a directory to record into.
    pub fn can_record(&self) -> bool {
        self.dir.is_some()
    }

    /// Whether a recording runs here now.
    pub async fn is_recording(&self) -> bool {
        self.current.lock().await.is_some()
    }

    /// Starts or stops recording (nothing if it already is as asked), and tells the relay
    /// ([`Relay::set_recording`]). Stopping returns once every file is closed.
    ///
    /// # Errors
    /// A refusal (`forbidden`) saying why: no directory (`serve --record DIR`), a file that
    /// cannot be created, or a write that failed while recording.
    pub async fn set(&self, relay: &Arc<Relay>, start: bool) -> Result<(), Refusal> {
        let mut current = self.current.lock().await;
        match (start, current.is_some()) {
            (true, false) => {
                let Some(dir) = &self.dir else {
                    return Err(Refusal {
                        code: ErrorCode::Forbidden,
                        message: "recording is not set up: start the relay with --record DIR"
                            .into(),
                    });
                };
                let recording = self::start(relay.clone(), dir).map_err(|e| Refusal {
                    code: ErrorCode::Forbidden,
                    message: e.to_string(),
                })?;
                relay.set_recording(Some(recording.dir.display().to_string()));
                *current = Some(recording);
            }
            (false, true) => {
                let recording = current.take().expect("checked");
                let stopped = recording.stop().await;
                // Told once every file is closed: a recording said to be stopped is whole.
                relay.set_recording(None);
                match stopped {
                    Ok(summary) => tracing::info!(
                        dir = %summary.dir.display(),
                        seconds = summary.seconds,
                        files = summary.files.len(),
                        "recording stopped"
                    ),
                    Err(e) => {
                        tracing::error!(error = %e, "recording stopped with an error");
                        return Err(Refusal {
                            code: ErrorCode::Forbidden,
                            message: e.to_string(),
                        });
                    }
                }
            }
            // Already in the state asked for.
            _ => {}
        }
        Ok(())
    }
}

/// Takes one channel's frames off its queue, like a listener that never falls behind the
/// disk's queue; counts what it cannot hand over.
async fn take_frames(
    relay: Arc<Relay>,
    channel: usize,
    mut rx: broadcast::Receiver<Bytes>,
    jobs: SyncSender<Job>,
) {
    loop {
        let frame = match rx.recv().await {
            Ok(f) => f,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                relay.stats.recording_lost.fetch_add(n, Ordering::Relaxed);
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Ok(header) = FrameHeader::parse(&frame) else {
            continue;
        };
        let packet = frame.slice(HEADER_LEN..);
        let Ok(samples) = opus::packet::get_nb_samples(&packet, 48_000) else {
            continue;
        };
        let job = Job::Frame {
            channel,
            at: Instant::now(),
            sender: relay.sender_of(channel as u16, header.sequence),
            capture_us: header.capture_us,
            packet,
            samples: samples as u32,
        };
        match jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                relay.stats.recording_lost.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => return,
        }
    }
}

/// Logs every change of what the channels carry, for the session index.
async fn log_changes(relay: Arc<Relay>, jobs: SyncSender<Job>, start: Instant) {
    let mut watch = relay.channels_watch();
    loop {
        let json = watch.borrow_and_update().clone();
        if let Ok(serde_json::Value::Object(m)) = serde_json::from_slice::<serde_json::Value>(&json)
        {
            let channels: Vec<serde_json::Value> = m
                .get("channels")
                .and_then(|c| c.as_array())
                .map(|list| {
                    list.iter()
                        .map(|c| {
                            serde_json::json!({
                                "id": c["id"], "carrying": c["carrying"], "live": c["live"], "relay_chain": c["relay_chain"],
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            let entry = serde_json::json!({
                "at_unix_us": unix_micros(),
                "at_s": (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
                "channels": channels,
            });
            if let Err(TrySendError::Disconnected(_)) = jobs.try_send(Job::Log(entry)) {
                return;
            }
        }
        if watch.changed().await.is_err() {
            return;
        }
    }
}

fn writer_thread(
    rx: std::sync::mpsc::Receiver<Job>,
    mut tracks: Vec<Track>,
    dir: PathBuf,
    mut index: serde_json::Value,
    start: Instant,
    relay: Arc<Relay>,
) {
    index["log"] = serde_json::Value::Array(Vec::new());
    let mut failed: Option<Error> = None;
    let index_file = dir.join("index.json");
    let write_index = |index: &serde_json::Value| {
        std::fs::write(
            &index_file,
            serde_json::to_vec_pretty(index).unwrap_or_default(),
        )
        .map_err(|source| Error::Index {
            file: index_file.display().to_string(),
            source,
        })
    };
    if let Err(e) = write_index(&index) {
        failed.get_or_insert(e);
    }
    let since_start = |at: Instant| at.saturating_duration_since(start).as_micros() as i64;
    let mut placement = Placement::default();
    let mut next_fill = Instant::now() + FILL_EVERY;
    loop {
        let job = match rx.recv_timeout(next_fill.saturating_duration_since(Instant::now())) {
            Ok(job) => Some(job),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if Instant::now() >= next_fill {
            next_fill = Instant::now() + FILL_EVERY;
            let upto = Instant::now()
                .checked_sub(FILL_BEHIND)
                .map_or(0, |t| since_start(t).max(0) as u64 * 48 / 1000);
            for track in &mut tracks {
                let written = track.writer.samples();
                let mut result = Ok(());
                if upto > written + GAP_TOLERANCE_SAMPLES {
                    let gap = (upto - written) / 120 * 120;
                    result = track.writer.silence(gap.min(u32::MAX as u64) as u32);
                }
                let result = result.and_then(|_| {
                    std::io::Write::flush(track.writer.get_mut()).map_err(ogg::Error::from)
                });
                if let Err(source) = result {
                    if failed.is_none() {
                        tracing::error!(file = %track.file.display(), error = %source, "recording write failed");
                        failed = Some(Error::File {
                            file: track.file.display().to_string(),
                            source,
                        });
                    }
                }
            }
        }
        let Some(job) = job else { continue };
        match job {
            Job::Frame {
                channel,
                at,
                sender,
                capture_us,
                packet,
                samples,
            } => {
                let track = &mut tracks[channel];
                let written = track.writer.samples();
                let duration_us = i64::from(samples) * 1000 / 48;
                let at_us = since_start(at);
                let first_us = placement.place(sender, capture_us, at_us, duration_us);
                let due = first_us.max(0) as u64 * 48 / 1000;
                let mut result = Ok(());
                if due > written + GAP_TOLERANCE_SAMPLES {
                    let gap = (due - written) / 120 * 120;
                    result = track.writer.silence(gap.min(u32::MAX as u64) as u32);
                }
                result = result.and_then(|_| track.writer.packet(&packet, samples));
                match result {
                    Ok(()) => {
                        // The packet and its page's header and lacing.
                        let bytes = packet.len() as u64 + 27 + 1 + packet.len() as u64 / 255;
                        relay
                            .stats
                            .recording_bytes
                            .fetch_add(bytes, Ordering::Relaxed);
                    }
                    Err(source) => {
                        relay.stats.recording_lost.fetch_add(1, Ordering::Relaxed);
                        if failed.is_none() {
                            tracing::error!(file = %track.file.display(), error = %source, "recording write failed");
                            failed = Some(Error::File {
                                file: track.file.display().to_string(),
                                source,
                            });
                        }
                    }
                }
            }
            Job::Log(entry) => {
                let log = index["log"].as_array_mut().expect("set above");
                if log.len() < MAX_LOG {
                    log.push(entry);
                    if let Err(e) = write_index(&index) {
                        failed.get_or_insert(e);
                    }
                }
            }
            Job::Finish(reply) => {
                let end = (since_start(Instant::now()) as u64 * 48 / 1000)
                    .max(tracks.iter().map(|t| t.writer.samples()).max().unwrap_or(0));
                let end = end / 120 * 120;
                let mut files = Vec::new();
                let mut result: Result<(), Error> = failed.take().map_or(Ok(()), Err);
                for track in tracks.drain(..) {
                    let Track { mut writer, file } = track;
                    let pad = end.saturating_sub(writer.samples()) / 120 * 120;
                    let r = (if pad > 0 {
                        writer.silence(pad as u32)
                    } else {
                        Ok(())
                    })
                    .and_then(|_| writer.finish().map(|_| ()));
                    if let Err(source) = r {
                        result = result.and(Err(Error::File {
                            file: file.display().to_string(),
                            source,
                        }));
                    }
                    files.push(file);
                }
                index["stopped_unix_us"] = serde_json::json!(unix_micros());
                index["seconds"] = serde_json::json!(end as f64 / 48_000.0);
                let result = result.and_then(|_| write_index(&index)).map(|_| Summary {
                    dir: dir.clone(),
                    files,
                    seconds: end as f64 / 48_000.0,
                });
                let _ = reply.send(result);
                return;
            }
        }
    }
}

/// Where each sender's frames go on a recording's timeline (µs from its start): a sender is
/// anchored by its first frame's arrival, then its frames are placed by their own capture
/// times. No I/O; time is an input.
#[derive(Debug, Default)]
pub struct Placement {
    anchors: HashMap<Session, Anchor>,
}

#[derive(Debug)]
struct Anchor {
    /// Place on the timeline = the sender's capture time + `offset_us`.
    offset_us: i64,
    /// The least lateness of the sender's frames since `window_from_us`.
    window_from_us: i64,
    least_late_us: i64,
    last_us: i64,
}

impl Placement {
    /// The place of a frame's first sample, µs into the recording: the frame of `sender`
    /// captured at `capture_us` (the sender's clock, µs since the epoch) lasts `duration_us`
    /// and arrived `at_us` into the recording. A frame of an unknown sender goes where it
    /// arrived, less its length.
    pub fn place(
        &mut self,
        sender: Option<Session>,
        capture_us: u64,
        at_us: i64,
        duration_us: i64,
    ) -> i64 {
        let arrived = at_us - duration_us;
        let Some(sender) = sender else {
            return arrived;
        };
        let capture = capture_us as i64;
        if !self.anchors.contains_key(&sender) && self.anchors.len() >= MAX_ANCHORS {
            let oldest = self
                .anchors
                .iter()
                .min_by_key(|(_, a)| a.last_us)
                .map(|(s, _)| *s);
            if let Some(s) = oldest {
                self.anchors.remove(&s);
            }
        }
        let a = self.anchors.entry(sender).or_insert(Anchor {
            offset_us: arrived - capture,
            window_from_us: at_us,
            least_late_us: i64::MAX,
            last_us: at_us,
        });
        a.last_us = at_us;
        let mut late = arrived - (capture + a.offset_us);
        if late < -duration_us {
            // It came more than a frame before its place: the first frame was held up on its
            // way (or the sender's clock runs fast). The anchor moves earlier at once.
            a.offset_us += late;
            late = 0;
        }
        a.least_late_us = a.least_late_us.min(late);
        if at_us - a.window_from_us >= DRIFT_WINDOW.as_micros() as i64 {
            // Every frame of the window came more than a frame late: the sender's clock runs
            // slower than the relay's. Follow it.
            if a.least_late_us > duration_us {
                a.offset_us += a.least_late_us;
            }
            a.window_from_us = at_us;
            a.least_late_us = i64::MAX;
        }
        capture + a.offset_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: i64 = 20_000;

    #[test]
    fn a_session_started_in_the_same_second_gets_a_directory_of_its_own() {
        let root =
            std::env::temp_dir().join(format!("boothcast-session-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let first = session_dir(&root, 1_700_000_000).unwrap();
        let second = session_dir(&root, 1_700_000_000).unwrap();
        assert_eq!(first, root.join("session-1700000000"));
        assert_eq!(second, root.join("session-1700000000-2"));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_stall_and_its_burst_keep_their_places() {
        let mut p = Placement::default();
        let capture0 = 1_700_000_000_000_000u64;
        // Frames arrive 30 ms after their capture starts (20 ms frame + 10 ms network).
        let mut places = Vec::new();
        for k in 0..100i64 {
            let capture = capture0 + (k * FRAME) as u64;
            // Frames 40..65 are held up (the sender froze) and come at once at 1.33 s.
            let at = if (40..65).contains(&k) {
                1_330_000
            } else {
                k * FRAME + 30_000
            };
            places.push(p.place(Some(7), capture, at, FRAME));
        }
        for (k, w) in places.windows(2).enumerate() {
            assert_eq!(w[1] - w[0], FRAME, "frame {k}: {places:?}");
        }
        assert_eq!(places[0], 10_000);
    }

    #[test]
    fn a_clock_change_on_the_sender_moves_nothing_after_the_anchor() {
        let mut p = Placement::default();
        // Two senders with clocks an hour apart, anchored by their first frames.
        let a = p.place(Some(1), 5_000_000_000, 1_000_000, FRAME);
        let b = p.place(Some(2), 5_000_000_000 + 3_600_000_000, 1_000_000, FRAME);
        assert_eq!(a, b);
        let a2 = p.place(Some(1), 5_000_000_000 + 500_000, 1_500_000, FRAME);
        assert_eq!(a2 - a, 500_000);
    }

    #[test]
    fn a_sender_whose_clock_runs_slow_is_followed() {
        let mut p = Placement::default();
        // The sender's clock runs 0.1 % slow: its 20 ms frames take 20.02 ms of the relay's.
        let mut last = 0;
        for k in 0..3_000i64 {
            let capture = (k * FRAME) as u64;
            let at = k * 20_020 + FRAME;
            last = p.place(Some(3), capture, at, FRAME);
        }
        let arrived = 2_999 * 20_020;
        assert!(
            (arrived - last).abs() <= 2 * FRAME,
            "placed {last}, arrived {arrived}"
        );
        // And one whose clock runs fast is followed at once.
        let mut p = Placement::default();
        for k in 0..3_000i64 {
            let capture = (k * FRAME) as u64;
            let at = k * 19_980 + FRAME;
            last = p.place(Some(3), capture, at, FRAME);
        }
        let arrived = 2_999 * 19_980;
        assert!(
            (arrived - last).abs() <= FRAME,
            "placed {last}, arrived {arrived}"
        );
    }
}
