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
    pub counters: Arc<Counters>,
}

/// What a channel's writers did, each counted once per listener.
#[derive(Default)]
pub struct Counters {
    /// Frames written.
    pub delivered: AtomicU64,
    /// Frames skipped for listeners whose writer fell behind.
    pub skipped: AtomicU64,
    /// Listeners handed back to their tasks (their sockets could not take a whole write).
    pub handed_back: AtomicU64,
    /// Of those, the ones whose socket took part of a message (the rest written by the task).
    pub cut: AtomicU64,
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
                    tokio::spawn(write(s.clone(), self.counters.clone()));
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

impl Channel {
    /// Listeners its writers send to now.
    pub fn members(&self) -> usize {
        let shards = self.shards.lock().expect("direct shards lock poisoned");
        shards.iter().map(|s| s.count.load(Ordering::Relaxed)).sum()
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
async fn write(shard: Arc<Shard>, counters: Arc<Counters>) {
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
        send_round(&shard, &round, &counters);
        frames = round.frames;
    }
}

/// Writes one round to every member, and counts what it did.
fn send_round(shard: &Shard, round: &Round, counters: &Counters) {
    let (mut delivered, mut skipped, mut handed_back, mut cut) = (0u64, 0u64, 0u64, 0u64);
    let Some(&(first, _)) = round.frames.first() else {
        return;
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
            handed_back += 1;
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
                handed_back += 1;
                cut += 1;
            }
            // None of it: full, or failed (its task will find out when it writes).
            _ => {
                hand_back(&mut members, i, None);
                handed_back += 1;
            }
        }
    }
    shard.count.store(members.len(), Ordering::Relaxed);
    drop(members);
    counters.delivered.fetch_add(delivered, Ordering::Relaxed);
    counters.skipped.fetch_add(skipped, Ordering::Relaxed);
    counters
        .handed_back
        .fetch_add(handed_back, Ordering::Relaxed);
    counters.cut.fetch_add(cut, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    /// A relay frame (28-byte header, sequence at bytes 4..8) with `len` bytes of Opus.
    fn frame(seq: u32, len: usize) -> Bytes {
        let mut f = vec![0u8; crate::protocol::HEADER_LEN + len];
        f[4..8].copy_from_slice(&seq.to_be_bytes());
        f[crate::protocol::HEADER_LEN..].fill(seq as u8);
        Bytes::from(f)
    }

    fn round(frames: &[Bytes], dropped_from: Option<u32>) -> Round {
        let mut buf = BytesMut::new();
        let mut at = Vec::new();
        for f in frames {
            at.push((sequence(f), buf.len()));
            put_ws_header(&mut buf, f.len());
            buf.put_slice(f);
        }
        Round {
            bytes: buf.freeze(),
            frames: at,
            dropped_from,
        }
    }

    fn shard_of(members: Vec<(Arc<Slot>, u32)>) -> Shard {
        let members: Vec<Member> = members
            .into_iter()
            .enumerate()
            .map(|(i, (slot, next))| {
                slot.index.store(i, Ordering::Relaxed);
                Member {
                    slot,
                    next,
                    skipped: 0,
                }
            })
            .collect();
        Shard {
            count: AtomicUsize::new(members.len()),
            members: Mutex::new(members),
            queue: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    fn slot(fd: RawFd) -> Arc<Slot> {
        Listener::new(fd).slot.clone()
    }

    /// The WebSocket messages in `bytes`: (sequence, payload length) of each; panics on a
    /// message cut or malformed.
    fn messages(mut bytes: &[u8]) -> Vec<(u32, usize)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            assert_eq!(bytes[0], 0x82, "a binary message, final, unmasked");
            let (len, head) = match bytes[1] {
                126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
                n => (n as usize, 2),
            };
            let payload = &bytes[head..head + len];
            out.push((sequence(payload), len));
            bytes = &bytes[head + len..];
        }
        out
    }

    fn small_pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let size: libc::c_int = 4096;
        // SAFETY: a valid socket and option value of the right size.
        let rc = unsafe {
            libc::setsockopt(
                a.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        (a, b)
    }

    #[test]
    fn a_full_socket_is_handed_back_with_the_end_of_the_message_it_began() {
        let (tx, mut rx) = small_pair();
        let s = slot(tx.as_raw_fd());
        let shard = shard_of(vec![(s.clone(), 0)]);
        let counters = Counters::default();
        let mut seq = 0;
        let mut sent_frames = 0;
        // Rounds of five 1,000-byte frames until the socket cannot take one whole.
        while s.index.load(Ordering::Relaxed) != NOT_A_MEMBER {
            let frames: Vec<Bytes> = (seq..seq + 5).map(|n| frame(n, 1000)).collect();
            send_round(&shard, &round(&frames, None), &counters);
            seq += 5;
            sent_frames += 5;
            assert!(sent_frames < 200, "the socket never filled");
        }
        let back = s.back.lock().unwrap().take().expect("handed back");
        let mut got = Vec::new();
        let _ = rx.read_to_end(&mut got);
        let cut = back.rest.is_some();
        if let Some(rest) = &back.rest {
            got.extend_from_slice(rest);
        }
        let messages = messages(&got);
        // Whole messages, in order, from the first on, and the next one it needs after them.
        for (i, (seq, len)) in messages.iter().enumerate() {
            assert_eq!((*seq, *len), (i as u32, crate::protocol::HEADER_LEN + 1000));
        }
        assert_eq!(back.next, messages.len() as u32);
        assert_eq!(
            counters.delivered.load(Ordering::Relaxed),
            messages.len() as u64
        );
        assert_eq!(counters.handed_back.load(Ordering::Relaxed), 1);
        assert_eq!(counters.cut.load(Ordering::Relaxed), cut as u64);
        assert_eq!(shard.count.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_cut_write_leaves_the_rest_of_the_message_and_of_the_round() {
        // Rounds of 30 frames into a 4 KiB socket: the socket takes part of the round, cutting
        // a message (an AF_UNIX stream takes what fits of a write).
        let (tx, mut rx) = small_pair();
        let s = slot(tx.as_raw_fd());
        let shard = shard_of(vec![(s.clone(), 0)]);
        let counters = Counters::default();
        let frames: Vec<Bytes> = (0..30).map(|n| frame(n, 1000)).collect();
        send_round(&shard, &round(&frames, None), &counters);
        let back = s.back.lock().unwrap().take().expect("handed back");
        let rest = back.rest.expect("a write cut short");
        let mut got = Vec::new();
        let _ = rx.read_to_end(&mut got);
        assert!(!got.is_empty() && !rest.is_empty());
        got.extend_from_slice(&rest);
        let seqs: Vec<u32> = messages(&got).iter().map(|m| m.0).collect();
        assert_eq!(seqs, (0..30).collect::<Vec<_>>());
        assert_eq!(back.next, 30);
        assert_eq!(counters.cut.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn each_member_gets_the_frames_it_lacks_and_a_gap_is_handed_back() {
        let pairs: Vec<(UnixStream, UnixStream)> =
            (0..4).map(|_| UnixStream::pair().unwrap()).collect();
        for (a, b) in &pairs {
            a.set_nonblocking(true).unwrap();
            b.set_nonblocking(true).unwrap();
        }
        let slots: Vec<Arc<Slot>> = pairs.iter().map(|(a, _)| slot(a.as_raw_fd())).collect();
        // Member 0 needs frame 10 (the round's first); 1 has up to 11 already; 2 needs 13,
        // after the round; 3 needs 8, which this writer does not have.
        let shard = shard_of(vec![
            (slots[0].clone(), 10),
            (slots[1].clone(), 12),
            (slots[2].clone(), 13),
            (slots[3].clone(), 8),
        ]);
        let counters = Counters::default();
        let frames: Vec<Bytes> = (10..13).map(|n| frame(n, 80)).collect();
        send_round(&shard, &round(&frames, None), &counters);
        let read = |i: usize| {
            let mut got = Vec::new();
            let _ = (&pairs[i].1).read_to_end(&mut got);
            messages(&got).iter().map(|m| m.0).collect::<Vec<_>>()
        };
        assert_eq!(read(0), vec![10, 11, 12]);
        assert_eq!(read(1), vec![12]);
        assert_eq!(read(2), Vec::<u32>::new());
        assert_eq!(read(3), Vec::<u32>::new());
        let back = slots[3].back.lock().unwrap().take().expect("handed back");
        assert_eq!((back.next, back.rest.is_none()), (8, true));
        assert_eq!(counters.delivered.load(Ordering::Relaxed), 4);
        let members = shard.members.lock().unwrap();
        let next: Vec<u32> = members.iter().map(|m| m.next).collect();
        assert_eq!(members.len(), 3);
        assert!(next.iter().all(|n| *n == 13));
        for (i, m) in members.iter().enumerate() {
            assert_eq!(m.slot.index.load(Ordering::Relaxed), i);
        }
    }

    #[test]
    fn a_writer_that_fell_behind_moves_its_members_on_to_live() {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let s = slot(a.as_raw_fd());
        let shard = shard_of(vec![(s.clone(), 5)]);
        let counters = Counters::default();
        // Frames 5..=17 were dropped by the writer; the round holds the newest two.
        let frames: Vec<Bytes> = (18..20).map(|n| frame(n, 80)).collect();
        send_round(&shard, &round(&frames, Some(5)), &counters);
        let mut got = Vec::new();
        let _ = (&b).read_to_end(&mut got);
        let seqs: Vec<u32> = messages(&got).iter().map(|m| m.0).collect();
        assert_eq!(seqs, vec![18, 19]);
        assert_eq!(counters.skipped.load(Ordering::Relaxed), 13);
        let mut l = Listener {
            slot: s,
            joined: Some((Arc::new(shard), 5)),
        };
        let left = l.leave().expect("was a member");
        assert_eq!(
            left,
            Left {
                next: 20,
                delivered: 2,
                skipped: 13,
                rest: None
            }
        );
    }

    #[test]
    fn headers_follow_rfc_6455() {
        let mut b = BytesMut::new();
        put_ws_header(&mut b, 125);
        put_ws_header(&mut b, 126);
        put_ws_header(&mut b, 70_000);
        assert_eq!(
            &b[..],
            &[0x82, 125, 0x82, 126, 0, 126, 0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]
        );
        assert!(before(u32::MAX, 0) && !before(0, u32::MAX) && !before(3, 3));
    }
}
