//! Admission: which connections the relay takes, how many, and from whom.
//!
//! Every accepted TCP connection holds a [`Ticket`] from the [`Gate`] for as long as its socket
//! is open. The gate bounds:
//! - all open connections, at `max_open` (from the process's open-file limit, see
//!   [`raise_open_file_limit`]);
//! - connections that have not said who they are (*pending*: page loads, WebSocket handshakes
//!   before `hello`) and delegates, together, at `max_open - reserve`. The `reserve` is kept
//!   back for booth consoles, floor feeds and engineers: however many listeners come, a sender
//!   can connect;
//! - pending connections per address (`pending_per_address`) and listeners per address
//!   (`listeners_per_address`), so one guest on the venue Wi-Fi cannot take the room of many.
//!
//! When the shared room is full, the oldest pending connection is closed to make room for the
//! new one (it had its chance to say who it is); only when no connection is pending does a new
//! one go to the reserve, where it must be a sender or an engineer. The deadlines that make
//! pending connections short-lived are in `server.rs` and `accept.rs`.
//!
//! Behind a reverse proxy, [`client_addr`] takes the client's address from `Forwarded`
//! (RFC 7239) or `X-Forwarded-For`, only when the connection comes from a trusted proxy.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// File descriptors kept back from the open-file limit for everything that is not a
/// connection: recordings (one file per channel), the event file, the page's files being
/// served, the runtime's own (epoll, eventfd, timers).
pub const FILE_HEADROOM: usize = 256;
/// Default bound on delegates per client address. A phone or laptop has its own address on
/// a venue LAN and needs one connection (a few while a page reloads); behind a NAT, raise it
/// (`serve --listeners-per-address`).
pub const LISTENERS_PER_ADDRESS: usize = 16;
/// Default bound on connections per address that have not said who they are: a browser
/// loading the page opens up to six; a few phones behind one NAT reloading at once fit.
pub const PENDING_PER_ADDRESS: usize = 64;
/// Reserve connections one address may hold before saying who it is: a booth laptop needs a
/// console and perhaps a monitor; more than this from one address is not a booth.
pub const RESERVE_PER_ADDRESS: usize = 4;
/// Engineers' connections counted into the reserve on top of the event's senders.
pub const RESERVE_ENGINEERS: usize = 16;

/// The bounds of a [`Gate`].
#[derive(Debug, Clone)]
pub struct Limits {
    /// All open connections.
    pub max_open: usize,
    /// Kept back, out of `max_open`, for booth consoles, floor feeds and engineers.
    pub reserve: usize,
    pub listeners_per_address: usize,
    pub pending_per_address: usize,
    /// Reverse proxies whose `Forwarded`/`X-Forwarded-For` headers are believed.
    pub trusted_proxies: Vec<Network>,
}

impl Limits {
    /// Bounds for an event with `senders` possible booth consoles and floor feeds, under an
    /// open-file limit of `nofile`. The reserve is twice the senders and engineers (a console
    /// reconnecting holds its old and new connection for a moment), at least 64, and never more
    /// than a quarter of the connections.
    pub fn for_event(nofile: u64, senders: usize) -> Limits {
        let max_open = (nofile as usize).saturating_sub(FILE_HEADROOM).max(16);
        let reserve = (2 * (senders + RESERVE_ENGINEERS))
            .max(64)
            .min(max_open / 4);
        Limits {
            max_open,
            reserve,
            listeners_per_address: LISTENERS_PER_ADDRESS,
            pending_per_address: PENDING_PER_ADDRESS,
            trusted_proxies: Vec::new(),
        }
    }
}

/// An address or a network in CIDR notation (`10.0.0.0/24`, `fd00::/8`, `127.0.0.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Network, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| {
            format!("`{s}` is not an IP address or network (e.g. 10.0.0.1, 10.0.0.0/24)")
        })?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0 to {bits}"))?,
            None => bits,
        };
        Ok(Network { addr, prefix })
    }
}

impl Network {
    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// The address a client is counted under by the per-address bounds and the secret attempts:
/// an IPv4 address; an IPv6 address's /64 (a host picks any address of its /64 at will,
/// RFC 4941), `::ffff:a.b.c.d` as `a.b.c.d`.
pub fn host_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d`, so that one client has one address whatever the socket.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Why the gate refused a connection. The name is what `/metrics` and the log say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every connection the relay can hold is taken.
    Full,
    /// This address has as many connections waiting to say who they are as it may.
    PerAddress,
}

impl Refused {
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Full => "the relay is full: try again in a moment",
            Refused::PerAddress => "too many connections from this address",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Refused::Full => "full",
            Refused::PerAddress => "per_address",
        }
    }
}

/// Why a connection that said who it is cannot stay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("the relay is full: its last places are kept for booths, the floor and engineers")]
    Full,
    #[error("too many listeners from this address (at most {0}); close another first")]
    PerAddress(usize),
}

/// What a connection is, as far as the gate counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Has not said who it is (HTTP, or WebSocket before `hello`). Closed first under pressure.
    Pending,
    /// A delegate (or a player of the HTTP stream).
    Listener,
    /// A booth console, floor feed or engineer.
    Sender,
}

#[derive(Debug, Default)]
struct PerAddress {
    pending: usize,
    listeners: usize,
    reserve: usize,
    /// What its connections may still send before they are read more slowly.
    read: Arc<Mutex<ReadBudget>>,
}

#[derive(Default)]
struct State {
    open: usize,
    /// Pending and listener connections outside the reserve.
    shared: usize,
    /// Connections in the reserve, of any class.
    reserved: usize,
    by_addr: HashMap<IpAddr, PerAddress>,
    /// Pending connections outside the reserve, oldest first (entries of connections that are
    /// no longer pending are skipped when met, and swept when the queue outgrows the open ones).
    pending: VecDeque<Weak<Slot>>,
    /// Pending connections in the reserve, oldest first, the same way.
    reserve_pending: VecDeque<Weak<Slot>>,
}

/// Counters of the gate, for `/metrics`.
#[derive(Default)]
pub struct Counters {
    pub refused_full: AtomicU64,
    pub refused_per_address: AtomicU64,
    pub denied_full: AtomicU64,
    pub denied_per_address: AtomicU64,
    /// Pending connections closed to make room for new ones.
    pub evicted: AtomicU64,
    /// Reads that waited because their address had sent more than its read budget.
    pub paced_reads: AtomicU64,
}

/// The connection bounds of one relay.
pub struct Gate {
    limits: Limits,
    state: Mutex<State>,
    pub counters: Counters,
}

struct SlotState {
    class: Class,
    /// Counted in the reserve rather than the shared room.
    reserved: bool,
    /// Released by eviction: its counts are already given back.
    released: bool,
    /// The address a listener is counted under (the client's, which behind a trusted proxy is
    /// not the socket's).
    listener_addr: Option<IpAddr>,
}

struct Slot {
    gate: Arc<Gate>,
    peer: IpAddr,
    since: Instant,
    state: Mutex<SlotState>,
    evict: Notify,
    /// The address's read budget (none for a trusted proxy, whose clients are many).
    read: Option<Arc<Mutex<ReadBudget>>>,
    /// A booth console, floor feed or engineer whose secret was right: read unpaced (audio
    /// has its own bound, `server::FRAME_RATE`).
    unpaced: Arc<std::sync::atomic::AtomicBool>,
}

/// A connection's place in the gate, shared by the tasks that serve it; the place is given
/// back when the last clone is dropped.
#[derive(Clone)]
pub struct Ticket(Arc<Slot>);

impl Gate {
    pub fn new(limits: Limits) -> Arc<Gate> {
        Arc::new(Gate {
            limits,
            state: Mutex::new(State::default()),
            counters: Counters::default(),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().open
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("gate lock poisoned")
    }

    /// Whether `peer` is a trusted reverse proxy.
    pub fn is_trusted_proxy(&self, peer: IpAddr) -> bool {
        self.limits.trusted_proxies.iter().any(|n| n.contains(peer))
    }

    /// Takes a new connection from `peer`, or says why not.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Ticket, Refused> {
        let peer = host_key(peer);
        let trusted = self.is_trusted_proxy(peer);
        let refused = |r: Refused| {
            match r {
                Refused::Full => &self.counters.refused_full,
                Refused::PerAddress => &self.counters.refused_per_address,
            }
            .fetch_add(1, Ordering::Relaxed);
            Err(r)
        };
        let mut victim = None;
        let mut state = self.lock();
        // Every place taken: only by closing a pending connection is there room.
        let full = state.open >= self.limits.max_open;
        let (pending_here, reserve_here) = state
            .by_addr
            .get(&peer)
            .map(|a| (a.pending, a.reserve))
            .unwrap_or((0, 0));
        if !trusted && pending_here >= self.limits.pending_per_address {
            return refused(Refused::PerAddress);
        }
        let shared_room = self.limits.max_open - self.limits.reserve;
        let reserved = if !full && state.shared < shared_room {
            false
        } else if let Some(v) = evict_oldest(&mut state, false) {
            victim = Some(v);
            false
        } else if !trusted && reserve_here >= RESERVE_PER_ADDRESS {
            return refused(Refused::Full);
        } else if !full && state.reserved < self.limits.reserve {
            true
        } else if let Some(v) = evict_oldest(&mut state, true) {
            // The reserve is full of connections that have not said who they are: the oldest
            // gives its place, so that whoever holds places by reconnecting cannot keep a
            // booth out.
            victim = Some(v);
            true
        } else {
            return refused(Refused::Full);
        };
        let slot = Arc::new(Slot {
            gate: self.clone(),
            peer,
            since: Instant::now(),
            state: Mutex::new(SlotState {
                class: Class::Pending,
                reserved,
                released: false,
                listener_addr: None,
            }),
            evict: Notify::new(),
            read: (!trusted).then(|| state.by_addr.entry(peer).or_default().read.clone()),
            unpaced: Arc::default(),
        });
        state.open += 1;
        let a = state.by_addr.entry(peer).or_default();
        a.pending += 1;
        if reserved {
            a.reserve += 1;
            state.reserved += 1;
            if state.reserve_pending.len() > 2 * self.limits.reserve + 64 {
                state.reserve_pending.retain(|w| w.strong_count() > 0);
            }
            state.reserve_pending.push_back(Arc::downgrade(&slot));
        } else {
            state.shared += 1;
            if state.pending.len() > 2 * state.open + 64 {
                state.pending.retain(|w| w.strong_count() > 0);
            }
            state.pending.push_back(Arc::downgrade(&slot));
        }
        drop(state);
        if let Some(v) = victim {
            self.counters.evicted.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %v.peer, waited_ms = v.since.elapsed().as_millis() as u64, "pending connection closed to make room");
            v.evict.notify_waiters();
        }
        Ok(Ticket(slot))
    }
}

/// A pending connection younger than this is never closed to make room: a booth on a slow
/// path needs a few round trips to say who it is, and a script recycling its own connections
/// must not be able to close each newcomer before it has.
pub const MIN_PENDING_AGE: Duration = Duration::from_secs(1);

/// The oldest connection still pending outside the reserve, if it is older than
/// [`MIN_PENDING_AGE`].
fn oldest_pending(queue: &mut VecDeque<Weak<Slot>>) -> Option<Arc<Slot>> {
    while let Some(w) = queue.pop_front() {
        if let Some(slot) = w.upgrade() {
            let s = slot.state.lock().expect("slot lock poisoned");
            if s.class == Class::Pending && !s.released {
                drop(s);
                if slot.since.elapsed() < MIN_PENDING_AGE {
                    // The queue is in admission order: every later one is younger still.
                    queue.push_front(w);
                    return None;
                }
                return Some(slot);
            }
        }
    }
    None
}

/// Takes the place of the oldest pending connection past [`MIN_PENDING_AGE`], in the reserve
/// or in the shared room: its counts are given back now, the caller wakes its tasks.
fn evict_oldest(state: &mut State, reserve: bool) -> Option<Arc<Slot>> {
    let queue = if reserve {
        &mut state.reserve_pending
    } else {
        &mut state.pending
    };
    let victim = oldest_pending(queue)?;
    release(
        state,
        &victim,
        &mut victim.state.lock().expect("slot lock poisoned"),
    );
    Some(victim)
}

/// Gives back a connection's counts (once: on eviction or when it closes).
fn release(state: &mut State, slot: &Slot, s: &mut SlotState) {
    if s.released {
        return;
    }
    s.released = true;
    state.open -= 1;
    if s.reserved {
        state.reserved -= 1;
    } else if s.class != Class::Sender {
        state.shared -= 1;
    }
    let mut forget = |addr: IpAddr, f: &dyn Fn(&mut PerAddress)| {
        if let Some(a) = state.by_addr.get_mut(&addr) {
            f(a);
            if a.pending == 0 && a.listeners == 0 && a.reserve == 0 {
                state.by_addr.remove(&addr);
            }
        }
    };
    let reserved = s.reserved;
    match s.class {
        Class::Pending => forget(slot.peer, &|a| a.pending -= 1),
        Class::Listener => {
            let addr = s.listener_addr.unwrap_or(slot.peer);
            forget(addr, &|a| a.listeners -= 1)
        }
        Class::Sender => {}
    }
    if reserved {
        forget(slot.peer, &|a| a.reserve -= 1);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        let mut s = self.state.lock().expect("slot lock poisoned");
        release(&mut state, self, &mut s);
    }
}

impl Ticket {
    /// The socket's peer address.
    pub fn peer(&self) -> IpAddr {
        self.0.peer
    }

    /// Whether this connection was taken into the reserve (it must be a sender or engineer).
    pub fn is_reserved(&self) -> bool {
        self.0.state.lock().expect("slot lock poisoned").reserved
    }

    /// Counts a request refused because this connection is in the reserve and not a sender's.
    pub fn count_reserve_refusal(&self) {
        self.0
            .gate
            .counters
            .denied_full
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Completes when the gate closes this connection to make room for a newer one.
    pub async fn evicted(&self) {
        loop {
            let notified = self.0.evict.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.0.state.lock().expect("slot lock poisoned").released {
                return;
            }
            notified.await;
        }
    }

    /// The connection is a delegate whose address is `client` (the socket's, or the one a
    /// trusted proxy gave). Refused when the relay keeps its last places for senders or the
    /// address has as many listeners as it may.
    pub fn listener(&self, client: IpAddr) -> Result<(), Denied> {
        let client = host_key(client);
        let gate = &self.0.gate;
        let mut state = gate.lock();
        let mut s = self.0.state.lock().expect("slot lock poisoned");
        if s.released || s.class != Class::Pending {
            return Ok(());
        }
        if s.reserved {
            gate.counters.denied_full.fetch_add(1, Ordering::Relaxed);
            return Err(Denied::Full);
        }
        let limit = gate.limits.listeners_per_address;
        if state
            .by_addr
            .get(&client)
            .is_some_and(|a| a.listeners >= limit)
        {
            gate.counters
                .denied_per_address
                .fetch_add(1, Ordering::Relaxed);
            return Err(Denied::PerAddress(limit));
        }
        if let Some(a) = state.by_addr.get_mut(&self.0.peer) {
            a.pending -= 1;
        }
        state.by_addr.entry(client).or_default().listeners += 1;
        s.class = Class::Listener;
        s.listener_addr = Some(client);
        Ok(())
    }

    /// The connection is a booth console, floor feed or engineer, whose secret was right: it
    /// is no longer counted against the listeners' room and is never closed to make room.
    pub fn sender(&self) {
        let mut state = self.0.gate.lock();
        let mut s = self.0.state.lock().expect("slot lock poisoned");
        if s.released || s.class != Class::Pending {
            return;
        }
        if let Some(a) = state.by_addr.get_mut(&self.0.peer) {
            a.pending -= 1;
        }
        if !s.reserved {
            state.shared -= 1;
        }
        s.class = Class::Sender;
        self.0.unpaced.store(true, Ordering::Relaxed);
    }

    /// `io` read within this connection's address's budget (see [`Paced`]).
    pub fn paced<IO>(&self, io: IO) -> Paced<IO> {
        Paced {
            io,
            read: self.0.read.clone(),
            unpaced: self.0.unpaced.clone(),
            gate: self.0.gate.clone(),
            sleep: None,
        }
    }
}

/// The client's address for a request that came over a socket from `peer`: the address a
/// trusted proxy names in `Forwarded` (RFC 7239 section 5.2, `for=`) or, without it,
/// `X-Forwarded-For`, taking the last hop that is not itself a trusted proxy; `peer` when
/// the socket is not from a trusted proxy or the headers name no usable address.
pub fn client_addr(peer: IpAddr, headers: &axum::http::HeaderMap, gate: &Gate) -> IpAddr {
    let peer = canonical(peer);
    if !gate.is_trusted_proxy(peer) {
        return peer;
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    let forwarded = headers.get_all("forwarded");
    if forwarded.iter().next().is_some() {
        for value in forwarded.iter().filter_map(|v| v.to_str().ok()) {
            for element in value.split(',') {
                let ip = element.split(';').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| parse_node(v))?
                });
                // An element without a usable `for` (`unknown`, an obfuscated name) breaks the
                // chain: nothing before it can be trusted to be the client.
                match ip {
                    Some(ip) => hops.push(ip),
                    None => hops.clear(),
                }
            }
        }
    } else {
        for value in headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            for hop in value.split(',') {
                match parse_node(hop) {
                    Some(ip) => hops.push(ip),
                    None => hops.clear(),
                }
            }
        }
    }
    hops.into_iter()
        .rev()
        .find(|ip| !gate.is_trusted_proxy(*ip))
        .unwrap_or(peer)
}

/// A node of `Forwarded`/`X-Forwarded-For`: `192.0.2.1`, `192.0.2.1:80`, `"[2001:db8::1]:80"`,
/// `2001:db8::1`.
fn parse_node(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok().map(canonical);
    }
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse().ok().map(canonical)
}

/// Raises the soft limit on open files to the hard limit. Returns (soft before, soft now,
/// hard). Errors come from `getrlimit`/`setrlimit` (POSIX).
pub fn raise_open_file_limit() -> std::io::Result<(u64, u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid resource and a pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, lim.rlim_cur, lim.rlim_max))
}

/// The soft limit on open files now.
pub fn open_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as above.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_cur
}

/// Says something about an address at most once per interval (refusals come by the thousand
/// from one script; the log should hold one line per address and interval, not one per try).
/// Bounded: past `MAX_QUIET` addresses, the oldest are forgotten.
pub struct Quiet {
    interval: Duration,
    seen: Mutex<HashMap<(IpAddr, &'static str), Instant>>,
}

/// Addresses a [`Quiet`] remembers.
pub const MAX_QUIET: usize = 4096;

impl Quiet {
    pub fn new(interval: Duration) -> Quiet {
        Quiet {
            interval,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Whether to say `what` about `addr` now.
    pub fn allow(&self, addr: IpAddr, what: &'static str, now: Instant) -> bool {
        let mut seen = self.seen.lock().expect("quiet lock poisoned");
        if let Some(last) = seen.get(&(addr, what)) {
            if now.saturating_duration_since(*last) < self.interval {
                return false;
            }
        }
        if seen.len() >= MAX_QUIET {
            let interval = self.interval;
            seen.retain(|_, t| now.saturating_duration_since(*t) < interval);
            if seen.len() >= MAX_QUIET {
                seen.clear();
            }
        }
        seen.insert((addr, what), now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn gate(max_open: usize, reserve: usize) -> Arc<Gate> {
        Gate::new(Limits {
            max_open,
            reserve,
            listeners_per_address: 2,
            pending_per_address: 3,
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
        })
    }

    #[test]
    fn a_full_shared_room_closes_the_oldest_pending_connection() {
        let g = gate(6, 2);
        let a: Vec<_> = (1..=4)
            .map(|i| g.admit(ip(&format!("192.0.2.{i}"))).unwrap())
            .collect();
        assert_eq!(g.open(), 4);
        // Too young to be closed: the newcomer goes to the reserve instead.
        let young = g.admit(ip("192.0.2.8")).unwrap();
        assert!(young.is_reserved());
        drop(young);
        std::thread::sleep(MIN_PENDING_AGE);
        // The shared room (4) is full: the oldest pending one goes.
        let newer = g.admit(ip("192.0.2.9")).unwrap();
        assert!(!newer.is_reserved());
        assert!(a[0].0.state.lock().unwrap().released);
        assert_eq!(g.open(), 4);
        assert_eq!(g.counters.evicted.load(Ordering::Relaxed), 1);
        drop(a);
        assert_eq!(g.open(), 1);
        assert!(g.lock().by_addr.len() == 1);
    }

    #[test]
    fn listeners_fill_the_shared_room_and_senders_still_get_the_reserve() {
        let g = gate(6, 2);
        let listeners: Vec<_> = (1..=4)
            .map(|i| {
                let t = g.admit(ip(&format!("192.0.2.{i}"))).unwrap();
                t.listener(t.peer()).unwrap();
                t
            })
            .collect();
        // No pending connection to close: the next goes to the reserve.
        let booth = g.admit(ip("198.51.100.1")).unwrap();
        assert!(booth.is_reserved());
        // A listener in the reserve is refused; a sender stays.
        let late = g.admit(ip("198.51.100.2")).unwrap();
        assert_eq!(late.listener(late.peer()), Err(Denied::Full));
        booth.sender();
        // Both places of the reserve are taken now, one by a connection still pending: too
        // young to give its place...
        assert_eq!(g.admit(ip("198.51.100.3")).err(), Some(Refused::Full));
        // ...until it has had its second.
        let squatter = g.admit(ip("198.51.100.4"));
        assert_eq!(squatter.err(), Some(Refused::Full));
        std::thread::sleep(MIN_PENDING_AGE);
        let newcomer = g.admit(ip("198.51.100.5")).unwrap();
        assert!(newcomer.is_reserved());
        assert!(late.0.state.lock().unwrap().released);
        drop(newcomer);
        drop(late);
        drop(listeners);
        assert_eq!(g.open(), 1);
    }

    #[test]
    fn per_address_bounds_hold_for_pending_and_listeners() {
        let g = gate(100, 10);
        let p = ip("192.0.2.1");
        let t: Vec<_> = (0..3).map(|_| g.admit(p).unwrap()).collect();
        assert_eq!(g.admit(p).err(), Some(Refused::PerAddress));
        t[0].listener(p).unwrap();
        t[1].listener(p).unwrap();
        assert_eq!(t[2].listener(p), Err(Denied::PerAddress(2)));
        // A trusted proxy is not bound per socket address; its clients are, by their own.
        let proxy = ip("10.1.2.3");
        let via: Vec<_> = (0..5).map(|_| g.admit(proxy).unwrap()).collect();
        via[0].listener(ip("203.0.113.5")).unwrap();
        via[1].listener(ip("203.0.113.5")).unwrap();
        assert!(via[2].listener(ip("203.0.113.5")).is_err());
        via[3].listener(ip("203.0.113.6")).unwrap();
        drop(via);
        drop(t);
        assert_eq!(g.open(), 0);
        assert!(g.lock().by_addr.is_empty());
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let g = gate(10, 2);
        let mut h = axum::http::HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.7, 10.0.0.5".parse().unwrap());
        assert_eq!(client_addr(ip("192.0.2.1"), &h, &g), ip("192.0.2.1"));
        assert_eq!(client_addr(ip("10.0.0.1"), &h, &g), ip("203.0.113.7"));
        let mut f = axum::http::HeaderMap::new();
        f.insert(
            "forwarded",
            r#"for=198.51.100.1;proto=https, for="[2001:db8::1]:4711""#
                .parse()
                .unwrap(),
        );
        f.insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
        assert_eq!(client_addr(ip("10.0.0.1"), &f, &g), ip("2001:db8::1"));
        let mut u = axum::http::HeaderMap::new();
        u.insert("forwarded", "for=unknown".parse().unwrap());
        assert_eq!(client_addr(ip("10.0.0.1"), &u, &g), ip("10.0.0.1"));
        assert_eq!(client_addr(ip("::ffff:192.0.2.3"), &u, &g), ip("192.0.2.3"));
    }

    #[test]
    fn an_ipv6_host_counts_by_its_64() {
        let g = gate(100, 10);
        let t: Vec<_> = (1..=3)
            .map(|i| g.admit(ip(&format!("2001:db8:1:2::{i}"))).unwrap())
            .collect();
        assert_eq!(
            g.admit(ip("2001:db8:1:2::99")).err(),
            Some(Refused::PerAddress)
        );
        assert!(g.admit(ip("2001:db8:1:3::1")).is_ok());
        t[0].listener(ip("2001:db8:1:2::1")).unwrap();
        t[1].listener(ip("2001:db8:1:2::2")).unwrap();
        assert_eq!(
            t[2].listener(ip("2001:db8:1:2::3")),
            Err(Denied::PerAddress(2))
        );
        assert_eq!(host_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn networks_parse_and_match() {
        let n: Network = "192.168.0.0/16".parse().unwrap();
        assert!(n.contains(ip("192.168.4.1")));
        assert!(n.contains(ip("::ffff:192.168.4.1")));
        assert!(!n.contains(ip("192.169.0.1")));
        assert!("10.0.0.0/33".parse::<Network>().is_err());
        assert!("example.org".parse::<Network>().is_err());
        let all: Network = "::/0".parse().unwrap();
        assert!(all.contains(ip("2001:db8::5")));
    }

    #[test]
    fn quiet_says_once_per_interval_and_stays_bounded() {
        let q = Quiet::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(q.allow(ip("192.0.2.1"), "full", t0));
        assert!(!q.allow(ip("192.0.2.1"), "full", t0 + Duration::from_secs(5)));
        assert!(q.allow(ip("192.0.2.1"), "per_address", t0));
        assert!(q.allow(ip("192.0.2.1"), "full", t0 + Duration::from_secs(11)));
        for i in 0..(MAX_QUIET as u32 + 10) {
            q.allow(IpAddr::V4(i.into()), "full", t0);
        }
        assert!(q.seen.lock().unwrap().len() <= MAX_QUIET);
    }
}

/// Bytes an address may send at once, all its connections together, before its connections
/// are read more slowly: a page load with its files and the WebSocket's hello, many times over.
pub const READ_BURST: f64 = 64.0 * 1024.0;
/// Bytes a second an address is read at, sustained, until one of its connections proves to
/// be a booth console, floor feed or engineer: a delegate sends a few dozen bytes a second
/// (a ping, a channel switch). Bounds what any traffic below the level of whole messages can
/// cost the relay (WebSocket frames of a message that never ends, pings before `hello`):
/// it is read at this pace, and waits in the client's own socket.
pub const READ_RATE: f64 = 16.0 * 1024.0;
/// A paced read waits until this much may be read, not byte by byte.
const READ_GRANT: f64 = 512.0;

/// A token bucket of bytes, shared by an address's connections.
#[derive(Debug)]
pub struct ReadBudget {
    tokens: f64,
    last: Instant,
}

impl Default for ReadBudget {
    fn default() -> ReadBudget {
        ReadBudget {
            tokens: READ_BURST,
            last: Instant::now(),
        }
    }
}

impl ReadBudget {
    /// Bytes that may be read now, or how long until [`READ_GRANT`] may.
    fn allowed(&mut self, now: Instant) -> Result<usize, Duration> {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * READ_RATE;
        self.tokens = (self.tokens + refill).min(READ_BURST);
        self.last = now;
        if self.tokens >= READ_GRANT {
            Ok(self.tokens as usize)
        } else {
            Err(Duration::from_secs_f64(
                (READ_GRANT - self.tokens) / READ_RATE,
            ))
        }
    }
}

/// A connection's socket read within its address's [`ReadBudget`] ([`READ_BURST`] at once,
/// [`READ_RATE`] a second), writes untouched. Once the connection is a booth console, floor
/// feed or engineer ([`Ticket::sender`]) it is read freely.
pub struct Paced<IO> {
    io: IO,
    read: Option<Arc<Mutex<ReadBudget>>>,
    unpaced: Arc<std::sync::atomic::AtomicBool>,
    gate: Arc<Gate>,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Paced<IO> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future;
        use std::task::Poll;
        let this = self.get_mut();
        let budget = match &this.read {
            Some(b) if !this.unpaced.load(Ordering::Relaxed) => b.clone(),
            _ => return std::pin::Pin::new(&mut this.io).poll_read(cx, buf),
        };
        let allowed = loop {
            let now = Instant::now();
            match budget
                .lock()
                .expect("read budget lock poisoned")
                .allowed(now)
            {
                Ok(n) => break n,
                Err(wait) => {
                    let deadline = tokio::time::Instant::from_std(now + wait);
                    match &mut this.sleep {
                        Some(s) => s.as_mut().reset(deadline),
                        None => this.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                    let sleep = this.sleep.as_mut().expect("set above");
                    if sleep.as_mut().poll(cx).is_pending() {
                        this.gate
                            .counters
                            .paced_reads
                            .fetch_add(1, Ordering::Relaxed);
                        return Poll::Pending;
                    }
                }
            }
        };
        let mut part = buf.take(allowed.min(buf.remaining()));
        let start = part.filled().as_ptr();
        match std::pin::Pin::new(&mut this.io).poll_read(cx, &mut part) {
            Poll::Ready(Ok(())) => {
                debug_assert_eq!(start, part.filled().as_ptr());
                let n = part.filled().len();
                // SAFETY: `part` is the unfilled part of `buf`, and the `n` bytes read into it
                // are initialised (as in tokio's own `Take`).
                unsafe { buf.assume_init(n) };
                buf.advance(n);
                budget.lock().expect("read budget lock poisoned").tokens -= n as f64;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Paced<IO> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
