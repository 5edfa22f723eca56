//! The fan-out: one broadcast queue per channel, shared by every listener of it.
//!
//! A frame from a booth or the floor is checked, handed to the rules (`rules.rs`) to decide
//! which channels it goes to, given its channel's header once per channel (not per listener)
//! and put on that channel's queue as one `Bytes`. Each listener task keeps its own read
//! position in the queue; the producer never waits for anyone (see `server.rs` for how a
//! listener that lags skips ahead to live).
//!
//! The relay does not decode audio: it reads the Opus table-of-contents byte only to refuse a
//! packet that is not Opus or lasts longer than 60 ms.

use crate::config::Event;
use crate::protocol::{
    ConsoleState, FrameError, FrameHeader, LogEntry, LogKind, ServerMessage, Source, HEADER_LEN,
};
use crate::rules::{Action, Command, Refusal, Rules, Session};
use bytes::Bytes;
use dashmap::DashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, watch, Notify};

/// Frames each channel's queue holds. A listener further behind than this has lost frames
/// and is moved on to live. 64 frames is 1.28 s at 20 ms frames: a relaxed listener, written
/// every 200 ms, rides out a late tick within it; a live one is moved on at 8 frames anyway.
pub const CHANNEL_QUEUE: usize = 64;
/// Control messages queued for one connection; past this the connection is too slow to be
/// told anything and is closed.
pub const SESSION_QUEUE: usize = 64;
/// A channel's level meter falls to silence when no frame came for this long.
pub const LEVEL_HOLD: Duration = Duration::from_millis(300);
/// Longest Opus packet the relay carries, in samples at 48 kHz (60 ms, the longest frame).
pub const MAX_PACKET_SAMPLES: usize = 2880;

/// Microseconds since the Unix epoch, the clock of frame headers.
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// What the relay asks a connection task to do. Boxed payloads keep the queue's slots small:
/// every connection has a queue, and its memory is allocated a block of slots at a time.
#[derive(Debug)]
pub enum Outbound {
    /// Send this message.
    Message(Box<ServerMessage>),
    /// The console's state changed: send it and hear the (possibly new) input channel.
    Console(Box<ConsoleState>, u16),
    /// Send this error and close.
    Close(Box<ServerMessage>),
}

/// One channel's queue and counters.
pub struct Fanout {
    tx: broadcast::Sender<Bytes>,
    /// Next outbound sequence number, and who sent from which number on. The lock also keeps
    /// frames of one channel in sequence order on the queue when two sources meet at a
    /// handover.
    seq: Mutex<Sequence>,
    pub listeners: AtomicU32,
    /// The last frame's levels as sent by its booth or floor: RMS << 8 | peak (-dBFS bytes).
    level: AtomicU32,
    /// When the last frame came, microseconds since the epoch (levels go quiet after it).
    level_at_us: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_delivered: AtomicU64,
    pub frames_skipped: AtomicU64,
    /// Delegates written by the channel's writers rather than by their own tasks.
    pub direct: crate::direct::Channel,
}

/// A channel's outbound sequence numbers and the senders behind them.
#[derive(Default)]
struct Sequence {
    next: u32,
    /// The sequence number of the frame the channel's queue gets next, as far as anyone can
    /// know: one past the last frame put on it (its own, or one the deciding node stamped).
    expected: u32,
    /// (first sequence number, sending session) of the latest [`SENDER_CHANGES`] senders.
    senders: VecDeque<(u32, Session)>,
}

/// Sender changes remembered per channel, for [`Relay::sender_of`]. A recording reads a
/// frame within the channel's queue of [`CHANNEL_QUEUE`] frames of its sending; more changes
/// than this within that many frames (a handover every frame) is not a real channel.
pub const SENDER_CHANGES: usize = 16;

impl Fanout {
    /// Puts a frame on the channel's queue and gives it to its writers; `seq` is the
    /// channel's sequence lock, held across both so that a delegate joining a writer sees
    /// every frame either on its queue or through the writer.
    fn publish(&self, seq: &mut Sequence, frame: Bytes) {
        seq.expected = crate::direct::sequence(&frame).wrapping_add(1);
        self.direct.publish(&frame);
        // No receiver is not an error: a channel nobody listens to still runs.
        let _ = self.tx.send(frame);
    }

    /// Makes a delegate hearing this channel through `rx` a member of one of its writers,
    /// if nothing is waiting on `rx` for it (it is caught up); true if it joined.
    pub fn join_direct(
        &self,
        listener: &crate::direct::Listener,
        rx: &broadcast::Receiver<Bytes>,
    ) -> bool {
        listener.join(&self.direct, || {
            let seq = self.seq.lock().expect("sequence lock poisoned");
            rx.is_empty().then_some(seq.expected)
        })
    }

    /// Frames written to listeners, by their tasks and by the channel's writers.
    pub fn delivered(&self) -> u64 {
        self.frames_delivered.load(Ordering::Relaxed)
            + self.direct.counters.delivered.load(Ordering::Relaxed)
    }

    /// Frames skipped for listeners that fell behind, by their tasks and by the writers.
    pub fn skipped(&self) -> u64 {
        self.frames_skipped.load(Ordering::Relaxed)
            + self.direct.counters.skipped.load(Ordering::Relaxed)
    }

    /// Receivers of the channel's queue now: listeners, engineers, consoles hearing it as
    /// their input, a recording.
    pub fn receivers(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// Relay-wide counters.
#[derive(Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub refused_auth: AtomicU64,
    pub refused_frames: AtomicU64,
    pub refused_messages: AtomicU64,
    /// Control messages that came faster than `server::CONTROL_RATE` and waited their turn.
    pub paced_messages: AtomicU64,
    pub slow_closed: AtomicU64,
    /// Hellos refused because the address must wait after wrong secrets.
    pub refused_attempts: AtomicU64,
    /// WebSocket connections that did not say `hello` in time.
    pub hello_timeouts: AtomicU64,
    /// Connections closed because nothing came from them within their deadline.
    pub dead_paths: AtomicU64,
    pub recording_bytes: AtomicU64,
    pub recording_lost: AtomicU64,
}

/// The relay's end of a connection's control queue.
struct SessionHandle {
    tx: Arc<ControlQueue>,
}

impl SessionHandle {
    /// Queues a message; `Err` when the queue is full (or its connection gone).
    fn try_send(&self, msg: Outbound) -> Result<(), Outbound> {
        let mut q = self.tx.state.lock().expect("control queue lock poisoned");
        if q.receiver_gone || q.messages.len() >= SESSION_QUEUE {
            return Err(msg);
        }
        q.messages.push_back(msg);
        drop(q);
        self.tx.ready.notify_one();
        Ok(())
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        self.tx
            .state
            .lock()
            .expect("control queue lock poisoned")
            .sender_gone = true;
        self.tx.ready.notify_one();
    }
}

/// A connection's control messages from the relay, in order, at most [`SESSION_QUEUE`]; the
/// relay never waits on it. A deque that grows only when a message comes, and a `Notify`:
/// about a hundred bytes a connection, where a Tokio `mpsc` channel takes a kilobyte at once,
/// and a delegate seldom gets a control message at all.
struct ControlQueue {
    state: Mutex<ControlState>,
    ready: Notify,
}

#[derive(Default)]
struct ControlState {
    messages: VecDeque<Outbound>,
    /// The relay dropped the queue: it was full, the connection is too slow.
    sender_gone: bool,
    receiver_gone: bool,
}

/// The connection's end of its control queue (see [`Relay::register`]).
pub struct Controls(Arc<ControlQueue>);

impl Controls {
    /// The next message; `None` once the relay dropped the queue (it was full). Cancel-safe:
    /// a message is taken only when it is returned.
    pub async fn recv(&mut self) -> Option<Outbound> {
        loop {
            {
                let mut q = self.0.state.lock().expect("control queue lock poisoned");
                if let Some(msg) = q.messages.pop_front() {
                    return Some(msg);
                }
                if q.sender_gone {
                    return None;
                }
            }
            // A message queued since the check above left a permit: this returns at once.
            self.0.ready.notified().await;
        }
    }
}

impl Drop for Controls {
    fn drop(&mut self) {
        let mut q = self.0.state.lock().expect("control queue lock poisoned");
        q.receiver_gone = true;
        q.messages.clear();
    }
}

/// Bound on the identities whose reconnects are counted (consoles and floors of an event are
/// far fewer; a client inventing console names cannot grow the map past it).
pub const MAX_SENDER_IDENTITIES: usize = 4096;

/// What the relay measures of one sender's connection.
#[derive(Debug, Default, Clone)]
pub struct Health {
    pub rtt_ms: Option<f64>,
    pub jitter_us: f64,
    pub frames: u64,
    pub lost: u64,
    /// Capture overruns, as the sender reports them.
    pub overruns: u64,
    last: Option<(u32, u64, u64)>,
    /// When its last frame came (monotonic clock).
    pub last_frame: Option<Instant>,
}

impl Health {
    /// A frame with the sender's `sequence` and `capture_us` arrived at `arrival_us`.
    pub fn frame(&mut self, sequence: u32, capture_us: u64, arrival_us: u64) {
        self.frames += 1;
        self.last_frame = Some(Instant::now());
        if let Some((seq, capture, arrival)) = self.last {
            let gap = sequence.wrapping_sub(seq).wrapping_sub(1);
            if gap > 0 && gap < 1 << 16 {
                self.lost += gap as u64;
            }
            // RFC 3550 section 6.4.1: J += (|D| - J) / 16.
            let d = (arrival as i64 - arrival_us as i64) - (capture as i64 - capture_us as i64);
            self.jitter_us += ((d.unsigned_abs() as f64) - self.jitter_us) / 16.0;
        }
        self.last = Some((sequence, capture_us, arrival_us));
    }
}

pub struct Relay {
    event: Arc<Event>,
    rules: Mutex<Rules>,
    channels: Vec<Fanout>,
    sessions: DashMap<Session, SessionHandle>,
    channels_tx: watch::Sender<Bytes>,
    audience_tx: watch::Sender<Bytes>,
    levels_tx: watch::Sender<Bytes>,
    recording_tx: watch::Sender<Bytes>,
    next_session: AtomicU64,
    /// Health of the connected senders, by session: (who, health).
    health: DashMap<Session, (String, Health)>,
    /// Connections so far per sender identity, for the reconnect count.
    connects: DashMap<String, u32>,
    health_tx: watch::Sender<Bytes>,
    /// The latest entries of the event log, oldest first, at most `LOG_KEEP`.
    log: Mutex<VecDeque<LogEntry>>,
    /// Each new log entry, as JSON, to the engineers connected.
    log_tx: broadcast::Sender<Bytes>,
    pub stats: Stats,
    /// The link to the other relays of a cluster (`cluster.rs`); unset on a relay alone.
    cluster: std::sync::OnceLock<Arc<crate::cluster::Link>>,
}

/// Event-log entries kept for an engineer who connects (a show day's worth of going live and
/// handing over fits; older ones are in the recording's index when recording).
pub const LOG_KEEP: usize = 200;
/// New log entries queued for an engineer's connection; one that falls further behind skips.
const LOG_QUEUE: usize = 64;

impl Relay {
    pub fn new(event: Arc<Event>) -> Arc<Relay> {
        let rules = Rules::new(event.clone(), Instant::now());
        let channels = (0..event.channels.len())
            .map(|_| Fanout {
                tx: broadcast::channel(CHANNEL_QUEUE).0,
                seq: Mutex::new(Sequence::default()),
                listeners: AtomicU32::new(0),
                level: AtomicU32::new(0),
                level_at_us: AtomicU64::new(0),
                frames_in: AtomicU64::new(0),
                frames_delivered: AtomicU64::new(0),
                frames_skipped: AtomicU64::new(0),
                direct: crate::direct::Channel::default(),
            })
            .collect();
        let channels_json = Bytes::from(
            ServerMessage::Channels {
                channels: rules.channel_infos(),
            }
            .to_json(),
        );
        Arc::new(Relay {
            channels,
            rules: Mutex::new(rules),
            sessions: DashMap::new(),
            channels_tx: watch::channel(channels_json).0,
            audience_tx: watch::channel(Bytes::new()).0,
            levels_tx: watch::channel(Bytes::new()).0,
            recording_tx: watch::channel(Bytes::from(
                ServerMessage::Recording {
                    active: false,
                    dir: None,
                    node: None,
                    taken_over_from: None,
                }
                .to_json(),
            ))
            .0,
            next_session: AtomicU64::new(1),
            health: DashMap::new(),
            connects: DashMap::new(),
            health_tx: watch::channel(Bytes::new()).0,
            log: Mutex::new(VecDeque::with_capacity(LOG_KEEP)),
            log_tx: broadcast::channel(LOG_QUEUE).0,
            stats: Stats::default(),
            cluster: std::sync::OnceLock::new(),
            event,
        })
    }

    pub fn event(&self) -> &Arc<Event> {
        &self.event
    }

    /// Joins this relay to a cluster: sessions are numbered from `session_base` (unique to
    /// this node), and frames, commands and state go through `link` from now on. Called once,
    /// before serving.
    pub fn set_cluster(&self, link: Arc<crate::cluster::Link>, session_base: u64) {
        self.next_session.store(session_base, Ordering::Relaxed);
        let _ = self.cluster.set(link);
    }

    /// The cluster link, if this relay is part of one.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Link>> {
        self.cluster.get()
    }

    /// The cluster link while another node decides for the event: senders' frames and
    /// commands are forwarded there instead of being decided here.
    fn follower(&self) -> Option<&Arc<crate::cluster::Link>> {
        self.cluster.get().filter(|c| !c.leading())
    }

    pub fn fanout(&self, channel: u16) -> &Fanout {
        &self.channels[channel as usize]
    }

    /// A new connection: its session number and the queue the relay talks to it through.
    pub fn register(&self) -> (Session, Controls) {
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::new(ControlQueue {
            state: Mutex::new(ControlState::default()),
            ready: Notify::new(),
        });
        let rx = Controls(queue.clone());
        self.sessions.insert(session, SessionHandle { tx: queue });
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        (session, rx)
    }

    /// A sender (`booth/console` or `floor/room`) connected as `session`.
    pub fn sender_connected(&self, session: Session, who: &str) {
        if self.connects.len() < MAX_SENDER_IDENTITIES || self.connects.contains_key(who) {
            *self.connects.entry(who.to_string()).or_insert(0) += 1;
        }
        self.health
            .insert(session, (who.to_string(), Health::default()));
        // In a cluster the decider also learns the other nodes' senders: their own node logs
        // them.
        if self.here(session) {
            self.log_about(session, LogKind::Connect, format!("{who} connected"));
        }
    }

    /// Adds an entry to the event log and sends it to the engineers (in a cluster, to every
    /// node's, tagged with this node).
    pub fn log(&self, kind: LogKind, text: String) {
        let node = self.cluster.get().map(|c| c.node().to_string());
        self.log_tagged(node, kind, text);
    }

    /// Whether `session` is connected to this relay (in a cluster, the deciding node also
    /// knows the other nodes' senders).
    fn here(&self, session: Session) -> bool {
        self.cluster.get().is_none_or(|c| c.is_local(session))
    }

    /// An entry about sender `session`: in a cluster, tagged with the node it is connected to.
    fn log_about(&self, session: Session, kind: LogKind, text: String) {
        let node = self.cluster.get().map(|c| c.node_of(session));
        self.log_tagged(node, kind, text);
    }

    fn log_tagged(&self, node: Option<String>, kind: LogKind, text: String) {
        let entry = LogEntry {
            t: unix_micros() / 1000,
            kind,
            text,
            node,
        };
        if let Some(c) = self.cluster.get() {
            c.publish_log(&entry);
        }
        self.keep_log(entry);
    }

    /// An entry another node of the cluster logged: kept and sent to this node's engineers,
    /// never published again.
    pub fn log_remote(&self, entry: LogEntry) {
        self.keep_log(entry);
    }

    fn keep_log(&self, entry: LogEntry) {
        let json = ServerMessage::Log {
            entries: vec![entry.clone()],
        }
        .to_json();
        {
            let mut log = self.log.lock().expect("log lock poisoned");
            if log.len() == LOG_KEEP {
                log.pop_front();
            }
            log.push_back(entry);
        }
        // No engineer connected is not an error.
        let _ = self.log_tx.send(Bytes::from(json));
    }

    /// The log kept so far, and the new entries from now on.
    pub fn log_subscribe(&self) -> (Vec<LogEntry>, broadcast::Receiver<Bytes>) {
        let log = self.log.lock().expect("log lock poisoned");
        // Subscribed under the lock: no entry falls between the snapshot and the queue.
        (log.iter().cloned().collect(), self.log_tx.subscribe())
    }

    /// Who a sender session is (`booth/console`, `floor`), for the log.
    fn who(&self, session: Session) -> String {
        self.health
            .get(&session)
            .map(|h| h.0.clone())
            .unwrap_or_else(|| format!("session {session}"))
    }

    /// Updates a sender's health.
    pub fn health_update(&self, session: Session, f: impl FnOnce(&mut Health)) {
        if let Some(mut h) = self.health.get_mut(&session) {
            f(&mut h.1);
        }
    }

    /// Connection health of every sender, for engineers, once a second.
    pub fn health_watch(&self) -> watch::Receiver<Bytes> {
        self.health_tx.subscribe()
    }

    /// Connection health of this relay's own senders (in a cluster, tagged with this node:
    /// the decider also knows the other nodes' senders, whose own nodes measure them).
    pub fn local_health(&self) -> Vec<crate::protocol::SenderHealth> {
        let node = self.cluster.get().map(|c| c.node().to_string());
        let mut out: Vec<_> = self
            .health
            .iter()
            .filter(|e| self.here(*e.key()))
            .map(|e| {
                let (who, h) = e.value();
                crate::protocol::SenderHealth {
                    who: who.clone(),
                    rtt_ms: h.rtt_ms,
                    jitter_ms: (h.jitter_us / 10.0).round() / 100.0,
                    frames: h.frames,
                    lost: h.lost,
                    overruns: h.overruns,
                    silent_ms: h
                        .last_frame
                        .map(|t| t.elapsed().as_millis().min(u64::MAX as u128) as u64),
                    reconnects: self
                        .connects
                        .get(who)
                        .map(|n| n.saturating_sub(1))
                        .unwrap_or(0),
                    node: node.clone(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.who.cmp(&b.who));
        out
    }

    /// Connections open now.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// A connection ended, for whatever reason.
    pub fn unregister(&self, session: Session) {
        self.unregister_because(session, None)
    }

    /// A connection ended; a sender's entry in the event log says why when it is known
    /// (`no answer for 3 s (path dead)`).
    /// In a cluster, a sender of another node is logged here only with a reason (its node is
    /// gone, so nobody else can): its own node logs its departure.
    pub fn unregister_because(&self, session: Session, reason: Option<&str>) {
        self.sessions.remove(&session);
        if let Some((_, (who, _))) = self.health.remove(&session) {
            let text = match reason {
                Some(r) => format!("{who} disconnected: {r}"),
                None => format!("{who} disconnected"),
            };
            if reason.is_some() || self.here(session) {
                self.log_about(session, LogKind::Disconnect, text);
            }
        }
        if let Some(c) = self.cluster.get() {
            c.local_gone(session);
            if !c.leading() {
                c.forward_gone(session, reason);
                return;
            }
        }
        let now = Instant::now();
        self.with_rules(|rules| Ok(rules.disconnect(session, now)))
            .expect("disconnect never refuses");
    }

    fn with_rules(
        &self,
        f: impl FnOnce(&mut Rules) -> Result<Vec<Action>, Refusal>,
    ) -> Result<(), Refusal> {
        let mut out = Vec::new();
        {
            let mut rules = self.rules.lock().expect("rules lock poisoned");
            let actions = f(&mut rules)?;
            self.plan(&rules, actions, &mut out);
        }
        for (session, msg) in out {
            self.send(session, msg);
        }
        Ok(())
    }

    /// Turns the rules' actions into messages; runs under the rules lock so the state sent is
    /// the state decided.
    fn plan(&self, rules: &Rules, actions: Vec<Action>, out: &mut Vec<(Session, Outbound)>) {
        for action in actions {
            match action {
                // While another node decides, the channel list is the one it publishes.
                Action::ChannelsChanged if self.follower().is_some() => {}
                Action::ChannelsChanged => {
                    let json = ServerMessage::Channels {
                        channels: rules.channel_infos(),
                    }
                    .to_json();
                    self.channels_tx.send_replace(Bytes::from(json));
                }
                Action::ConsoleChanged(s) => {
                    if let (Some(state), Some(input)) =
                        (rules.console_state(s), rules.console_input(s))
                    {
                        out.push((s, Outbound::Console(Box::new(state), input)));
                    }
                }
                Action::HandoverOffered { to, from } => {
                    for s in to {
                        out.push((
                            s,
                            Outbound::Message(Box::new(ServerMessage::HandoverOffered {
                                from: from.clone(),
                            })),
                        ));
                    }
                }
                Action::Notify(s, r) => out.push((
                    s,
                    Outbound::Message(Box::new(ServerMessage::error(r.code, r.message, false))),
                )),
                Action::Close(s, r) => out.push((
                    s,
                    Outbound::Close(Box::new(ServerMessage::error(r.code, r.message, true))),
                )),
            }
        }
    }

    fn send(&self, session: Session, msg: Outbound) {
        if let Some(c) = self.cluster.get() {
            if !self.sessions.contains_key(&session) {
                // A session of another node: its node delivers it.
                c.deliver(session, msg);
                return;
            }
            if let Outbound::Console(state, input) = &msg {
                c.observe(session, state, *input);
            }
        }
        if let Some(h) = self.sessions.get(&session) {
            // A connection that cannot take a control message within its queue is stuck;
            // its own task notices (the queue closes when it is dropped) and goes.
            if h.try_send(msg).is_err() {
                tracing::warn!(session, "control queue full; the connection is closed");
                drop(h);
                self.sessions.remove(&session);
            }
        }
    }

    pub fn console_connect(
        &self,
        session: Session,
        booth: usize,
        name: &str,
    ) -> Result<(), Refusal> {
        if let Some(c) = self.cluster.get() {
            if self.sessions.contains_key(&session) {
                c.local_console(session, booth, name);
            }
            if !c.leading() {
                c.forward_console(session, booth, name);
                return Ok(());
            }
        }
        let now = Instant::now();
        self.with_rules(|r| r.console_connect(session, booth, name, now))
    }

    pub fn floor_connect(&self, session: Session, room: usize) {
        if let Some(c) = self.cluster.get() {
            if self.sessions.contains_key(&session) {
                c.local_floor(session, room);
            }
            if !c.leading() {
                c.forward_floor(session, room);
                return;
            }
        }
        self.with_rules(|r| Ok(r.floor_connect(session, room)))
            .expect("floor connect never refuses");
    }

    pub fn command(&self, session: Session, cmd: Command) -> Result<(), Refusal> {
        if let Some(c) = self.follower() {
            // The decider answers a refusal as a notice to the console.
            c.forward_command(session, &cmd);
            return Ok(());
        }
        let now = Instant::now();
        let who = self.who(session);
        let mut live = None;
        let mut unchanged = false;
        let result = self.with_rules(|r| {
            let before = r.console_state(session).map(|s| (s.live, s.input));
            let actions = r.command(session, cmd.clone(), now)?;
            let after = r.console_state(session).map(|s| (s.live, s.input));
            unchanged = before == after;
            live = after.and_then(|s| s.0);
            Ok(actions)
        });
        let channel_name = |c: u16| self.event.channels[c as usize].id.clone();
        let entry = match (&result, cmd) {
            (Err(r), _) => Some((LogKind::Refused, format!("{who}: {}", r.message))),
            // `live` while live, `mute` while off air, the input already heard: nothing happened.
            (Ok(()), Command::Live(_) | Command::Mute | Command::Input(_)) if unchanged => None,
            (Ok(()), Command::Live(_)) => Some((
                LogKind::Live,
                format!("{who} live on {}", live.as_deref().unwrap_or("?")),
            )),
            (Ok(()), Command::Mute) => Some((LogKind::Mute, format!("{who} off air"))),
            (Ok(()), Command::Handover) => Some((
                LogKind::Handover,
                format!("{who} offers the microphone to its partners"),
            )),
            (Ok(()), Command::Accept) => Some((
                LogKind::Live,
                format!(
                    "{who} took the microphone on {} (handover)",
                    live.as_deref().unwrap_or("?")
                ),
            )),
            (Ok(()), Command::Input(c)) if self.event.channels[c as usize].is_floor => {
                Some((LogKind::Input, format!("{who} hears the floor")))
            }
            (Ok(()), Command::Input(c)) => Some((
                LogKind::Input,
                format!("{who} hears {} (relay)", channel_name(c)),
            )),
            // The cough key goes up and down all day: the channel state shows it.
            (Ok(()), Command::Cough(_)) => None,
        };
        if let Some((kind, text)) = entry {
            self.log_about(session, kind, text);
        }
        result
    }

    pub fn force_mute(&self, booth: &str, console: &str) -> Result<(), Refusal> {
        if let Some(c) = self.follower() {
            c.forward_force_mute(booth, console);
            return Ok(());
        }
        let now = Instant::now();
        let result = self.with_rules(|r| r.force_mute(booth, console, now));
        match &result {
            Ok(()) => self.log(
                LogKind::ForceMute,
                format!("the engineer force-muted {booth}/{console}"),
            ),
            Err(r) => self.log(LogKind::Refused, format!("force-mute: {}", r.message)),
        }
        result
    }

    /// An interpreter frame from a console. Errors say what is wrong with the frame.
    pub fn console_frame(&self, session: Session, frame: &[u8]) -> Result<(), FrameError> {
        let header = self.check_sender_frame(session, frame)?;
        if let Some(c) = self.follower() {
            c.forward_frame(crate::cluster::FrameKind::Console, session, frame);
            return Ok(());
        }
        let channel = self
            .rules
            .lock()
            .expect("rules lock poisoned")
            .console_frame(session);
        if let Some(ch) = channel {
            self.fan_out(
                ch,
                session,
                Source::Interpreter,
                &header,
                &frame[HEADER_LEN..],
            );
        }
        Ok(())
    }

    /// Checks a sender's frame and counts it in the sender's health.
    fn check_sender_frame(
        &self,
        session: Session,
        frame: &[u8],
    ) -> Result<FrameHeader, FrameError> {
        let header = check_frame(frame)?;
        let now = unix_micros();
        self.health_update(session, |h| {
            h.frame(header.sequence, header.capture_us, now)
        });
        Ok(header)
    }

    /// A floor frame from a floor source.
    pub fn floor_frame(&self, session: Session, frame: &[u8]) -> Result<(), FrameError> {
        let header = self.check_sender_frame(session, frame)?;
        if let Some(c) = self.follower() {
            c.forward_frame(crate::cluster::FrameKind::Floor, session, frame);
            return Ok(());
        }
        let mut actions = Vec::new();
        let mut out = Vec::new();
        let targets = {
            let mut rules = self.rules.lock().expect("rules lock poisoned");
            let targets = rules.floor_frame(session, Instant::now(), &mut actions);
            self.plan(&rules, actions, &mut out);
            targets
        };
        for (s, m) in out {
            self.send(s, m);
        }
        for ch in targets {
            self.fan_out(ch, session, Source::Floor, &header, &frame[HEADER_LEN..]);
        }
        Ok(())
    }

    /// Stamps the frame for `channel` and puts it on the channel's queue: one allocation per
    /// channel, shared by every listener. `sender` is the session it came from.
    fn fan_out(
        &self,
        channel: u16,
        sender: Session,
        source: Source,
        from: &FrameHeader,
        opus: &[u8],
    ) {
        let fan = &self.channels[channel as usize];
        fan.frames_in.fetch_add(1, Ordering::Relaxed);
        fan.level
            .store((from.rms as u32) << 8 | from.peak as u32, Ordering::Relaxed);
        fan.level_at_us.store(unix_micros(), Ordering::Relaxed);
        let mut seq = fan.seq.lock().expect("sequence lock poisoned");
        if seq.senders.back().map(|s| s.1) != Some(sender) {
            if seq.senders.len() == SENDER_CHANGES {
                seq.senders.pop_front();
            }
            let next = seq.next;
            seq.senders.push_back((next, sender));
        }
        let frame = FrameHeader {
            source,
            channel,
            sequence: seq.next,
            capture_us: from.capture_us,
            relay_us: unix_micros(),
            rms: from.rms,
            peak: from.peak,
        }
        .frame(opus);
        seq.next = seq.next.wrapping_add(1);
        if let Some(c) = self.cluster.get() {
            c.publish_frame(channel, &frame);
        }
        fan.publish(&mut seq, frame);
    }

    /// The session that sent `channel`'s frame number `sequence` (a recent one: the last
    /// [`SENDER_CHANGES`] senders are remembered). Recordings place each sender's frames on
    /// that sender's own clock.
    pub fn sender_of(&self, channel: u16, sequence: u32) -> Option<Session> {
        let seq = self.channels[channel as usize]
            .seq
            .lock()
            .expect("sequence lock poisoned");
        // Newest first: the first change at or before `sequence` (modulo wrapping).
        seq.senders
            .iter()
            .rev()
            .find(|(from, _)| sequence.wrapping_sub(*from) < 1 << 31)
            .map(|(_, s)| *s)
    }

    /// A frame stamped by the node deciding for the event, for this node's receivers of
    /// `channel`: put on the channel's queue as it is.
    pub fn inject_frame(&self, channel: u16, frame: Bytes) {
        let Some(fan) = self.channels.get(channel as usize) else {
            return;
        };
        if let Ok(h) = FrameHeader::parse(&frame) {
            fan.level
                .store((h.rms as u32) << 8 | h.peak as u32, Ordering::Relaxed);
            fan.level_at_us.store(unix_micros(), Ordering::Relaxed);
        }
        fan.frames_in.fetch_add(1, Ordering::Relaxed);
        // Its sender is another node's: what this node knew of the channel's senders no
        // longer holds (a recording here places these frames by their arrival).
        let mut seq = fan.seq.lock().expect("sequence lock poisoned");
        seq.senders.clear();
        fan.publish(&mut seq, frame);
    }

    /// The sequence number each channel's next frame gets here.
    pub fn next_sequences(&self) -> Vec<u32> {
        self.channels
            .iter()
            .map(|f| f.seq.lock().expect("sequence lock poisoned").next)
            .collect()
    }

    /// Moves channel `channel`'s next sequence number to `next` (wrapping order: only
    /// forwards), so a node that starts deciding continues every channel's numbering
    /// without repeating a number listeners already had.
    pub fn advance_sequence(&self, channel: u16, next: u32) {
        if let Some(fan) = self.channels.get(channel as usize) {
            let mut seq = fan.seq.lock().expect("sequence lock poisoned");
            if (next.wrapping_sub(seq.next) as i32) > 0 {
                seq.next = next;
            }
        }
    }

    /// Sets the channel list from the node deciding for the event (JSON `channels`).
    pub fn set_channels_json(&self, json: Bytes) {
        self.channels_tx.send_if_modified(|v| {
            let changed = *v != json;
            if changed {
                *v = json;
            }
            changed
        });
    }

    /// Starts deciding for the event afresh (this node took over from another, or lost the
    /// cluster): the rules are replaced by an empty state into which `consoles` and `floors`
    /// are put back with [`Rules::restore_console`]. With `reset` false they are added to the
    /// current state (another node's consoles, reported after a take-over).
    pub fn restore(
        &self,
        reset: bool,
        consoles: &[crate::cluster::ConsoleSync],
        floors: &[(Session, usize)],
    ) {
        let now = Instant::now();
        let mut out = Vec::new();
        {
            let mut rules = self.rules.lock().expect("rules lock poisoned");
            if reset {
                *rules = Rules::new(self.event.clone(), now);
            }
            let mut actions = vec![Action::ChannelsChanged];
            for c in consoles {
                if rules.console_state(c.session).is_some() || c.booth >= self.event.booths.len() {
                    continue;
                }
                actions.extend(rules.restore_console(
                    c.session,
                    c.booth,
                    &c.name,
                    (c.live, c.input, c.cough),
                    now,
                ));
            }
            for (session, room) in floors {
                if *room < self.event.rooms.len() && rules.floor_session(*room).is_none() {
                    actions.extend(rules.floor_connect(*session, *room));
                }
            }
            actions.extend(rules.tick(now));
            self.plan(&rules, actions, &mut out);
        }
        for (session, msg) in out {
            self.send(session, msg);
        }
    }

    /// Tells a session a command of its was refused (not fatal).
    pub fn notify(&self, session: Session, r: Refusal) {
        self.send(
            session,
            Outbound::Message(Box::new(ServerMessage::error(r.code, r.message, false))),
        );
    }

    /// Closes a session with this refusal.
    pub fn close_session(&self, session: Session, r: Refusal) {
        self.send(
            session,
            Outbound::Close(Box::new(ServerMessage::error(r.code, r.message, true))),
        );
    }

    /// Delivers a message from the deciding node to one of this node's sessions.
    pub fn deliver_local(&self, session: Session, msg: Outbound) {
        if self.sessions.contains_key(&session) {
            self.send(session, msg);
        }
    }

    /// Starts receiving `channel`'s frames; `counted` in its audience until `unsubscribe`.
    pub fn subscribe(&self, channel: u16, counted: bool) -> broadcast::Receiver<Bytes> {
        let fan = &self.channels[channel as usize];
        if counted {
            fan.listeners.fetch_add(1, Ordering::Relaxed);
        }
        let rx = fan.tx.subscribe();
        if let Some(c) = self.cluster.get() {
            c.interest_changed();
        }
        rx
    }

    pub fn unsubscribe(&self, channel: u16, counted: bool) {
        if counted {
            self.channels[channel as usize]
                .listeners
                .fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The channel list, as JSON, updated on every change.
    pub fn channels_watch(&self) -> watch::Receiver<Bytes> {
        self.channels_tx.subscribe()
    }

    /// Listener counts, as JSON, updated at most once a second.
    pub fn audience_watch(&self) -> watch::Receiver<Bytes> {
        self.audience_tx.subscribe()
    }

    /// Level meters of every channel, as JSON, ten times a second while they move.
    pub fn levels_watch(&self) -> watch::Receiver<Bytes> {
        self.levels_tx.subscribe()
    }

    /// Whether a recording runs, as JSON.
    pub fn recording_watch(&self) -> watch::Receiver<Bytes> {
        self.recording_tx.subscribe()
    }

    /// This relay's recorder started (`Some(dir)`) or stopped. Alone, engineers are told at
    /// once; in a cluster, the link tells the other nodes, and engineers learn where the
    /// cluster records ([`Relay::show_recording`]).
    pub fn set_recording(&self, dir: Option<String>) {
        match self.cluster.get() {
            Some(c) => c.local_recording(self, dir),
            None => self.show_recording(dir, None, None),
        }
    }

    /// Tells engineers whether a recording runs, in which directory, on which node of a
    /// cluster (`None` alone), and from which lost node it took the recording over, if it
    /// did; logged when it changes.
    pub fn show_recording(
        &self,
        dir: Option<String>,
        node: Option<String>,
        taken_over_from: Option<String>,
    ) {
        let text = match (&dir, &node, &taken_over_from) {
            (Some(d), None, _) => format!("recording started in {d}"),
            (Some(d), Some(n), None) => format!("recording on node {n} in {d}"),
            (Some(d), Some(n), Some(lost)) => {
                format!("recording on node {n} in {d}, taken over from node {lost}")
            }
            (None, ..) => "recording stopped".to_string(),
        };
        let json = Bytes::from(
            ServerMessage::Recording {
                active: dir.is_some(),
                dir,
                node,
                taken_over_from,
            }
            .to_json(),
        );
        let changed = self.recording_tx.send_if_modified(|now| {
            let changed = *now != json;
            if changed {
                *now = json;
            }
            changed
        });
        // In a cluster the recording node logs its own start and stop, for every node.
        if changed && self.cluster.get().is_none() {
            self.log(LogKind::Recording, text);
        }
    }

    /// Each channel's levels (RMS, peak in -dBFS): those of its last frame, or silence (127)
    /// when no frame came for `LEVEL_HOLD`.
    pub fn levels(&self) -> Vec<(String, u8, u8)> {
        let now = unix_micros();
        self.event
            .channels
            .iter()
            .zip(&self.channels)
            .map(|(c, f)| {
                let fresh = now.saturating_sub(f.level_at_us.load(Ordering::Relaxed))
                    < LEVEL_HOLD.as_micros() as u64;
                let l = f.level.load(Ordering::Relaxed);
                if fresh {
                    (c.id.clone(), (l >> 8) as u8, l as u8)
                } else {
                    (c.id.clone(), 127, 127)
                }
            })
            .collect()
    }

    /// Listener counts by channel id: over the whole cluster when this relay is part of one.
    pub fn audience(&self) -> Vec<(String, u32)> {
        let local = self.local_audience();
        match self.cluster.get() {
            Some(c) => c.audience(local),
            None => local,
        }
    }

    /// Listener counts by channel id on this relay.
    pub fn local_audience(&self) -> Vec<(String, u32)> {
        self.event
            .channels
            .iter()
            .zip(&self.channels)
            .map(|(c, f)| (c.id.clone(), f.listeners.load(Ordering::Relaxed)))
            .collect()
    }

    /// Runs the relay's clocks until `shutdown` fires: hold expiry and level meters (every
    /// 100 ms) and the audience counts (once a second); each published only when it changed.
    pub async fn run_timers(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u64 = 0;
        let mut last_audience = Vec::new();
        let mut last_levels = Vec::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let now = Instant::now();
            self.with_rules(|r| Ok(r.tick(now)))
                .expect("tick never refuses");
            n += 1;
            let levels = self.levels();
            if levels != last_levels {
                let json = ServerMessage::Levels {
                    levels: levels.clone(),
                }
                .to_json();
                self.levels_tx.send_replace(Bytes::from(json));
                last_levels = levels;
            }
            if n.is_multiple_of(10) {
                let senders = match self.cluster.get() {
                    Some(c) => c.health(self.local_health()),
                    None => self.local_health(),
                };
                let json = ServerMessage::Health { senders }.to_json();
                self.health_tx.send_replace(Bytes::from(json));
                let audience = self.audience();
                if audience != last_audience {
                    let json = ServerMessage::Audience {
                        listeners: audience.clone(),
                    }
                    .to_json();
                    self.audience_tx.send_replace(Bytes::from(json));
                    last_audience = audience;
                }
            }
        }
    }

    /// Metrics in the Prometheus text format.
    pub fn metrics(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let per_channel = [
            (
                "boothcast_listeners",
                "gauge",
                "Listeners subscribed to the channel.",
            ),
            (
                "boothcast_frames_in_total",
                "counter",
                "Frames put on the channel's queue.",
            ),
            (
                "boothcast_frames_delivered_total",
                "counter",
                "Frames written to listeners.",
            ),
            (
                "boothcast_frames_skipped_total",
                "counter",
                "Frames skipped for lagging listeners.",
            ),
            (
                "boothcast_direct_listeners",
                "gauge",
                "Delegates the channel's writers send to now (caught up).",
            ),
            (
                "boothcast_direct_handbacks_total",
                "counter",
                "Delegates handed back by a writer to their own task: their socket could not take a whole write.",
            ),
        ];
        for (name, kind, help) in per_channel {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (c, f) in self.event.channels.iter().zip(&self.channels) {
                let v = match name {
                    "boothcast_listeners" => f.listeners.load(Ordering::Relaxed) as u64,
                    "boothcast_frames_in_total" => f.frames_in.load(Ordering::Relaxed),
                    "boothcast_frames_delivered_total" => f.delivered(),
                    "boothcast_frames_skipped_total" => f.skipped(),
                    "boothcast_direct_listeners" => f.direct.members() as u64,
                    _ => f.direct.counters.handed_back.load(Ordering::Relaxed),
                };
                let _ = writeln!(out, "{name}{{channel=\"{}\"}} {v}", c.id);
            }
        }
        let infos = self
            .rules
            .lock()
            .expect("rules lock poisoned")
            .channel_infos();
        let _ = writeln!(
            out,
            "# HELP boothcast_channel_live 1 while an interpreter is live on the channel.\n# TYPE boothcast_channel_live gauge"
        );
        for c in &infos {
            let _ = writeln!(
                out,
                "boothcast_channel_live{{channel=\"{}\"}} {}",
                c.id,
                u8::from(c.live.is_some())
            );
        }
        let senders = self.local_health();
        let per_sender: [SenderMetric; 5] = [
            (
                "boothcast_sender_rtt_seconds",
                "gauge",
                "Round-trip time of the sender's connection (WebSocket ping).",
                |h| h.rtt_ms.map(|ms| ms / 1000.0),
            ),
            (
                "boothcast_sender_jitter_seconds",
                "gauge",
                "Interarrival jitter of the sender's frames (RFC 3550).",
                |h| Some(h.jitter_ms / 1000.0),
            ),
            (
                "boothcast_sender_lost_total",
                "counter",
                "Frames missing from the sender's own sequence.",
                |h| Some(h.lost as f64),
            ),
            (
                "boothcast_sender_overruns_total",
                "counter",
                "Capture overruns the sender reports.",
                |h| Some(h.overruns as f64),
            ),
            (
                "boothcast_sender_reconnects_total",
                "counter",
                "Connections of this console or floor before the current one.",
                |h| Some(h.reconnects as f64),
            ),
        ];
        for (name, kind, help, value) in per_sender {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for h in &senders {
                if let Some(v) = value(h) {
                    let _ = writeln!(out, "{name}{{sender=\"{}\"}} {v}", h.who);
                }
            }
        }
        let global = [
            (
                "boothcast_connections_total",
                &self.stats.connections,
                "WebSocket connections opened.",
            ),
            (
                "boothcast_refused_auth_total",
                &self.stats.refused_auth,
                "Connections refused for a wrong or missing secret.",
            ),
            (
                "boothcast_refused_frames_total",
                &self.stats.refused_frames,
                "Connections closed for a malformed audio frame.",
            ),
            (
                "boothcast_refused_messages_total",
                &self.stats.refused_messages,
                "Connections closed for a malformed control message.",
            ),
            (
                "boothcast_paced_messages_total",
                &self.stats.paced_messages,
                "Control messages read late because their client sent more than 20 a second.",
            ),
            (
                "boothcast_recording_bytes_total",
                &self.stats.recording_bytes,
                "Bytes written to recordings.",
            ),
            (
                "boothcast_recording_lost_total",
                &self.stats.recording_lost,
                "Frames a recording could not keep (disk too slow, or a write failed).",
            ),
            (
                "boothcast_slow_closed_total",
                &self.stats.slow_closed,
                "Connections closed for not reading.",
            ),
            (
                "boothcast_refused_attempts_total",
                &self.stats.refused_attempts,
                "Hellos refused with too_many_attempts: the address must wait after wrong secrets.",
            ),
            (
                "boothcast_hello_timeouts_total",
                &self.stats.hello_timeouts,
                "WebSocket connections closed for not saying hello in time.",
            ),
            (
                "boothcast_dead_paths_total",
                &self.stats.dead_paths,
                "Connections closed because nothing came from them within their deadline.",
            ),
        ];
        for (name, v, help) in global {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        if let Some(c) = self.cluster.get() {
            c.metrics(self, &mut out);
        }
        out
    }
}

/// A per-sender metric: name, type, help, and its value from the sender's health.
type SenderMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&crate::protocol::SenderHealth) -> Option<f64>,
);

/// Validates a frame from a sender: the header, and that the payload is one Opus packet of
/// 2.5 to 60 ms ([`MAX_PACKET_SAMPLES`]), judged from its TOC byte and frame count only (the
/// relay never decodes audio). `frame` is the whole binary message, header first; the packet
/// is `&frame[HEADER_LEN..]`.
///
/// # Errors
/// The [`FrameError`] of [`FrameHeader::parse`] for the header; [`FrameError::Opus`] for a
/// payload that is not an Opus packet, holds no frame or lasts longer than 60 ms.
pub fn check_frame(frame: &[u8]) -> Result<FrameHeader, FrameError> {
    let header = FrameHeader::parse(frame)?;
    match opus::packet::get_nb_samples(&frame[HEADER_LEN..], 48_000) {
        // A code 3 packet may declare zero frames (RFC 6716 forbids it): nothing to play, and
        // nothing the recorder can place in time.
        Ok(0) => Err(FrameError::Opus(
            "the Opus packet holds no frame (a code 3 packet with a frame count of 0)".into(),
        )),
        Ok(n) if n <= MAX_PACKET_SAMPLES => Ok(header),
        Ok(n) => Err(FrameError::Opus(format!(
            "the Opus packet lasts {} ms; at most 60 ms per frame",
            n / 48
        ))),
        Err(e) => Err(FrameError::Opus(format!(
            "the payload is not an Opus packet ({e})"
        ))),
    }
}
