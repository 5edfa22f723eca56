//! Pacing: frames of an input when they are due, with their capture times.

use super::pace::Pace;
use super::{Block, Kind, MAX_HOLD};
use crate::audio::SAMPLE_RATE;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Silent frames sent after a file's end, so the listener's decoder finishes the last word.
const TAIL_FRAMES: u64 = 10;
/// How long a live input has been arriving when its pacing is said in the log: its bursts are
/// known by then (three of ffmpeg's Ogg pages).
const TELL_AFTER: Duration = Duration::from_secs(3);
/// How long a live input may hold more than [`MAX_HOLD`] before the oldest is dropped: a
/// program that ends writes what it held at once (ffmpeg its last Ogg pages) and closes the
/// pipe a few milliseconds later; that end is sent in full.
const OVER_HOLD_GRACE: Duration = Duration::from_millis(250);
/// A hold shorter than this (a steady input written in blocks of a frame or two) is not worth
/// a line in the log.
const TELL_FROM: Duration = Duration::from_millis(50);

/// `now` minus the duration of `samples`: the anchor that makes sample `samples` due now.
fn back(now: Instant, samples: u64) -> Instant {
    now.checked_sub(Duration::from_micros(
        samples * 1_000_000 / u64::from(SAMPLE_RATE),
    ))
    .unwrap_or(now)
}

/// [`MAX_HOLD`] in samples at 48 kHz.
fn hold_limit() -> usize {
    MAX_HOLD.as_micros() as usize * SAMPLE_RATE as usize / 1_000_000
}

/// Microseconds since the Unix epoch.
fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// How an input's bursts are named in the log, and what would make them shorter: ("Ogg
/// pages", "have ffmpeg write WAV or use -page_duration 20000").
pub(crate) type Bursts = (&'static str, &'static str);

/// Frames of an input, paced (see the module docs).
pub struct Feed {
    rx: mpsc::Receiver<Block>,
    kind: Kind,
    frame: usize,
    /// Samples arrived and not yet sent or dropped.
    pending: VecDeque<f32>,
    /// The media position of `pending`'s first sample, in samples since the start (those
    /// dropped included).
    pos: u64,
    ended: bool,
    /// Silent frames still to send after the end.
    tail: u64,
    /// A file's timeline: sample `n` is due (fully captured) at `anchor + n / 48 kHz`.
    anchor: Option<Instant>,
    /// A live input's timeline: its pacing buffer.
    pace: Pace,
    /// When the feed started, on both clocks: capture times are `start_us` plus monotonic time.
    start: Instant,
    start_us: u64,
    /// After an outage, a file's timeline skips to here (a media position in samples).
    skip_to: u64,
    overruns: Arc<AtomicU64>,
    /// For the log: the input's name, its kind of bursts, when it first arrived, and whether
    /// its hold and a drop were told.
    name: PathBuf,
    bursts: Bursts,
    first_arrival: Option<Instant>,
    told_hold: bool,
    told_drop: bool,
    /// Since when a live input holds more than [`MAX_HOLD`].
    over_since: Option<Instant>,
}

impl Feed {
    pub(super) fn new(
        rx: mpsc::Receiver<Block>,
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
            // skipped like any outage. A stream's timeline is set by its arrivals.
            anchor: (kind == Kind::File).then_some(start),
            pace: Pace::new(frame),
            start,
            start_us: unix_micros(),
            skip_to: 0,
            overruns,
            name: PathBuf::from("the input"),
            bursts: (
                "blocks as written",
                "have the program writing it write smaller blocks",
            ),
            first_arrival: None,
            told_hold: false,
            told_drop: false,
            over_since: None,
        }
    }

    /// Names the input and its kind of bursts for the log.
    pub(super) fn told(mut self, name: PathBuf, bursts: Bursts) -> Feed {
        self.name = name;
        self.bursts = bursts;
        self
    }

    /// Wall-clock time of the feed's start, microseconds since the epoch.
    pub fn start_us(&self) -> u64 {
        self.start_us
    }

    /// Whether the input is a file or a live stream.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Samples dropped so far: what a live input delivered beyond [`MAX_HOLD`], or blocks that
    /// found the queue full.
    pub fn overruns(&self) -> u64 {
        self.overruns.load(Ordering::Relaxed)
    }

    /// µs since the feed's start (negative before it).
    fn micros(&self, t: Instant) -> i64 {
        match t.checked_duration_since(self.start) {
            Some(d) => d.as_micros() as i64,
            None => -((self.start - t).as_micros() as i64),
        }
    }

    /// The instant `us` µs after the feed's start.
    fn instant(&self, us: i64) -> Instant {
        let d = Duration::from_micros(us.unsigned_abs());
        if us >= 0 {
            self.start + d
        } else {
            self.start.checked_sub(d).unwrap_or(self.start)
        }
    }

    /// A block (or the end) from the decoding thread. A live input's arrival sets its pacing,
    /// and what it holds is bounded.
    fn arrive(&mut self, block: Option<Block>) {
        let Some(block) = block else {
            self.ended = true;
            return;
        };
        if self.kind == Kind::Live {
            let start = self.pos + self.pending.len() as u64;
            let end = start + block.pcm.len() as u64;
            if let Some(later) = self.pace.arrival(self.micros(block.at), start, end) {
                tracing::debug!(
                    input = %self.name.display(),
                    "the input came {:.1} ms late: frames are sent that much later",
                    later as f64 / 1000.0
                );
            }
            self.first_arrival.get_or_insert(block.at);
        }
        self.pending.extend(block.pcm);
        if self.kind == Kind::Live {
            // However fast the input comes, what waits stays bounded.
            self.bound(2 * hold_limit());
        }
    }

    /// Takes what has already arrived, without waiting.
    fn take_arrived(&mut self) {
        while !self.ended {
            match self.rx.try_recv() {
                Ok(b) => self.arrive(Some(b)),
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
    ///
    /// Cancel-safe: what arrived while it waited is kept, and a frame is taken only once due.
    pub async fn next(&mut self) -> Option<(Vec<f32>, u64)> {
        match self.kind {
            Kind::File => self.next_file().await,
            Kind::Live => self.next_live().await,
        }
    }

    /// Pads what is left at the end to a frame, then silent frames; `false` once all are sent.
    fn fill_end(&mut self) -> bool {
        if self.pending.is_empty() {
            if self.tail == 0 {
                return false;
            }
            self.tail -= 1;
        }
        self.pending.resize(self.frame, 0.0);
        true
    }

    async fn next_file(&mut self) -> Option<(Vec<f32>, u64)> {
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
                self.arrive(block);
            }
        }
        while self.pending.len() < frame && !self.ended {
            let block = self.rx.recv().await;
            self.arrive(block);
        }
        if self.pending.len() < frame && !self.fill_end() {
            return None;
        }
        let now = Instant::now();
        let end = self.pos + frame as u64;
        let anchor = *self.anchor.get_or_insert_with(|| back(now, end));
        let due = self.due(anchor, end);
        if now < due {
            tokio::time::sleep_until(due.into()).await;
        }
        let pcm: Vec<f32> = self.pending.drain(..frame).collect();
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

    async fn next_live(&mut self) -> Option<(Vec<f32>, u64)> {
        let frame = self.frame as u64;
        loop {
            self.take_arrived();
            if (self.pending.len() as u64) < frame {
                if !self.ended {
                    let block = self.rx.recv().await;
                    self.arrive(block);
                    continue;
                }
                if !self.fill_end() {
                    return None;
                }
            }
            let now = Instant::now();
            self.pace.start_at(self.micros(now), self.pos + frame);
            let due = self.instant(self.pace.due(self.pos + frame).expect("started"));
            if now >= due {
                break;
            }
            if self.ended {
                tokio::time::sleep_until(due.into()).await;
                break;
            }
            // Waiting for the frame's time, the input is still taken as it arrives: its
            // arrival times are what the pacing measures, and a later one may move the clock.
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => break,
                block = self.rx.recv() => self.arrive(block),
            }
        }
        // The hold is bounded when a frame is due, once it has been over for a while, rather
        // than as the input arrives: what a program writes as it ends is sent in full.
        self.take_arrived();
        let now = Instant::now();
        if self.ended || self.pending.len() <= self.frame + hold_limit() {
            self.over_since = None;
        } else if now.saturating_duration_since(*self.over_since.get_or_insert(now))
            >= OVER_HOLD_GRACE
        {
            self.bound(hold_limit());
            self.over_since = None;
        }
        let pcm: Vec<f32> = self.pending.drain(..self.frame).collect();
        let first = self.pace.due(self.pos).expect("started");
        let first_us = (self.start_us as i64 + first).max(0) as u64;
        self.pos += frame;
        self.pace.sent(self.micros(now));
        self.tell_hold(now);
        Some((pcm, first_us))
    }

    /// Says once in the log how far behind a bursty live input frames are sent, and why.
    fn tell_hold(&mut self, now: Instant) {
        if self.told_hold
            || self
                .first_arrival
                .is_none_or(|t| now.saturating_duration_since(t) < TELL_AFTER)
        {
            return;
        }
        self.told_hold = true;
        let Some((burst, behind)) = self.pace.hold() else {
            return;
        };
        if behind < TELL_FROM.as_micros() as i64 {
            return;
        }
        let (what, advice) = self.bursts;
        tracing::info!(
            input = %self.name.display(),
            "the input arrives in bursts of about {:.1} s ({what}): sending {:.1} s behind it, \
             so that frames leave evenly; for less delay {advice}",
            burst as f64 / 1e6,
            behind as f64 / 1e6,
        );
    }

    /// A live input's pacing buffer holds at most `hold` samples beyond the frame being sent:
    /// the oldest beyond it is dropped in whole frames, counted, and said once in the log.
    fn bound(&mut self, hold: usize) {
        let limit = self.frame + hold;
        if self.pending.len() <= limit {
            return;
        }
        let excess = self.pending.len() - limit;
        let drop = excess.div_ceil(self.frame) * self.frame;
        let drop = drop.min(self.pending.len() - self.frame);
        self.pending.drain(..drop);
        self.pos += drop as u64;
        self.pace.dropped(drop as u64);
        self.overruns.fetch_add(drop as u64, Ordering::Relaxed);
        if !self.told_drop {
            self.told_drop = true;
            tracing::warn!(
                input = %self.name.display(),
                "more of the input came at once than the {} s held to send it evenly: the \
                 oldest {:.2} s was dropped (a stall upstream, or sound sent faster than real \
                 time: send a recording with ffmpeg -re); further drops are counted as overruns",
                MAX_HOLD.as_secs(),
                drop as f64 / f64::from(SAMPLE_RATE),
            );
        }
    }

    /// A live input's frames whose time has passed are dropped (while no relay takes them).
    fn drop_overdue(&mut self) {
        self.take_arrived();
        let now = self.micros(Instant::now());
        let frame = self.frame as u64;
        while self.pending.len() as u64 >= frame
            && self.pace.due(self.pos + frame).is_some_and(|d| d <= now)
        {
            self.pending.drain(..self.frame);
            self.pos += frame;
        }
    }

    /// After an outage: what was due meanwhile is gone. A file skips to now on its timeline; a
    /// stream drops the frames whose time has passed, and goes on with its clock.
    pub fn skip_to_now(&mut self) {
        match self.kind {
            Kind::File => {
                let Some(anchor) = self.anchor else {
                    return;
                };
                let now_pos =
                    anchor.elapsed().as_micros() as u64 * u64::from(SAMPLE_RATE) / 1_000_000;
                let frame = self.frame as u64;
                self.skip_to = self.skip_to.max(now_pos / frame * frame);
            }
            Kind::Live => self.drop_overdue(),
        }
    }

    /// While not connected: a live input keeps being read, and its frames dropped as their
    /// time comes, so the pipe upstream never backs up and the clock goes on; a file waits.
    /// Never returns.
    pub async fn idle(&mut self) {
        match self.kind {
            Kind::File => std::future::pending().await,
            Kind::Live => {
                while !self.ended {
                    let block = self.rx.recv().await;
                    self.arrive(block);
                    self.drop_overdue();
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

    fn block(value: f32, n: usize) -> Block {
        Block {
            at: Instant::now(),
            pcm: vec![value; n],
        }
    }

    /// Frames of `feed` until its end: when each left, its capture time and first sample.
    async fn frames(mut feed: Feed) -> Vec<(Instant, u64, f32)> {
        let mut out = Vec::new();
        while let Some((pcm, capture_us)) = feed.next().await {
            out.push((Instant::now(), capture_us, pcm[0]));
        }
        out
    }

    /// The most frames that left within 2 ms of each other, one after the other.
    fn clumped(frames: &[(Instant, u64, f32)]) -> usize {
        let (mut together, mut most) = (1, 1);
        for w in frames.windows(2) {
            if w[1].0 - w[0].0 < Duration::from_millis(2) {
                together += 1;
                most = most.max(together);
            } else {
                together = 1;
            }
        }
        most
    }

    /// What a program writes at once as it ends is all sent, evenly.
    #[tokio::test]
    async fn what_comes_at_the_end_is_sent_in_full() {
        let (tx, rx) = mpsc::channel(QUEUE);
        let overruns = Arc::new(AtomicU64::new(0));
        let feed = Feed::new(rx, Kind::Live, 960, overruns.clone());
        let producer = tokio::spawn(async move {
            for _ in 0..300 {
                tx.send(block(0.1, 480)).await.unwrap();
            }
        });
        let frames = frames(feed).await;
        producer.await.unwrap();
        assert_eq!(overruns.load(Ordering::Relaxed), 0);
        assert_eq!(frames.len(), 150 + 10);
        assert!(
            clumped(&frames) <= 2,
            "{} frames left at once",
            clumped(&frames)
        );
    }

    /// A live input that stalls for half a second and then delivers its backlog at once: the
    /// stall is a gap in what is sent, the backlog is sent evenly after it (nothing dropped: it
    /// is within what is held), never in a clump.
    #[tokio::test]
    async fn a_stalled_live_input_is_a_gap_then_sent_evenly() {
        let (tx, rx) = mpsc::channel(QUEUE);
        let overruns = Arc::new(AtomicU64::new(0));
        let feed = Feed::new(rx, Kind::Live, 960, overruns.clone());
        let producer = tokio::spawn(async move {
            let start = Instant::now();
            let mut sent = 0u32;
            // 1 s in real time, 10 ms blocks; then nothing for 0.5 s; then 0.5 s at once; then
            // 0.5 s in real time again.
            for phase in [(100u32, true), (50, false), (50, true)] {
                for _ in 0..phase.0 {
                    tx.send(block(0.1, 480)).await.unwrap();
                    sent += 1;
                    if phase.1 {
                        let at = start + Duration::from_millis(10 * u64::from(sent));
                        tokio::time::sleep_until(at.into()).await;
                    }
                }
                if sent == 100 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        });
        let frames = frames(feed).await;
        producer.await.unwrap();
        assert_eq!(overruns.load(Ordering::Relaxed), 0, "nothing dropped");
        assert_eq!(frames.len(), 100 + 10, "every frame and the silent tail");
        assert!(
            clumped(&frames) <= 2,
            "{} frames left at once",
            clumped(&frames)
        );
        // Capture times never go back, and jump where the input stalled.
        let gaps: Vec<u64> = frames
            .windows(2)
            .map(|w| w[1].1.saturating_sub(w[0].1))
            .collect();
        assert!(frames.windows(2).all(|w| w[1].1 >= w[0].1));
        assert!(gaps.iter().any(|g| *g > 400_000), "{gaps:?}");
    }

    /// Three seconds at once (a stall's backlog, or a recording sent faster than real time),
    /// then the input in real time: what is beyond the hold is dropped, the oldest first, and
    /// counted; the rest leaves evenly.
    #[tokio::test]
    async fn more_than_the_hold_at_once_is_dropped_oldest_first() {
        let (tx, rx) = mpsc::channel(QUEUE);
        let overruns = Arc::new(AtomicU64::new(0));
        let feed = Feed::new(rx, Kind::Live, 960, overruns.clone());
        let producer = tokio::spawn(async move {
            // Each 10 ms block carries its number.
            for k in 0..300 {
                tx.send(block(k as f32 / 1000.0, 480)).await.unwrap();
            }
            let start = Instant::now();
            for k in 1..=50u64 {
                tokio::time::sleep_until((start + Duration::from_millis(10 * k)).into()).await;
                tx.send(block(0.3, 480)).await.unwrap();
            }
        });
        let frames = frames(feed).await;
        producer.await.unwrap();
        let dropped_ms = overruns.load(Ordering::Relaxed) as f64 / 48.0;
        assert!(
            (900.0..=1100.0).contains(&dropped_ms),
            "dropped {dropped_ms} ms"
        );
        // After a grace (the input might have been ending), the oldest second went at once:
        // the frames jump from the first second of the input to its second.
        let jump = frames
            .windows(2)
            .map(|w| w[1].2 - w[0].2)
            .fold(0.0, f32::max);
        assert!((0.09..0.125).contains(&jump), "jump of {jump}");
        assert!(
            clumped(&frames) <= 2,
            "{} frames left at once",
            clumped(&frames)
        );
    }
}
