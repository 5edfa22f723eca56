//! Pacing: frames of an input when they are due, with their capture times.

use super::{Kind, MAX_BACKLOG};
use crate::audio::SAMPLE_RATE;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

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

/// Microseconds since the Unix epoch.
fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
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
    pub(super) fn new(
        rx: mpsc::Receiver<Vec<f32>>,
        kind: Kind,
        frame: usize,
        overruns: Arc<AtomicU64>,
    ) -> Feed {
        let start = Instant::now();
        Feed {
            rx,
            kind,
            frame,
            pending: VecDeque::new(),
            pos: 0,
            ended: false,
            tail: TAIL_FRAMES,
            // A file is a microphone that started with the feed: its sample 0 is captured at
            // `start` (what `start_us` says), and what passes while the sender connects is
            // skipped like any outage. A stream's timeline is set by its first sound.
            anchor: (kind == Kind::File).then_some(start),
            start,
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
    use crate::input::QUEUE;

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
