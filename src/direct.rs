//! Direct delivery: a channel's frames written to its live listeners' sockets by one writer
//! per [`SHARD_LISTENERS`] listeners, without waking each listener's task.
//!
//! A delegate's connection task (`server.rs`) hears its channel through the channel's
//! broadcast queue. While it is caught up (nothing queued for it, its last write complete), it
//! *joins* a shard of its channel and goes to sleep: from then on the shard's writer sends each
//! frame, framed once as a WebSocket binary message (server frames are not masked, RFC 6455
//! §5.1, so the bytes are the same for every listener), to every member's socket with one
//! non-blocking `send()` each. Over TLS the writer puts the message into the member's own
//! session (`tls::Session`, shared with its task behind a lock: one record, encrypted for it
//! alone, RFC 8446 §5.2) and sends the session's queued records the same way. A member whose
//! socket cannot take the whole message (its send buffer is full: it is slow, or gone) is
//! *handed back* to its task, with what was left unsent of the message (over TLS, what the
//! session did not take; records it took stay queued in it, and go first with the task's next
//! write); the task writes that first and goes on from the
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
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
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
/// (`relay.rs`) or a member's state; the sequence lock, then a shard's queue. Nothing takes a
/// shard's members while holding the sequence lock or a member's state, and the writer never
/// holds both of its shard's locks.
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
    members: Mutex<Vec<Arc<Slot>>>,
    queue: Mutex<VecDeque<Bytes>>,
    ready: Notify,
    closed: AtomicBool,
    /// Members now (read without the lock to choose a shard to join).
    count: AtomicUsize,
}

/// A listener's place in a shard, shared by its task and the writer: one allocation per
/// delegate, its task keeping a pointer to it (a relay holds tens of thousands).
pub struct Slot {
    fd: RawFd,
    /// Its TLS session, when it has one: the writer encrypts the frame for it and sends the
    /// record (`tls::Session`).
    tls: Option<crate::tls::Session>,
    /// The sequence number of the next frame it needs; the writer's while it is a member
    /// (changed under the members lock).
    next: AtomicU32,
    /// Its index in its shard's members, or `NOT_A_MEMBER`; changed under the members lock.
    index: AtomicUsize,
    /// Its task, while it waits to be handed back.
    waker: futures_util::task::AtomicWaker,
    state: Mutex<State>,
}

/// What the task and, when it hands the listener back, the writer know of it.
#[derive(Default)]
struct State {
    /// The shard it is in, and the sequence number it needed on joining.
    joined: Option<(Arc<Shard>, u32)>,
    /// Set by the writer on handing it back: frames it skipped for it while it was a member.
    handed_back: Option<u64>,
    /// After leaving: the frames on its queue before this sequence number were written.
    resume: Option<u32>,
    /// The end of a message the writer began: the task writes it before anything else.
    rest: Option<Bytes>,
    /// Frames written and skipped for it by writers, over the connection.
    delivered: u64,
    skipped: u64,
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
        slot.next.store(next, Ordering::Relaxed);
        slot.index.store(members.len(), Ordering::Relaxed);
        members.push(slot.clone());
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
    fn remove(members: &mut Vec<Arc<Slot>>, i: usize) -> Arc<Slot> {
        let m = members.swap_remove(i);
        if let Some(moved) = members.get(i) {
            moved.index.store(i, Ordering::Relaxed);
        }
        // Release: seen by its task's check after registering its waker.
        m.index.store(NOT_A_MEMBER, Ordering::Release);
        m
    }
}

/// A listener task's side of direct delivery: one pointer in the task.
pub struct Listener(Arc<Slot>);

impl Listener {
    /// For a listener whose socket is the TCP socket `fd`, which must stay open for as long as
    /// this value lives, with its TLS session if it has one.
    pub fn new(fd: RawFd, tls: Option<crate::tls::Session>) -> Listener {
        Listener(Arc::new(Slot {
            fd,
            tls,
            next: AtomicU32::new(0),
            index: AtomicUsize::new(NOT_A_MEMBER),
            waker: futures_util::task::AtomicWaker::new(),
            state: Mutex::new(State::default()),
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().expect("direct state lock poisoned")
    }

    /// Joins a shard of `channel` (see [`Channel::join`]); true if it did (or already was in
    /// one). Not while it has a message's end to write.
    pub fn join(&self, channel: &Channel, caught_up: impl FnOnce() -> Option<u32>) -> bool {
        {
            let mut state = self.state();
            if state.joined.is_some() {
                return true;
            }
            if state.rest.is_some() || self.records_waiting() {
                return false;
            }
            // A hand-back not yet taken (its wake-up still pending) is stale from here on.
            state.handed_back = None;
        }
        // Not holding its state: a writer takes its members lock, then a member's state.
        let mut at = None;
        let shard = channel.join(&self.0, || {
            let next = caught_up()?;
            at = Some(next);
            Some(next)
        });
        if let (Some(shard), Some(at)) = (shard, at) {
            let mut state = self.state();
            state.joined = Some((shard, at));
            state.resume = None;
            return true;
        }
        false
    }

    /// Waits until the writer hands this listener back (its socket is slow, or its writer
    /// lacks the frame it needs). Cancel-safe; pending forever when not a member. A plain
    /// function, not an `async fn`: its future is one pointer, in every delegate's task.
    pub fn handed_back(&self) -> impl std::future::Future<Output = ()> + '_ {
        let joined = self.state().joined.is_some();
        std::future::poll_fn(move |cx| {
            if !joined {
                return std::task::Poll::Pending;
            }
            self.0.waker.register(cx.waker());
            if self.0.index.load(Ordering::Acquire) == NOT_A_MEMBER {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
    }

    /// Leaves the shard, if in one: from then on its task may write to its socket, after
    /// [`Listener::take_rest`], and takes its frames from [`Listener::take_resume`] on.
    pub fn leave(&self) {
        let Some((shard, at)) = self.state().joined.take() else {
            return;
        };
        // Not holding its state: a writer takes its members lock, then a member's state.
        let mut members = shard.members.lock().expect("direct members lock poisoned");
        let i = self.0.index.load(Ordering::Relaxed);
        if i != NOT_A_MEMBER {
            Shard::remove(&mut members, i);
            shard.count.store(members.len(), Ordering::Relaxed);
        }
        drop(members);
        let mut state = self.state();
        let next = self.0.next.load(Ordering::Relaxed);
        let skipped = state.handed_back.take().unwrap_or(0);
        let moved = next.wrapping_sub(at) as u64;
        state.delivered += moved.saturating_sub(skipped);
        state.skipped += skipped;
        state.resume = Some(next);
    }

    /// After leaving: frames on its queue before the returned sequence number were written.
    pub fn take_resume(&self) -> Option<u32> {
        self.state().resume.take()
    }

    /// After leaving: the end of a message the writer began, to be written before anything.
    pub fn take_rest(&self) -> Option<Bytes> {
        self.state().rest.take()
    }

    /// Keeps `rest` as what must be written before anything else (a write of it that did not
    /// finish).
    pub fn keep_rest(&self, rest: Bytes) {
        self.state().rest = Some(rest);
    }

    /// Whether it has something to write before it is caught up: a message's end, or (over
    /// TLS) records its session took and its socket did not.
    pub fn has_rest(&self) -> bool {
        self.state().rest.is_some() || self.records_waiting()
    }

    /// Over TLS: records waiting in its session for its socket.
    pub fn records_waiting(&self) -> bool {
        self.0
            .tls
            .as_ref()
            .is_some_and(|t| t.lock().expect("TLS session lock poisoned").wants_write())
    }

    /// Frames written and skipped for it by writers so far.
    pub fn counts(&self) -> (u64, u64) {
        let state = self.state();
        (state.delivered, state.skipped)
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
        let m = &members[i];
        let mut next = m.next.load(Ordering::Relaxed);
        if let Some(from) = round.dropped_from {
            if !before(next, from) && before(next, first) {
                let n = first.wrapping_sub(next) as u64;
                *m.state
                    .lock()
                    .expect("direct state lock poisoned")
                    .handed_back
                    .get_or_insert(0) += n;
                skipped += n;
                next = first;
                m.next.store(next, Ordering::Relaxed);
            }
        }
        if before(last, next) {
            // It has every frame of this round already.
            i += 1;
            continue;
        }
        let Some(k) = round.frames.iter().position(|f| f.0 == next) else {
            // It needs a frame this writer does not have: its task takes it from its queue.
            hand_back(&mut members, i, None);
            handed_back += 1;
            continue;
        };
        let from = round.frames[k].1;
        let bytes = &round.bytes[from..];
        let n = (round.frames.len() - k) as u64;
        match send(m, bytes) {
            Sent::All => {
                delivered += n;
                m.next.store(last.wrapping_add(1), Ordering::Relaxed);
                i += 1;
            }
            // Part of it: the socket's buffer is full (a slow listener). The rest goes first
            // when its task writes next, so these frames are its, and counted now.
            Sent::Part(sent) => {
                delivered += n;
                m.next.store(last.wrapping_add(1), Ordering::Relaxed);
                let rest = (sent < bytes.len()).then(|| round.bytes.slice(from + sent..));
                cut += rest.is_some() as u64;
                hand_back(&mut members, i, rest);
                handed_back += 1;
            }
            // None of it: full, or failed (its task will find out when it writes).
            Sent::Nothing => {
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

/// What one member's socket took of a write.
enum Sent {
    All,
    /// The first this many bytes (some, not all); over TLS, or all of them with records still
    /// waiting in the session.
    Part(usize),
    Nothing,
}

/// Sends `bytes` to a member: one `send()` on a plain socket; over TLS, the bytes into the
/// session (one record, encrypted for it alone) and its queued records out with `send()`.
fn send(m: &Slot, bytes: &[u8]) -> Sent {
    let Some(tls) = &m.tls else {
        // SAFETY: `fd` is the member's open socket: members are written only under their
        // shard's lock, and a listener leaves (under it) before its socket is closed (see the
        // module doc).
        let sent = unsafe {
            libc::send(
                m.fd,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        return match usize::try_from(sent) {
            Ok(n) if n == bytes.len() => Sent::All,
            Ok(n) if n > 0 => Sent::Part(n),
            _ => Sent::Nothing,
        };
    };
    use std::io::Write;
    let mut session = tls.lock().expect("TLS session lock poisoned");
    let taken = match session.writer().write(bytes) {
        Ok(n) => n,
        Err(_) => return Sent::Nothing,
    };
    let mut socket = Socket(m.fd);
    let mut flushed = true;
    while session.wants_write() {
        match session.write_tls(&mut socket) {
            Ok(n) if n > 0 => {}
            _ => {
                flushed = false;
                break;
            }
        }
    }
    match (taken, flushed) {
        (n, true) if n == bytes.len() => Sent::All,
        (0, _) => Sent::Nothing,
        (n, _) => Sent::Part(n),
    }
}

/// A member's socket as a `std::io::Write` of non-blocking sends, for rustls's `write_tls`.
struct Socket(RawFd);

impl std::io::Write for Socket {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // SAFETY: as in `send`: the member's open socket, under its shard's lock.
        let sent = unsafe {
            libc::send(
                self.0,
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        usize::try_from(sent).map_err(|_| std::io::Error::last_os_error())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Hands member `i` back to its task.
fn hand_back(members: &mut Vec<Arc<Slot>>, i: usize, rest: Option<Bytes>) {
    let m = Shard::remove(members, i);
    let mut state = m.state.lock().expect("direct state lock poisoned");
    state.handed_back.get_or_insert(0);
    state.rest = rest;
    drop(state);
    m.waker.wake();
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

    /// A shard whose members are `listeners`, each needing frame `next` on.
    fn shard_of(listeners: &[(&Listener, u32)]) -> Arc<Shard> {
        let shard = Arc::new(Shard {
            count: AtomicUsize::new(listeners.len()),
            members: Mutex::new(Vec::new()),
            queue: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
        });
        let mut members = shard.members.lock().unwrap();
        for (i, (l, next)) in listeners.iter().enumerate() {
            l.0.index.store(i, Ordering::Relaxed);
            l.0.next.store(*next, Ordering::Relaxed);
            l.state().joined = Some((shard.clone(), *next));
            members.push(l.0.clone());
        }
        drop(members);
        shard
    }

    fn is_member(l: &Listener) -> bool {
        l.0.index.load(Ordering::Relaxed) != NOT_A_MEMBER
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
        let l = Listener::new(tx.as_raw_fd(), None);
        let shard = shard_of(&[(&l, 0)]);
        let counters = Counters::default();
        let mut seq = 0;
        // Rounds of five 1,000-byte frames until the socket cannot take one whole.
        while is_member(&l) {
            let frames: Vec<Bytes> = (seq..seq + 5).map(|n| frame(n, 1000)).collect();
            send_round(&shard, &round(&frames, None), &counters);
            seq += 5;
            assert!(seq < 200, "the socket never filled");
        }
        l.leave();
        let mut got = Vec::new();
        let _ = rx.read_to_end(&mut got);
        let rest = l.take_rest();
        let cut = rest.is_some();
        if let Some(rest) = &rest {
            got.extend_from_slice(rest);
        }
        let messages = messages(&got);
        // Whole messages, in order, from the first on, and the next one it needs after them.
        for (i, (seq, len)) in messages.iter().enumerate() {
            assert_eq!((*seq, *len), (i as u32, crate::protocol::HEADER_LEN + 1000));
        }
        assert_eq!(l.take_resume(), Some(messages.len() as u32));
        assert_eq!(l.counts(), (messages.len() as u64, 0));
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
        // A round of 30 frames into a 4 KiB socket: the socket takes part of it, cutting a
        // message (an AF_UNIX stream takes what fits of a write).
        let (tx, mut rx) = small_pair();
        let l = Listener::new(tx.as_raw_fd(), None);
        let shard = shard_of(&[(&l, 0)]);
        let counters = Counters::default();
        let frames: Vec<Bytes> = (0..30).map(|n| frame(n, 1000)).collect();
        send_round(&shard, &round(&frames, None), &counters);
        assert!(!is_member(&l));
        assert!(l.has_rest());
        l.leave();
        // It cannot join again before writing what was begun.
        let channel = Channel::default();
        assert!(!l.join(&channel, || Some(30)));
        let rest = l.take_rest().expect("a write cut short");
        let mut got = Vec::new();
        let _ = rx.read_to_end(&mut got);
        assert!(!got.is_empty() && !rest.is_empty());
        got.extend_from_slice(&rest);
        let seqs: Vec<u32> = messages(&got).iter().map(|m| m.0).collect();
        assert_eq!(seqs, (0..30).collect::<Vec<_>>());
        assert_eq!(l.take_resume(), Some(30));
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
        let ls: Vec<Listener> = pairs
            .iter()
            .map(|(a, _)| Listener::new(a.as_raw_fd(), None))
            .collect();
        // Member 0 needs frame 10 (the round's first); 1 has up to 11 already; 2 needs 13,
        // after the round; 3 needs 8, which this writer does not have.
        let shard = shard_of(&[(&ls[0], 10), (&ls[1], 12), (&ls[2], 13), (&ls[3], 8)]);
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
        assert!(!is_member(&ls[3]));
        ls[3].leave();
        assert_eq!((ls[3].take_resume(), ls[3].take_rest()), (Some(8), None));
        assert_eq!(counters.delivered.load(Ordering::Relaxed), 4);
        {
            let members = shard.members.lock().unwrap();
            assert_eq!(members.len(), 3);
            for (i, m) in members.iter().enumerate() {
                assert_eq!(m.index.load(Ordering::Relaxed), i);
                assert_eq!(m.next.load(Ordering::Relaxed), 13);
            }
        }
        ls[0].leave();
        assert_eq!((ls[0].take_resume(), ls[0].counts()), (Some(13), (3, 0)));
        assert_eq!(shard.count.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_writer_that_fell_behind_moves_its_members_on_to_live() {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let l = Listener::new(a.as_raw_fd(), None);
        let shard = shard_of(&[(&l, 5)]);
        let counters = Counters::default();
        // Frames 5..=17 were dropped by the writer; the round holds the newest two.
        let frames: Vec<Bytes> = (18..20).map(|n| frame(n, 80)).collect();
        send_round(&shard, &round(&frames, Some(5)), &counters);
        let mut got = Vec::new();
        let _ = (&b).read_to_end(&mut got);
        let seqs: Vec<u32> = messages(&got).iter().map(|m| m.0).collect();
        assert_eq!(seqs, vec![18, 19]);
        assert_eq!(counters.skipped.load(Ordering::Relaxed), 13);
        l.leave();
        assert_eq!((l.take_resume(), l.counts()), (Some(20), (2, 13)));
    }

    #[tokio::test]
    async fn a_listener_joins_when_caught_up_and_is_written_by_the_writer() {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let channel = Channel::default();
        let l = Listener::new(a.as_raw_fd(), None);
        assert!(!l.join(&channel, || None), "frames waiting: not caught up");
        assert!(l.join(&channel, || Some(7)));
        assert_eq!(channel.members(), 1);
        for n in 7..10 {
            channel.publish(&frame(n, 80));
        }
        // Read as the writer sends, without holding up this test's runtime.
        let mut b = tokio::net::UnixStream::from_std(b).unwrap();
        let mut got = Vec::new();
        while messages_whole(&got) < 3 {
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                tokio::io::AsyncReadExt::read(&mut b, &mut buf),
            )
            .await
            .expect("the writer's frames in time")
            .unwrap();
            assert!(n > 0, "the writer's socket closed");
            got.extend_from_slice(&buf[..n]);
        }
        let seqs: Vec<u32> = messages(&got).iter().map(|m| m.0).collect();
        assert_eq!(seqs, vec![7, 8, 9]);
        // Taking its socket back for a write of its own: it resumes after frame 9.
        l.leave();
        assert_eq!(channel.members(), 0);
        assert_eq!((l.take_resume(), l.counts()), (Some(10), (3, 0)));
    }

    /// Whole messages at the start of `bytes`.
    fn messages_whole(mut bytes: &[u8]) -> usize {
        let mut n = 0;
        while bytes.len() >= 2 {
            let (len, head) = match bytes[1] {
                126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
                126 => return n,
                k => (k as usize, 2),
            };
            if bytes.len() < head + len {
                return n;
            }
            bytes = &bytes[head + len..];
            n += 1;
        }
        n
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
