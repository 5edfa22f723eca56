//! Recordings: every channel of the event, the floors included, to Ogg Opus files.
//!
//! Packets are written as the relay carries them, never re-encoded. All the files of one
//! recording session share one timeline, the relay's clock: where a channel carried nothing
//! (muted, silent), silence is written, so the files stay aligned and can be played side by
//! side. A session directory holds one `.opus` file per channel and `index.json` (the start,
//! the channels and their files, and a log of what each channel carried when).
//!
//! Recording never slows the relay: per channel a task takes frames off the channel's queue
//! like a listener and hands them to a writer thread through a bounded queue; if the disk
//! stalls and the queue fills, frames are dropped and counted (`boothcast_recording_lost_total`),
//! and listeners are untouched. Each Ogg page is written to the file as it is made (one page per
//! packet), so a killed relay leaves files that play up to its last moments.

use crate::ogg;
use crate::protocol::{FrameHeader, HEADER_LEN};
use crate::relay::{unix_micros, Relay};
use bytes::Bytes;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use tokio::sync::broadcast;

/// Frames waiting for the disk, all channels together: 2 s of every channel of a 25-channel
/// event at 20 ms frames. A disk that stalls longer loses frames, counted.
pub const WRITE_QUEUE: usize = 2500;
/// A gap in a channel shorter than this is jitter, not silence: the packet is appended.
pub const GAP_TOLERANCE_SAMPLES: u64 = 3 * 960;
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
        at_us: u64,
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
    let dir = root.join(format!("session-{}", start_us / 1_000_000));
    std::fs::create_dir_all(&dir).map_err(|source| Error::Dir {
        dir: dir.display().to_string(),
        source,
    })?;
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
        .spawn(move || writer_thread(rx, tracks, thread_dir, index, start_us, thread_relay))
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
    tasks.push(tokio::spawn(log_changes(relay.clone(), jobs.clone())));
    tracing::info!(dir = %dir.display(), channels = event.channels.len(), "recording");
    Ok(Recording {
        jobs,
        tasks,
        thread: Some(thread),
        dir,
    })
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
            at_us: header.relay_us,
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
async fn log_changes(relay: Arc<Relay>, jobs: SyncSender<Job>) {
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
            let entry = serde_json::json!({"at_unix_us": unix_micros(), "channels": channels});
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
    start_us: u64,
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
    let to_samples = |us: u64| us.saturating_sub(start_us) * 48 / 1000;
    while let Ok(job) = rx.recv() {
        match job {
            Job::Frame {
                channel,
                at_us,
                packet,
                samples,
            } => {
                let track = &mut tracks[channel];
                let written = track.writer.samples();
                // The frame's first sample is due where the relay's clock says it arrived,
                // less its own length.
                let due = to_samples(at_us).saturating_sub(samples as u64);
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
                let end = to_samples(unix_micros())
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
