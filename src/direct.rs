//! Direct delivery: a channel's frames written to its live listeners' sockets by one writer
//! per [`SHARD_LISTENERS`] listeners, without waking each listener's task.
//!
//! A delegate's connection task (`server.rs`) hears its channel through the channel's
//! broadcast queue. While it is caught up (nothing queued for it, its last write complete) and
//! plain TCP (not TLS), it *joins* a shard of its channel and goes to sleep: from then on the
//! shard's writer sends each frame, framed once as a WebSocket binary message (server frames
//! are not masked, RFC 6455 §5.1, so the bytes are the same for every listener), to every
//! member's socket with one non-blocking `send()` each. A member whose socket cannot take the
//! whole message (its send buffer is full: it is slow, or gone) is *handed back* to its task,
//! with what was left unsent of the message; the task writes that first and goes on from the
//! channel's queue as before (skipping to live if it is far behind, closing it if nothing can
//! be written for the write timeout), and joins again once caught up. The task also takes its
//! socket back (leaves the shard) before writing anything of its own: a ping, the channel
//! list, an answer.
//!
//! Each member carries the sequence number of the next frame it needs, so a frame is never
//! written twice nor out of order, whatever the writer's and the task's timing: the writer
//! writes a member the frames from that number on, and hands it back if it does not have that
//! frame (the member would miss it); the task, taking its socket back, drops from its queue
//! the frames before that number.
//!
//! Memory safety of the descriptor: a member's socket is written only under its shard's lock
//! and only while it is a member; its task leaves (under the same lock) before its socket can
//! be closed (the listener state, and with it [`Listener`]'s `Drop`, goes before the socket).

use bytes::{BufMut, Bytes, BytesMut};
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Listeners one writer sends to. A writer holds its shard's lock while it sends (about 5 µs
/// a member on loopback, so 1.3 ms for a full shard); a task joining or leaving waits that
/// long at most. Several shards of a channel are written by several workers at once.
pub const SHARD_LISTENERS: usize = 256;
/// Frames a shard keeps for its writer. A writer further behind than
/// [`crate::server::MAX_BACKLOG`] moves its members on to live, keeping the newest
/// [`crate::server::LIVE_KEEP`], as a listener's task does; this bounds the queue should the
/// writer not run at all.
pub const SHARD_QUEUE: usize = 64;

const NOT_A_MEMBER: usize = usize::MAX;

/// A WebSocket message's header for a binary payload of `len` bytes, from the server (no mask):
/// RFC 6455 §5.2.
fn put_ws_header(out: &mut BytesMut, len: usize) {
    out.put_u8(0x82);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

/// A frame's sequence number (bytes 4..8 of the relay's frame header, `protocol.rs`).
pub fn sequence(frame: &[u8]) -> u32 {
    frame
        .get(4..8)
        .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
        .unwrap_or(0)
}

/// `a` comes before `b` in wrapping sequence order.
pub fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// One channel's shards. Lock order: a shard's members, then the channel's sequence lock
/// (`relay.rs`); the sequence lock, then a shard's queue. Nothing takes a shard's members while
/// holding the sequence lock, and the writer never holds both of its shard's locks.
#[derive(Default)]
pub struct Channel {
    shards: Mutex<Vec<Arc<Shard>>>,
    /// Frames this channel's writers wrote and skipped (each once per listener).
    pub delivered: Arc<AtomicU64>,
    pub skipped: Arc<AtomicU64>,
}

/// One writer's listeners and the frames waiting for it.
pub struct Shard {
    members: Mutex<Vec<Member>>,
    queue: Mutex<VecDeque<Bytes>>,
    ready: Notify,
    closed: AtomicBool,
    /// Members now (read without the lock to choose a shard to join).
    count: AtomicUsize,
}

struct Member {
    slot: Arc<Slot>,
    /// The sequence number of the next frame this member needs.
    next: u32,
    /// Frames skipped for it by a writer that fell behind.
    skipped: u64,
}

/// A listener's place in a shard, shared by its task and the writer.
pub struct Slot {
    fd: RawFd,
    /// Its index in its shard's members, or `NOT_A_MEMBER`; changed under the members lock.
    index: AtomicUsize,
    /// Set by the writer when it hands the listener back.
    back: Mutex<Option<Back>>,
    wake: Notify,
}

/// Where a listener handed back by its writer stands.
struct Back {
    next: u32,
    skipped: u64,
    /// The end of a message the writer could not write whole: it goes first.
    rest: Option<Bytes>,
}

/// What a listener that left its shard must do before anything else.
#[derive(Debug, Default, PartialEq)]
pub struct Left {
    /// The next frame it needs: frames before it on its queue were written to it.
    pub next: u32,
    /// Frames written to it while it was a member.
    pub delivered: u64,
    /// Frames skipped for it while it was a member (its writer fell behind).
    pub skipped: u64,
    /// Bytes of a message the writer began: write them before anything else.
    pub rest: Option<Bytes>,
}

impl Channel {
    /// Gives a frame just put on the channel's broadcast queue to every shard's writer. Called
    /// with the channel's sequence lock held, so that a joining listener sees every frame
    /// either on its own queue or through its writer.
    pub fn publish(&self, frame: &Bytes) {
        let shards = self.shards.lock().expect("direct shards lock poisoned");
        for shard in shards.iter() {
            if shard.count.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let mut q = shard.queue.lock().expect("direct queue lock poisoned");
            if q.len() == SHARD_QUEUE {
                q.pop_front();
            }
            q.push_back(frame.clone());
            drop(q);
            shard.ready.notify_one();
        }
    }

    /// Makes `slot` a member of a shard with room (starting a shard and its writer when all are
    /// full), if `caught_up` says so, under the shard's lock. `caught_up` is given the chance
    /// to look at the listener's queue with the channel's sequence lock held, and returns the
    /// sequence number of the next frame it needs, or `None` when it has frames waiting.
    /// Must be called within a tokio runtime.
    pub fn join(
        &self,
        slot: &Arc<Slot>,
        caught_up: impl FnOnce() -> Option<u32>,
    ) -> Option<Arc<Shard>> {
        let shard = {
            let mut shards = self.shards.lock().expect("direct shards lock poisoned");
            match shards
                .iter()
                .find(|s| s.count.load(Ordering::Relaxed) < SHARD_LISTENERS)
            {
                Some(s) => s.clone(),
                None => {
                    let s = Arc::new(Shard {
                        members: Mutex::new(Vec::new()),
                        queue: Mutex::new(VecDeque::new()),
                        ready: Notify::new(),
                        closed: AtomicBool::new(false),
                        count: AtomicUsize::new(0),
                    });
                    shards.push(s.clone());
                    tokio::spawn(write(
                        s.clone(),
                        self.delivered.clone(),
                        self.skipped.clone(),
                    ));
                    s
                }
            }
        };
        let mut members = shard.members.lock().expect("direct members lock poisoned");
        let next = caught_up()?;
        // A hand-back not yet taken (its wake-up still pending) is stale from here on.
        slot.back.lock().expect("direct back lock poisoned").take();
        slot.index.store(members.len(), Ordering::Relaxed);
        members.push(Member {
            slot: slot.clone(),
            next,
            skipped: 0,
        });
        shard.count.store(members.len(), Ordering::Relaxed);
        drop(members);
        Some(shard)
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        for shard in self.shards.get_mut().expect("direct shards lock poisoned") {
            shard.closed.store(true, Ordering::Relaxed);
            shard.ready.notify_one();
        }
    }
}

impl Shard {
    /// Removes member `i`, keeping the others' indices right.
    fn remove(members: &mut Vec<Member>, i: usize) -> Member {
        let m = members.swap_remove(i);
        if let Some(moved) = members.get(i) {
            moved.slot.index.store(i, Ordering::Relaxed);
        }
        m.slot.index.store(NOT_A_MEMBER, Ordering::Relaxed);
        m
    }
}

/// A listener task's side of direct delivery: its slot, and the shard it is in.
pub struct Listener {
    slot: Arc<Slot>,
    joined: Option<(Arc<Shard>, u32)>,
}

impl Listener {
    /// For a listener whose socket is the plain TCP socket `fd`, which must stay open for as
    /// long as this value lives.
    pub fn new(fd: RawFd) -> Listener {
        Listener {
            slot: Arc::new(Slot {
                fd,
                index: AtomicUsize::new(NOT_A_MEMBER),
                back: Mutex::new(None),
                wake: Notify::new(),
            }),
            joined: None,
        }
    }

    pub fn is_joined(&self) -> bool {
        self.joined.is_some()
    }

    /// Joins a shard of `channel` (see [`Channel::join`]); true if it did.
    pub fn join(&mut self, channel: &Channel, caught_up: impl FnOnce() -> Option<u32>) -> bool {
        if self.joined.is_some() {
            return true;
        }
        let mut at = None;
        let shard = channel.join(&self.slot, || {
            let next = caught_up()?;
            at = Some(next);
            Some(next)
        });
        if let (Some(shard), Some(at)) = (shard, at) {
            self.joined = Some((shard, at));
        }
        self.joined.is_some()
    }

    /// Waits until the writer hands this listener back (its socket is slow, or its writer
    /// lacks the frame it needs). Cancel-safe; pending forever when not a member.
    pub async fn handed_back(&self) {
        if self.joined.is_none() {
            return std::future::pending().await;
        }
        loop {
            let woken = self.slot.wake.notified();
            if self.slot.index.load(Ordering::Relaxed) == NOT_A_MEMBER {
                return;
            }
            woken.await;
        }
    }

    /// Leaves the shard (if in one): `None` when it was not in one.
    pub fn leave(&mut self) -> Option<Left> {
        let (shard, at) = self.joined.take()?;
        let mut members = shard.members.lock().expect("direct members lock poisoned");
        let i = self.slot.index.load(Ordering::Relaxed);
        let (next, skipped, rest) = if i != NOT_A_MEMBER {
            let m = Shard::remove(&mut members, i);
            shard.count.store(members.len(), Ordering::Relaxed);
            (m.next, m.skipped, None)
        } else {
            drop(members);
            let back = self
                .slot
                .back
                .lock()
                .expect("direct back lock poisoned")
                .take();
            match back {
                Some(b) => (b.next, b.skipped, b.rest),
                // Not reachable: a member handed back always has its `Back`.
                None => (at, 0, None),
            }
        };
        let moved = next.wrapping_sub(at) as u64;
        Some(Left {
            next,
            delivered: moved.saturating_sub(skipped),
            skipped,
            rest,
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Before its socket closes: the writer must never send to a closed descriptor.
        self.leave();
    }
}

/// The frames of one round of a writer: framed once, back to back, and where each begins.
struct Round {
    bytes: Bytes,
    /// (sequence number, offset in `bytes`) of each frame.
    frames: Vec<(u32, usize)>,
    /// Members needing a frame from this sequence number up to the first one here were moved
    /// on to live (the writer fell behind): they skip to the first frame.
    dropped_from: Option<u32>,
}

/// A shard's writer: on each frame given, writes what each member needs with one `send()`.
async fn write(shard: Arc<Shard>, delivered: Arc<AtomicU64>, skipped: Arc<AtomicU64>) {
    let mut taken: VecDeque<Bytes> = VecDeque::new();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    loop {
        shard.ready.notified().await;
        if shard.closed.load(Ordering::Relaxed) {
            return;
        }
        std::mem::swap(
            &mut taken,
            &mut shard.queue.lock().expect("direct queue lock poisoned"),
        );
        if taken.is_empty() {
            continue;
        }
        let mut dropped_from = None;
        if taken.len() > crate::server::MAX_BACKLOG {
            dropped_from = taken.front().map(|f| sequence(f));
            let drop = taken.len() - crate::server::LIVE_KEEP;
            taken.drain(..drop);
        }
        frames.clear();
        buf.reserve(taken.iter().map(|f| f.len() + 10).sum());
        for f in taken.drain(..) {
            frames.push((sequence(&f), buf.len()));
            put_ws_header(&mut buf, f.len());
            buf.put_slice(&f);
        }
        let round = Round {
            bytes: buf.split().freeze(),
            frames: std::mem::take(&mut frames),
            dropped_from,
        };
        let (d, s) = send_round(&shard, &round);
        frames = round.frames;
        delivered.fetch_add(d, Ordering::Relaxed);
        skipped.fetch_add(s, Ordering::Relaxed);
    }
}

/// Writes one round to every member; returns the frames delivered and skipped.
fn send_round(shard: &Shard, round: &Round) -> (u64, u64) {
    let (mut delivered, mut skipped) = (0u64, 0u64);
    let Some(&(first, _)) = round.frames.first() else {
        return (0, 0);
    };
    let last = round.frames.last().map(|f| f.0).unwrap_or(first);
    let mut members = shard.members.lock().expect("direct members lock poisoned");
    let mut i = 0;
    while i < members.len() {
        let m = &mut members[i];
        if let Some(from) = round.dropped_from {
            if !before(m.next, from) && before(m.next, first) {
                let n = first.wrapping_sub(m.next) as u64;
                m.skipped += n;
                skipped += n;
                m.next = first;
            }
        }
        if before(last, m.next) {
            // It has every frame of this round already.
            i += 1;
            continue;
        }
        let Some(k) = round.frames.iter().position(|f| f.0 == m.next) else {
            // It needs a frame this writer does not have: its task takes it from its queue.
            hand_back(&mut members, i, None);
            continue;
        };
        let from = round.frames[k].1;
        let bytes = &round.bytes[from..];
        // SAFETY: `fd` is the member's open socket: members are written only under this lock,
        // and a listener leaves (under it) before its socket is closed (see the module doc).
        let sent = unsafe {
            libc::send(
                m.slot.fd,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        let n = (round.frames.len() - k) as u64;
        match usize::try_from(sent) {
            Ok(sent) if sent == bytes.len() => {
                delivered += n;
                m.next = last.wrapping_add(1);
                i += 1;
            }
            // Part of it: the socket's buffer is full (a slow listener). The rest goes first
            // when its task writes next, so these frames are its, and counted now.
            Ok(sent) if sent > 0 => {
                delivered += n;
                m.next = last.wrapping_add(1);
                let rest = round.bytes.slice(from + sent..);
                hand_back(&mut members, i, Some(rest));
            }
            // None of it: full, or failed (its task will find out when it writes).
            _ => hand_back(&mut members, i, None),
        }
    }
    shard.count.store(members.len(), Ordering::Relaxed);
    (delivered, skipped)
}

/// Hands member `i` back to its task.
fn hand_back(members: &mut Vec<Member>, i: usize, rest: Option<Bytes>) {
    let m = Shard::remove(members, i);
    *m.slot.back.lock().expect("direct back lock poisoned") = Some(Back {
        next: m.next,
        skipped: m.skipped,
        rest,
    });
    m.slot.wake.notify_one();
}
