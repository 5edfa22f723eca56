//! The pacing buffer of a live input: when each frame of a stream whose sound arrives in bursts
//! may leave, so that frames leave on a steady clock. No I/O; time is an input.
//!
//! A live input is written by another program, often in bursts: ffmpeg `-re` writes what it
//! read from its own input in packets of about 0.1 s, an Ogg muxer a page at a time (ffmpeg's
//! pages hold 1 s), a network feed whatever the network gave it. Sent as it arrives, such an
//! input leaves in clumps that a listener's small jitter margin drops as late. [`Pace`] holds
//! just enough of it to send evenly: it measures how far behind the input's newest sound the
//! oldest sound of each arrival is (the burst), and sends every frame that much later than it
//! could have left on the input's own timeline.
//!
//! Time and positions: `now` is microseconds on a monotonic clock (any origin); positions are
//! samples at 48 kHz since the input's start, counting those dropped.

use crate::audio::SAMPLE_RATE;
use std::collections::VecDeque;
use std::time::Duration;

/// Margin kept before a frame's time for the thread that decodes the input and the task that
/// sends it to be woken: a frame whose last sample arrives less than this before it is due
/// moves the clock later.
pub const MARGIN: Duration = Duration::from_millis(5);
/// Added to the hold while the input's bursts are being learned (its first [`WINDOW`]): a
/// stream's first blocks are often shorter than its later ones (ffmpeg's first write, a
/// decoder's start), and how much its arrivals vary is not known yet. Every later increase of
/// the hold reaches listeners as frames that come that much later than those before them,
/// which a small jitter margin (40 ms) drops as late; this allowance keeps the hold from having
/// to grow once listeners hear it, and is given back after the first seconds.
pub const EARLY: Duration = Duration::from_millis(100);
/// How long a burst is remembered: longer than two of the longest bursts held
/// ([`super::MAX_HOLD`]), so that a burst that recurs is still remembered when it comes again.
pub const WINDOW: Duration = Duration::from_secs(5);
/// Resolution of what is remembered: arrivals are kept per slice of this long, so that the
/// window is bounded ([`WINDOW`] / [`SLICE`] slices) whatever the size of the blocks.
pub const SLICE: Duration = Duration::from_millis(100);
/// The hold is shortened only when it is longer than needed by more than this: a frame, so
/// that small changes in the input's timing do not move the clock back and forth.
pub const SLACK: Duration = Duration::from_millis(20);
/// How fast a hold longer than needed (after a burst that did not recur, or from a source
/// whose clock runs fast) is shortened: each frame leaves this fraction of a frame early, which
/// every listener's jitter buffer absorbs. No sound is dropped for it.
pub const CATCH_UP: f64 = 0.05;

fn micros(samples: u64) -> i64 {
    (samples * 1_000_000 / u64::from(SAMPLE_RATE)) as i64
}

/// What was remembered of the arrivals of one [`SLICE`].
#[derive(Debug, Clone, Copy)]
struct Slice {
    /// When the slice began (the time of its first arrival).
    at: i64,
    /// The latest "late" of its arrivals: the arrival time less the time the frame holding the
    /// arrival's first sample is due on a clock anchored at 0.
    late: i64,
    /// The latest arrival time less the position of the arrival's oldest sample.
    oldest: i64,
    /// The earliest "edge" of its arrivals: the arrival time less its newest sample's position;
    /// the earliest edge of the window is the input's own timeline (the live edge).
    edge: i64,
}

/// The pacing clock of a live input (see the module docs).
#[derive(Debug)]
pub struct Pace {
    /// Samples per frame.
    frame: u64,
    /// Sample `n` is due (the frame it ends may leave) at `anchor + n / 48 kHz`; `None` until
    /// the first arrival.
    anchor: Option<i64>,
    window: VecDeque<Slice>,
    /// When the first sound arrived.
    first: Option<i64>,
}

impl Pace {
    /// A clock for frames of `frame` samples.
    pub fn new(frame: usize) -> Pace {
        Pace {
            frame: frame.max(1) as u64,
            anchor: None,
            window: VecDeque::new(),
            first: None,
        }
    }

    /// What is kept before a frame's time beyond the latest arrival: [`MARGIN`], and
    /// [`EARLY`] during the first [`WINDOW`].
    fn margin(&self, now: i64) -> i64 {
        let early = self
            .first
            .is_none_or(|first| now - first < WINDOW.as_micros() as i64);
        (MARGIN + if early { EARLY } else { Duration::ZERO }).as_micros() as i64
    }

    fn forget(&mut self, now: i64) {
        let window = WINDOW.as_micros() as i64;
        while self.window.front().is_some_and(|s| now - s.at > window) {
            self.window.pop_front();
        }
    }

    /// The samples `start..end` arrived at `now`. A block that comes later than its frame's
    /// time moves the clock later (the frames wait for it): returns by how much (µs), if it did.
    pub fn arrival(&mut self, now: i64, start: u64, end: u64) -> Option<i64> {
        if end <= start {
            return None;
        }
        self.forget(now);
        self.first.get_or_insert(now);
        // The first frame this block completes or adds to is due when its last sample is.
        let frame_end = (start / self.frame + 1) * self.frame;
        let late = now - micros(frame_end);
        let oldest = now - micros(start);
        let edge = now - micros(end);
        match self.window.back_mut() {
            Some(s) if now - s.at < SLICE.as_micros() as i64 => {
                s.late = s.late.max(late);
                s.oldest = s.oldest.max(oldest);
                s.edge = s.edge.min(edge);
            }
            _ => self.window.push_back(Slice {
                at: now,
                late,
                oldest,
                edge,
            }),
        }
        // The early allowance is given at the start; a block later than its frame's time needs
        // only the margin.
        let needed = late + MARGIN.as_micros() as i64;
        match self.anchor {
            None => {
                self.anchor = Some(late + self.margin(now));
                None
            }
            Some(a) if a < needed => {
                self.anchor = Some(needed);
                Some(needed - a)
            }
            Some(_) => None,
        }
    }

    /// The oldest `samples` waiting were dropped (more than can be held): what follows takes
    /// their time, so the clock does not stop for them.
    pub fn dropped(&mut self, samples: u64) {
        let Some(anchor) = self.anchor.as_mut() else {
            return;
        };
        *anchor -= micros(samples);
        // What was remembered of them would move the clock back later.
        let most = *anchor - MARGIN.as_micros() as i64;
        for s in &mut self.window {
            s.late = s.late.min(most);
        }
    }

    /// A frame left at `now`: a hold longer than the window needs is shortened a little.
    pub fn sent(&mut self, now: i64) {
        self.forget(now);
        let (Some(anchor), Some(latest)) = (self.anchor, self.window.iter().map(|s| s.late).max())
        else {
            return;
        };
        let needed = latest + self.margin(now);
        let excess = anchor - needed;
        if excess > SLACK.as_micros() as i64 {
            let step = (micros(self.frame) as f64 * CATCH_UP) as i64;
            self.anchor = Some(anchor - step.clamp(1, excess));
        }
    }

    /// When sample `n` is due (µs), once anything arrived.
    pub fn due(&self, n: u64) -> Option<i64> {
        self.anchor.map(|a| a + micros(n))
    }

    /// Makes sample `n` due at `now` if nothing set the clock yet (an input that ended before
    /// any sound came).
    pub fn start_at(&mut self, now: i64, n: u64) {
        self.anchor.get_or_insert(now - micros(n));
    }

    /// The longest burst remembered (how far behind the input's own timeline the oldest sound
    /// of an arrival came), and how far behind that timeline frames are sent once the early
    /// allowance is given back, in µs.
    pub fn hold(&self) -> Option<(i64, i64)> {
        self.anchor?;
        let latest = self.window.iter().map(|s| s.late).max()? + MARGIN.as_micros() as i64;
        let oldest = self.window.iter().map(|s| s.oldest).max()?;
        let live = self.window.iter().map(|s| s.edge).min()?;
        Some(((oldest - live).max(0), (latest - live).max(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: u64 = 960;
    const MS: i64 = 1000;

    /// Sends every frame of an input made of `bursts` (arrival time in ms, samples) as the feed
    /// does, and returns when each frame left (ms).
    fn run(bursts: &[(i64, u64)]) -> (Pace, Vec<i64>) {
        let mut pace = Pace::new(FRAME as usize);
        let mut received = 0;
        let mut sent = 0;
        let mut times = Vec::new();
        let mut next = bursts.iter().peekable();
        loop {
            // The earlier of the next arrival and the next frame's time.
            let due = (received >= sent + FRAME)
                .then(|| pace.due(sent + FRAME))
                .flatten();
            match (next.peek().copied(), due) {
                (arrival, Some(d)) if arrival.is_none_or(|&(at, _)| at * MS > d) => {
                    times.push(d / MS);
                    sent += FRAME;
                    pace.sent(d);
                }
                (Some(&(at, n)), _) => {
                    pace.arrival(at * MS, received, received + n);
                    received += n;
                    next.next();
                }
                _ => return (pace, times),
            }
        }
    }

    fn gaps(times: &[i64]) -> Vec<i64> {
        times.windows(2).map(|w| w[1] - w[0]).collect()
    }

    #[test]
    fn a_steady_input_is_sent_as_it_comes() {
        // 20 ms blocks, each arriving as its last sample is captured.
        let bursts: Vec<(i64, u64)> = (1..=500).map(|k| (20 * k, 960)).collect();
        let (pace, times) = run(&bursts);
        assert_eq!(times.len(), 500);
        // The first frames leave the margin and the early allowance after they arrived...
        assert_eq!(times[0], 20 + (MARGIN + EARLY).as_millis() as i64);
        assert!(gaps(&times[..240]).iter().all(|g| *g == 20), "{times:?}");
        // ... which is given back after the first seconds, a little at a time.
        assert!(
            gaps(&times).iter().all(|g| (19..=20).contains(g)),
            "{times:?}"
        );
        let (burst, behind) = pace.hold().unwrap();
        assert_eq!(burst / MS, 20);
        assert!(behind <= (MARGIN + SLACK).as_micros() as i64, "{behind}");
    }

    #[test]
    fn pages_of_a_second_are_sent_evenly_a_second_behind() {
        // An Ogg stream as ffmpeg writes it: a page of 1 s each second, with ±30 ms jitter.
        let jitter = [0, 30, -20, 10, -30, 25, 0, -10, 20, -25];
        let bursts: Vec<(i64, u64)> = (1..=10)
            .map(|k| (1000 * k + jitter[k as usize - 1], 48_000))
            .collect();
        let (pace, times) = run(&bursts);
        assert_eq!(times.len(), 500);
        // Every frame leaves 20 ms after the one before it (19 while the early allowance is
        // given back): the pages' jitter is within it.
        let g = gaps(&times);
        assert!(g.iter().all(|g| (19..=20).contains(g)), "{g:?}");
        let (burst, behind) = pace.hold().unwrap();
        assert!((1000..1100).contains(&(burst / MS)), "burst {burst}");
        assert!((1000..1100).contains(&(behind / MS)), "behind {behind}");
    }

    #[test]
    fn a_hold_longer_than_needed_is_shortened_without_dropping() {
        // A one-off burst of 1 s (a stall and its backlog), then 20 ms blocks for 30 s.
        let mut bursts = vec![(1000, 48_000)];
        bursts.extend((1..=1500).map(|k| (1000 + 20 * k, 960)));
        let (pace, times) = run(&bursts);
        assert_eq!(times.len(), 1550, "nothing dropped");
        let g = gaps(&times);
        // Never a gap, never faster than 5 % early.
        assert!(g.iter().all(|g| (18..=20).contains(g)), "{g:?}");
        let (_, behind) = pace.hold().unwrap();
        assert!(behind < 50 * MS, "still {behind} µs behind");
    }

    #[test]
    fn a_dropped_backlog_does_not_stop_the_clock() {
        let mut pace = Pace::new(FRAME as usize);
        pace.arrival(0, 0, 3 * 48_000);
        let due = pace.due(FRAME).unwrap();
        // One second of the three dropped: the next frame is due when the first would have been.
        pace.dropped(48_000);
        assert_eq!(pace.due(48_000 + FRAME).unwrap(), due);
        // And the arrival remembered does not move the clock back.
        pace.arrival(20 * MS, 3 * 48_000, 3 * 48_000 + 960);
        assert_eq!(pace.due(48_000 + FRAME).unwrap(), due);
    }
}
