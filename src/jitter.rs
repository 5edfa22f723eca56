//! An adaptive jitter buffer for a listener playing to a real output. No I/O: frames go in
//! with their arrival time, and the player asks what to play next with the current time.
//!
//! Frames are placed by the relay's per-channel sequence number. The earliest arrival seen
//! recently (a frame's arrival time less its place in the sequence) is the fastest path through
//! the network; frame `k` is due `target` after its fastest possible arrival. The target starts
//! at one frame (with the frame being played, about two frames of sound held), follows the
//! 95th percentile of how much later than the fastest path recent frames came, and shrinks
//! back slowly once the network is calm. The player keeps to the timeline in whole samples:
//! when it is ahead (the target grew, or a frame is late) it fills a little sound in (the
//! caller conceals with Opus PLC, or plays silence), and when it is behind it trims the start
//! of a frame, during a pause where that cannot be heard. After a stall, frames whose time has
//! long passed are dropped and the timeline starts again at the newest: the delay never builds
//! up into a backlog.
//!
//! Times are microseconds on any monotonic clock; lengths are samples at 48 kHz.

use std::collections::VecDeque;

/// Samples at 48 kHz in 2.5 ms, the step in which Opus conceals and the player fills or trims.
pub const STEP: usize = 120;
const STEP_US: i64 = 2_500;

/// How the buffer adapts.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// The smallest target delay: scheduling noise on a quiet network still needs a margin.
    pub min_target_us: u64,
    /// The largest target: beyond this jitter is treated as a stall (the timeline restarts
    /// at live) rather than absorbed, which would put the sound out of lip-sync for good.
    pub max_target_us: u64,
    /// Added to the measured jitter.
    pub margin_us: u64,
    /// How fast the target comes down when the network is calm, in µs per second.
    pub shrink_per_s_us: u64,
    /// A frame this late (past its due time) is dropped and the timeline restarts at the
    /// newest frame.
    pub catch_up_us: u64,
    /// How long arrival times are remembered for the jitter estimate.
    pub window_us: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            min_target_us: 5_000,
            // The lip-sync budget: delay beyond ~100 ms becomes noticeable.
            max_target_us: 100_000,
            margin_us: 2_500,
            shrink_per_s_us: 5_000,
            catch_up_us: 80_000,
            window_us: 3_000_000,
        }
    }
}

/// Frames held ahead of the player. 256 frames is over half a second even of the shortest
/// (2.5 ms) frames, more than the largest target; a frame further ahead means the player lost
/// its place and restarts at live.
const MAX_SLOTS: usize = 256;
/// Arrival times remembered for the jitter estimate (the window in time is usually shorter:
/// 3 s of 20 ms frames is 150).
const MAX_ARRIVALS: usize = 1_200;
/// Trims of a frame with sound in it (a pause comes along soon enough in speech, but music
/// or continuous talk still has to come back to the target): at most one a second.
const LOUD_TRIM_EVERY_US: i64 = 1_000_000;

/// What the player should do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Next<T> {
    /// Play this frame, dropping its first `trim` samples (the delay shrinks by that much).
    Play { frame: T, trim: usize },
    /// The frame due now was lost (a gap in the sequence): conceal `samples`, from `fec` (the
    /// following frame's in-band FEC data) when it is there.
    Lost { samples: usize, fec: Option<T> },
    /// Nothing to play yet: fill `samples` (a multiple of [`STEP`]) and ask again.
    /// `underrun` is true when the frame due now has not arrived.
    Fill { samples: usize, underrun: bool },
}

/// What the buffer measured.
#[derive(Debug, Default, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Stats {
    /// The delay of the frame played last over the fastest path, in ms.
    pub delay_ms: f64,
    /// The delay aimed at, in ms.
    pub target_ms: f64,
    /// Times the frame due had not arrived.
    pub underruns: u64,
    /// Lost frames the player concealed.
    pub concealed: u64,
    /// Frames that came after their time and were dropped.
    pub late: u64,
    /// Frames dropped to get back to live after a stall.
    pub dropped: u64,
    /// Times the timeline restarted at live.
    pub resets: u64,
}

struct Slot<T> {
    frame: T,
    quiet: bool,
}

/// The adaptive jitter buffer; `T` is the frame (e.g. the Opus packet as `Bytes`).
pub struct JitterBuffer<T> {
    config: Config,
    /// Channel and frame length of the stream being played; another one restarts it.
    stream: Option<(u16, usize)>,
    /// Sequence number of `slots[0]`, the next frame to play.
    next: u32,
    slots: VecDeque<Option<Slot<T>>>,
    /// Sequence number at which the timeline is anchored.
    base: u32,
    /// Recent (arrival time, arrival time less the frame's place on the timeline).
    arrivals: VecDeque<(u64, i64)>,
    /// Frame due times are measured from the earliest of these offsets.
    fastest: i64,
    target_us: u64,
    /// The target when a frame was last played on time: a stall's stragglers must not leave
    /// the target raised after it.
    played_target_us: u64,
    /// Target from the last estimate, and when it was made (to shrink at a bounded rate).
    last_estimate_us: u64,
    /// The player is inside an underrun (counted once, not once per fill).
    in_underrun: bool,
    last_loud_trim_us: i64,
    scratch: Vec<i64>,
    stats: Stats,
}

impl<T: Clone> JitterBuffer<T> {
    pub fn new(config: Config) -> JitterBuffer<T> {
        JitterBuffer {
            config,
            stream: None,
            next: 0,
            slots: VecDeque::with_capacity(MAX_SLOTS),
            base: 0,
            arrivals: VecDeque::with_capacity(MAX_ARRIVALS),
            fastest: 0,
            target_us: 0,
            played_target_us: 0,
            last_estimate_us: 0,
            in_underrun: false,
            last_loud_trim_us: i64::MIN / 2,
            scratch: Vec::with_capacity(MAX_ARRIVALS),
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> Stats {
        Stats {
            target_ms: self.target_us as f64 / 1000.0,
            ..self.stats
        }
    }

    /// Samples in a frame of the stream being played (0 before the first frame).
    pub fn frame_samples(&self) -> usize {
        self.stream.map_or(0, |(_, n)| n)
    }

    fn frame_us(&self) -> i64 {
        self.frame_samples() as i64 * 1000 / 48
    }

    /// A frame arrived at `now_us`: `channel` and `sequence` from the relay's header, its
    /// length in samples, and whether it is quiet (a pause, where trimming is not heard).
    pub fn push(
        &mut self,
        now_us: u64,
        channel: u16,
        sequence: u32,
        samples: usize,
        quiet: bool,
        frame: T,
    ) {
        if self.stream != Some((channel, samples)) {
            // A new stream (first frame, another channel, another frame length).
            self.restart(now_us, channel, samples, sequence);
        }
        let ahead = sequence.wrapping_sub(self.next) as i32;
        if ahead < 0 {
            self.stats.late += 1;
            return;
        }
        if ahead as usize >= MAX_SLOTS {
            self.reset_at(now_us, sequence);
        }
        let offset = self.offset(now_us, sequence);
        // Arrivals later than any target could absorb are a stall, not jitter: they must not
        // raise the target (the timeline restarts at live instead).
        if offset - self.fastest <= self.config.max_target_us as i64 || self.arrivals.is_empty() {
            self.remember(now_us, offset);
        }
        let i = sequence.wrapping_sub(self.next) as usize;
        while self.slots.len() <= i {
            self.slots.push_back(None);
        }
        self.slots[i] = Some(Slot { frame, quiet });
    }

    /// What to play at `now_us`, the time the returned sound starts playing.
    pub fn next(&mut self, now_us: u64) -> Next<T> {
        if self.stream.is_none() {
            return Next::Fill {
                samples: 4 * STEP,
                underrun: false,
            };
        }
        self.update_target(now_us);
        let frame_samples = self.frame_samples();
        loop {
            let now = now_us as i64;
            let due = self.due(self.next);
            let lateness = now - due;
            if lateness < -STEP_US {
                // Early: the target grew, or the stream has just begun.
                let steps = ((-lateness) / STEP_US) as usize;
                return Next::Fill {
                    samples: (steps * STEP).min(frame_samples.max(STEP)),
                    underrun: false,
                };
            }
            let waiting = self.slots.iter().any(Option::is_some);
            if waiting && lateness > self.config.catch_up_us as i64 {
                // Long past its time, whether the frame is here or was lost (the relay skipped
                // the middle of a stall): not played late, nor concealed frame by frame, but
                // back to live.
                self.catch_up(now_us);
                continue;
            }
            match self.slots.front() {
                Some(Some(_)) => {
                    let Some(Some(slot)) = self.slots.pop_front() else {
                        unreachable!("front checked above");
                    };
                    self.next = self.next.wrapping_add(1);
                    self.in_underrun = false;
                    self.played_target_us = self.target_us;
                    let trim = self.trim(now, lateness, slot.quiet, frame_samples);
                    self.stats.delay_ms = (lateness - trim as i64 * 1000 / 48) as f64 / 1000.0
                        + self.target_us as f64 / 1000.0;
                    return Next::Play {
                        frame: slot.frame,
                        trim,
                    };
                }
                Some(None) if waiting => {
                    // A gap in the sequence: lost on the way (the relay skipped it).
                    self.slots.pop_front();
                    self.next = self.next.wrapping_add(1);
                    self.stats.concealed += 1;
                    let fec = match self.slots.front() {
                        Some(Some(s)) => Some(s.frame.clone()),
                        _ => None,
                    };
                    return Next::Lost {
                        samples: frame_samples,
                        fec,
                    };
                }
                _ => {
                    // The frame due has not arrived: fill a little and ask again.
                    if !self.in_underrun {
                        self.in_underrun = true;
                        self.stats.underruns += 1;
                    }
                    return Next::Fill {
                        samples: 2 * STEP,
                        underrun: true,
                    };
                }
            }
        }
    }

    /// How much of the start of a frame to drop to come back towards the target.
    fn trim(&mut self, now: i64, lateness: i64, quiet: bool, frame_samples: usize) -> usize {
        if lateness < STEP_US {
            return 0;
        }
        if !quiet {
            if lateness < self.frame_us() || now - self.last_loud_trim_us < LOUD_TRIM_EVERY_US {
                return 0;
            }
            self.last_loud_trim_us = now;
        }
        // Keep at least one step of the frame so the decoder's state follows the sound.
        let steps = (lateness / STEP_US) as usize;
        (steps * STEP).min(frame_samples.saturating_sub(STEP))
    }

    /// Due time of frame `sequence`.
    fn due(&self, sequence: u32) -> i64 {
        self.fastest + self.place_us(sequence) + self.target_us as i64
    }

    fn place_us(&self, sequence: u32) -> i64 {
        sequence.wrapping_sub(self.base) as i32 as i64 * self.frame_us()
    }

    fn offset(&self, now_us: u64, sequence: u32) -> i64 {
        now_us as i64 - self.place_us(sequence)
    }

    fn remember(&mut self, now_us: u64, offset: i64) {
        if self.arrivals.len() == MAX_ARRIVALS {
            self.arrivals.pop_front();
        }
        self.arrivals.push_back((now_us, offset));
        let horizon = now_us.saturating_sub(self.config.window_us);
        while self.arrivals.front().is_some_and(|&(t, _)| t < horizon) {
            self.arrivals.pop_front();
        }
        self.fastest = self
            .arrivals
            .iter()
            .map(|&(_, o)| o)
            .min()
            .unwrap_or(offset);
    }

    /// The target follows the 95th percentile of recent lateness over the fastest path; it
    /// rises at once and comes down at a bounded rate.
    fn update_target(&mut self, now_us: u64) {
        self.scratch.clear();
        self.scratch
            .extend(self.arrivals.iter().map(|&(_, o)| o - self.fastest));
        if self.scratch.is_empty() {
            return;
        }
        let k = (self.scratch.len() * 95 / 100).min(self.scratch.len() - 1);
        let (_, p95, _) = self.scratch.select_nth_unstable(k);
        let wanted = (*p95 as u64 + self.config.margin_us)
            .clamp(self.config.min_target_us, self.config.max_target_us);
        let elapsed = now_us.saturating_sub(self.last_estimate_us);
        self.last_estimate_us = now_us;
        let floor = self
            .target_us
            .saturating_sub(elapsed * self.config.shrink_per_s_us / 1_000_000);
        self.target_us = wanted.max(floor).min(self.config.max_target_us);
    }

    /// Drops every frame but the newest and restarts the timeline there: after a stall the
    /// listener hears live sound, not a backlog.
    fn catch_up(&mut self, now_us: u64) {
        let newest = self.slots.iter().rposition(Option::is_some).unwrap_or(0);
        let dropped = self.slots.iter().take(newest).flatten().count() as u64;
        self.stats.dropped += dropped;
        self.slots.drain(..newest);
        let sequence = self.next.wrapping_add(newest as u32);
        self.next = sequence;
        self.base = sequence;
        self.arrivals.clear();
        self.target_us = self.played_target_us.max(self.config.min_target_us);
        self.stats.resets += 1;
        // The newest frame counts as arrived now: its due time is one target from here.
        self.fastest = now_us as i64;
        self.arrivals.push_back((now_us, self.fastest));
    }

    fn restart(&mut self, now_us: u64, channel: u16, samples: usize, sequence: u32) {
        let first = self.stream.is_none();
        self.stream = Some((channel, samples));
        self.reset_at(now_us, sequence);
        if first {
            // About two frames held: the one playing and the next.
            self.target_us = (self.frame_us() as u64)
                .clamp(self.config.min_target_us, self.config.max_target_us);
            self.last_estimate_us = now_us;
            self.stats.resets = 0;
        }
    }

    fn reset_at(&mut self, now_us: u64, sequence: u32) {
        self.stats.dropped += self.slots.iter().flatten().count() as u64;
        self.slots.clear();
        self.next = sequence;
        self.base = sequence;
        self.arrivals.clear();
        self.fastest = now_us as i64;
        self.in_underrun = false;
        self.stats.resets += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    const FRAME: usize = 960;
    const FRAME_US: u64 = 20_000;

    /// A simulated listener: frames sent every 20 ms, arriving after `delay(k)`, played by a
    /// device that asks for sound whenever the previous sound has played out.
    struct Sim {
        jb: JitterBuffer<u32>,
        /// (arrival time, sequence), in order of arrival.
        arrivals: Vec<(u64, u32)>,
        played: Vec<(u64, u32)>,
        delays: Vec<(u64, f64)>,
    }

    impl Sim {
        fn new(frames: u32, delay: impl Fn(u32) -> u64) -> Sim {
            let mut arrivals: Vec<(u64, u32)> = (0..frames)
                .map(|k| (k as u64 * FRAME_US + delay(k), k))
                .collect();
            // One connection: frames arrive in order, a late one holds up those behind it.
            let mut latest = 0;
            for a in &mut arrivals {
                latest = a.0.max(latest);
                a.0 = latest;
            }
            Sim {
                jb: JitterBuffer::new(Config::default()),
                arrivals,
                played: Vec::new(),
                delays: Vec::new(),
            }
        }

        /// Runs until `end_us`; the device clock is the simulation clock.
        fn run(&mut self, end_us: u64) {
            let mut now = 0u64;
            let mut i = 0;
            while now < end_us {
                while i < self.arrivals.len() && self.arrivals[i].0 <= now {
                    let (t, k) = self.arrivals[i];
                    // A pause in the speech every half second.
                    self.jb.push(t, 7, k, FRAME, k % 25 == 0, k);
                    i += 1;
                }
                let samples = match self.jb.next(now) {
                    Next::Play { frame, trim } => {
                        self.played.push((now, frame));
                        self.delays.push((now, self.jb.stats().delay_ms));
                        FRAME - trim
                    }
                    Next::Lost { samples, .. } => samples,
                    Next::Fill { samples, .. } => samples,
                };
                now += samples as u64 * 1000 / 48;
            }
        }

        fn delay_at(&self, t: u64) -> f64 {
            self.delays
                .iter()
                .rev()
                .find(|(at, _)| *at <= t)
                .map(|d| d.1)
                .unwrap()
        }

        /// The sequence played at `t` and how far behind live it is (ms since it was sent).
        fn behind_live_at(&self, t: u64) -> f64 {
            let (at, k) = self
                .played
                .iter()
                .rev()
                .find(|(at, _)| *at <= t)
                .copied()
                .unwrap();
            (at as f64 - k as f64 * FRAME_US as f64) / 1000.0
        }
    }

    fn seeded_jitter(seed: u64, max_us: u64) -> impl Fn(u32) -> u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let table: Vec<u64> = (0..10_000).map(|_| rng.random_range(0..=max_us)).collect();
        move |k| 1_000 + table[k as usize % table.len()]
    }

    #[test]
    fn settles_small_on_a_calm_network() {
        let mut sim = Sim::new(500, |_| 1_000);
        sim.run(10_000_000);
        let stats = sim.jb.stats();
        assert_eq!(stats.underruns, 0, "{stats:?}");
        // Starts at about one frame of waiting, then comes down to the minimum.
        assert!(sim.delay_at(100_000) >= 15.0, "{}", sim.delay_at(100_000));
        assert!(
            sim.delay_at(9_000_000) <= 7.5,
            "{}",
            sim.delay_at(9_000_000)
        );
        assert_eq!(
            (stats.dropped, stats.late, stats.resets),
            (0, 0, 0),
            "{stats:?}"
        );
    }

    #[test]
    fn grows_under_jitter_and_shrinks_back_when_calm() {
        let jitter = seeded_jitter(42, 40_000);
        // 6 s of up to 40 ms of jitter, then 14 s calm.
        let mut sim = Sim::new(1000, move |k| if k < 300 { jitter(k) } else { 1_000 });
        sim.run(6_000_000);
        let during = sim.jb.stats();
        assert!(during.target_ms >= 30.0, "{during:?}");
        let underruns_at_6s = during.underruns;
        // Shrinking starts once the jitter has left the 3 s window, and is bounded in rate.
        sim.run(11_000_000);
        assert!(sim.jb.stats().target_ms >= 10.0, "{:?}", sim.jb.stats());
        sim.run(20_000_000);
        let after = sim.jb.stats();
        assert!(after.target_ms <= 7.5, "{after:?}");
        assert!(
            sim.delay_at(19_900_000) <= 10.0,
            "{}",
            sim.delay_at(19_900_000)
        );
        // Once grown, the buffer stops running dry: most underruns are in the first seconds.
        let mut sim2 = Sim::new(300, seeded_jitter(42, 40_000));
        sim2.run(3_000_000);
        let early = sim2.jb.stats().underruns;
        assert!(
            underruns_at_6s - early <= early,
            "{early} underruns in the first 3 s, {underruns_at_6s} by 6 s"
        );
        assert_eq!(after.underruns, underruns_at_6s, "no underruns when calm");
    }

    #[test]
    fn catches_up_to_live_after_a_two_second_stall() {
        // Frames 100..200 are held up for 2 s and then arrive at once.
        let mut sim = Sim::new(600, |k| {
            if (100..200).contains(&k) {
                1_000 + (200 - k as u64) * FRAME_US
            } else {
                1_000
            }
        });
        sim.run(12_000_000);
        let stats = sim.jb.stats();
        assert!(stats.dropped >= 90, "the backlog is dropped: {stats:?}");
        // Within 200 ms of the stall's end the player is back within 50 ms of live, and it
        // stays there.
        let behind = sim.behind_live_at(4_200_000);
        assert!(
            behind <= 50.0,
            "{behind} ms behind live 200 ms after the stall"
        );
        let behind = sim.behind_live_at(11_900_000);
        assert!(behind <= 25.0, "{behind} ms behind live at the end");
    }

    #[test]
    fn a_gap_long_past_its_time_is_skipped_not_concealed() {
        // Frame 0 on time; frames 1..=5 held up by a stall and arriving 2 s late; the relay
        // skipped 6..80 for the stalled listener; frame 80 arrives live right after.
        let mut jb = JitterBuffer::new(Config::default());
        let play = |jb: &mut JitterBuffer<u32>, now: &mut u64| loop {
            match jb.next(*now) {
                Next::Fill { samples, .. } => *now += samples as u64 * 1000 / 48,
                n => {
                    *now += FRAME_US;
                    return n;
                }
            }
        };
        let mut now = 0;
        jb.push(0, 1, 0, FRAME, false, 0u32);
        assert!(matches!(
            play(&mut jb, &mut now),
            Next::Play { frame: 0, .. }
        ));
        now = 2_000_000;
        for k in 1..=5 {
            jb.push(now, 1, k, FRAME, false, k);
        }
        assert!(matches!(
            play(&mut jb, &mut now),
            Next::Play { frame: 5, .. }
        ));
        jb.push(now, 1, 80, FRAME, false, 80u32);
        // Not 74 frames of concealment played 1.5 s late: straight to live.
        assert!(
            matches!(play(&mut jb, &mut now), Next::Play { frame: 80, .. }),
            "{:?}",
            jb.stats()
        );
        assert_eq!(jb.stats().concealed, 0, "{:?}", jb.stats());
    }

    #[test]
    fn a_gap_is_concealed_with_the_next_frame_for_fec() {
        let mut jb = JitterBuffer::new(Config::default());
        jb.push(0, 1, 10, FRAME, false, 10u32);
        jb.push(40_000, 1, 12, FRAME, false, 12u32);
        let mut now = 0;
        let mut got = Vec::new();
        while got.len() < 3 {
            match jb.next(now) {
                Next::Fill { samples, .. } => now += samples as u64 * 1000 / 48,
                n => {
                    got.push(n);
                    now += 20_000;
                }
            }
        }
        assert!(matches!(got[0], Next::Play { frame: 10, .. }));
        assert_eq!(
            got[1],
            Next::Lost {
                samples: FRAME,
                fec: Some(12)
            }
        );
        assert!(matches!(got[2], Next::Play { frame: 12, .. }));
        assert_eq!(jb.stats().concealed, 1);
    }

    #[test]
    fn late_and_far_ahead_frames() {
        let mut jb = JitterBuffer::new(Config::default());
        jb.push(0, 1, 10, FRAME, false, 10u32);
        jb.push(0, 1, 11, FRAME, false, 11u32);
        let mut now = 0;
        while !matches!(jb.next(now), Next::Play { .. }) {
            now += 2_500;
        }
        // Already played: late.
        jb.push(now, 1, 10, FRAME, false, 10u32);
        assert_eq!(jb.stats().late, 1);
        // Far beyond the slots: the player starts again there.
        jb.push(now, 1, 10_000, FRAME, false, 10_000u32);
        assert_eq!(jb.slots.len(), 1);
        assert!(jb.slots.len() <= MAX_SLOTS);
    }
}
