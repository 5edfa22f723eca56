//! Slows down the guessing of secrets: booth secrets, the floor's, the engineer's, the
//! delegates' access code.
//!
//! Each address has a few wrong tries free; after that every wrong try makes it wait, twice as
//! long each time (1 s, 2 s, 4 s... up to [`MAX_WAIT`]). While it waits, its hellos with a
//! secret are refused with `too_many_attempts` without the secret being compared. An address
//! that has never failed is always heard, so the right secret from another address works at
//! once. When one target (a booth, say) gets many wrong tries from many addresses, each
//! address loses its free tries for it: guessing from many addresses is slowed too. A right
//! secret clears the address's record. No time is read here: `now` is an input.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Wrong tries an address may make before it has to wait.
pub const FREE_TRIES: u32 = 3;
/// The first wait; each further wrong try doubles it.
pub const FIRST_WAIT: Duration = Duration::from_secs(1);
/// The longest wait.
pub const MAX_WAIT: Duration = Duration::from_secs(300);
/// An address's record is forgotten this long after its last wrong try.
pub const FORGET_AFTER: Duration = Duration::from_secs(30 * 60);
/// Wrong tries at one target within [`TARGET_WINDOW`] past which no address has free tries
/// for that target.
pub const TARGET_ALARM: u32 = 20;
pub const TARGET_WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered; past this the record with the oldest wrong try is forgotten.
pub const MAX_ADDRESSES: usize = 65_536;
/// Targets remembered (the event's booths and roles are far fewer).
const MAX_TARGETS: usize = 1024;

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    until: Instant,
    last: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Target {
    failures: u32,
    since: Instant,
}

/// The wrong tries seen, by address and by target.
#[derive(Default)]
pub struct Attempts {
    addresses: Mutex<HashMap<IpAddr, Record>>,
    targets: Mutex<HashMap<String, Target>>,
}

impl Attempts {
    pub fn new() -> Attempts {
        Attempts::default()
    }

    /// May `addr` try a secret now? `Err(wait)` while it has to wait.
    pub fn check(&self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        let addresses = self.addresses.lock().expect("attempts lock poisoned");
        match addresses.get(&addr) {
            Some(r) if now < r.until => Err(r.until - now),
            _ => Ok(()),
        }
    }

    /// `addr` gave a wrong secret for `target` (`booth en`, `floor`, `engineer`,
    /// `access code`). Returns how long it must wait now (zero while it has free tries).
    pub fn failed(&self, addr: IpAddr, target: &str, now: Instant) -> Duration {
        let alarm = {
            let mut targets = self.targets.lock().expect("attempts lock poisoned");
            if targets.len() >= MAX_TARGETS && !targets.contains_key(target) {
                targets.retain(|_, t| now.saturating_duration_since(t.since) < TARGET_WINDOW);
            }
            let t = targets.entry(target.to_string()).or_insert(Target {
                failures: 0,
                since: now,
            });
            if now.saturating_duration_since(t.since) >= TARGET_WINDOW {
                *t = Target {
                    failures: 0,
                    since: now,
                };
            }
            t.failures += 1;
            t.failures > TARGET_ALARM
        };
        let free = if alarm { 0 } else { FREE_TRIES };
        let mut addresses = self.addresses.lock().expect("attempts lock poisoned");
        if addresses.len() >= MAX_ADDRESSES && !addresses.contains_key(&addr) {
            addresses.retain(|_, r| now.saturating_duration_since(r.last) < FORGET_AFTER);
            if addresses.len() >= MAX_ADDRESSES {
                if let Some(oldest) = addresses
                    .iter()
                    .min_by_key(|(_, r)| r.last)
                    .map(|(a, _)| *a)
                {
                    addresses.remove(&oldest);
                }
            }
        }
        let r = addresses.entry(addr).or_insert(Record {
            failures: 0,
            until: now,
            last: now,
        });
        if now.saturating_duration_since(r.last) >= FORGET_AFTER {
            r.failures = 0;
        }
        r.failures += 1;
        r.last = now;
        let wait = if r.failures > free {
            let doublings = (r.failures - free - 1).min(16);
            (FIRST_WAIT * (1u32 << doublings)).min(MAX_WAIT)
        } else {
            Duration::ZERO
        };
        r.until = now + wait;
        wait
    }

    /// `addr` gave a right secret: its record is cleared.
    pub fn succeeded(&self, addr: IpAddr) {
        self.addresses
            .lock()
            .expect("attempts lock poisoned")
            .remove(&addr);
    }

    /// Addresses that must wait now.
    pub fn waiting(&self, now: Instant) -> usize {
        self.addresses
            .lock()
            .expect("attempts lock poisoned")
            .values()
            .filter(|r| now < r.until)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn waits_grow_after_the_free_tries_and_a_right_secret_clears() {
        let a = Attempts::new();
        let t0 = Instant::now();
        let x = ip("192.0.2.1");
        for _ in 0..FREE_TRIES {
            assert!(a.check(x, t0).is_ok());
            assert_eq!(a.failed(x, "booth en", t0), Duration::ZERO);
        }
        assert_eq!(a.failed(x, "booth en", t0), Duration::from_secs(1));
        assert_eq!(a.check(x, t0), Err(Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        assert!(a.check(x, t1).is_ok());
        assert_eq!(a.failed(x, "booth en", t1), Duration::from_secs(2));
        assert_eq!(a.failed(x, "booth en", t1), Duration::from_secs(4));
        for _ in 0..20 {
            a.failed(x, "booth en", t1);
        }
        assert_eq!(a.check(x, t1), Err(MAX_WAIT));
        // Another address is heard at once.
        assert!(a.check(ip("192.0.2.2"), t1).is_ok());
        a.succeeded(x);
        assert!(a.check(x, t1).is_ok());
    }

    #[test]
    fn many_addresses_at_one_target_lose_their_free_tries() {
        let a = Attempts::new();
        let t0 = Instant::now();
        for i in 0..TARGET_ALARM {
            a.failed(IpAddr::V4((0x0a00_0000 + i).into()), "booth en", t0);
        }
        let fresh = ip("192.0.2.77");
        assert!(a.check(fresh, t0).is_ok());
        assert_eq!(a.failed(fresh, "booth en", t0), Duration::from_secs(1));
        // Other targets keep their free tries; the window passes.
        assert_eq!(a.failed(ip("192.0.2.78"), "engineer", t0), Duration::ZERO);
        let later = t0 + TARGET_WINDOW;
        assert_eq!(
            a.failed(ip("192.0.2.79"), "booth en", later),
            Duration::ZERO
        );
    }

    #[test]
    fn records_are_forgotten_and_bounded() {
        let a = Attempts::new();
        let t0 = Instant::now();
        let x = ip("192.0.2.1");
        for _ in 0..10 {
            a.failed(x, "floor", t0);
        }
        let later = t0 + FORGET_AFTER;
        assert!(a.check(x, later).is_ok());
        assert_eq!(a.failed(x, "floor", later), Duration::ZERO);
        for i in 0..(MAX_ADDRESSES as u32 + 5) {
            a.failed(IpAddr::V4(i.into()), "floor", t0);
        }
        assert!(a.addresses.lock().unwrap().len() <= MAX_ADDRESSES);
    }
}
