//! Several relays as one event, joined through NATS (`serve --cluster URL --node NAME`).
//!
//! One node at a time decides for the whole event: the holder of a lease in NATS JetStream's
//! key-value store (bucket `boothcast-lease`, key `decider`, a time-to-live of [`LEASE_TTL`],
//! renewed with compare-and-set every [`RENEW_EVERY`]). The decider runs the rules
//! (`rules.rs`) for every console and floor feed of the cluster and is the one place that
//! stamps channel frames, so a channel's sequence numbers stay gap-free cluster-wide.
//!
//! What crosses NATS (core subjects, no persistence):
//! - `boothcast.lead`: from any node to the decider: a sender's frames (`F`) and its hello,
//!   commands and departure (`C`, JSON [`ToLeader`]). One subject, so one node's messages
//!   reach the decider in the order sent.
//! - `boothcast.ch.N`: channel N's stamped frames from the decider; a node subscribes only
//!   while it has receivers of channel N (listeners, consoles hearing it, a recording) or
//!   any engineer (whose level meters show every channel), so a frame crosses once per node
//!   with someone hearing or watching it.
//! - `boothcast.node.P`: the decider's messages for the sessions of node P (`console`,
//!   notices, refusals), JSON [`ToNode`].
//! - `boothcast.channels`: the channel list, from the decider, on change and every second.
//! - `boothcast.decider`: the decider's announcement ([`Announce`], every [`RENEW_EVERY`]):
//!   a node that sees a new decider reports its consoles and floors ([`ToLeader::Sync`]) so
//!   that consoles live before stay live.
//! - `boothcast.nodes`: each node's heartbeat ([`NodeState`], every second): its address,
//!   health and listeners per channel (the audience is summed over the nodes heard from
//!   within [`NODE_STALE`]).
//! - `boothcast.log`, `boothcast.health`: each node's own event-log entries, as logged, and
//!   its senders' connection health, every second; every node's engineers get the merged log
//!   and health, each entry and sender tagged with its node (`merged.rs`).
//!
//! JetStream key-value (memory storage) holds only what must be agreed on: the lease, the
//! event's fingerprint (`boothcast-event`: channels, booths and hashes of the secrets, never
//! the secrets; a node whose event differs is refused at start) and each node's session
//! prefix (`boothcast-nodes`), which makes session numbers unique across the cluster.
//!
//! Recording runs on one node at a time (`recording.rs`): the node that records holds a
//! claim in `boothcast-record`, and moving the recording asks the holder to stop first. The
//! engineer sees every node, its health and listeners (`view.rs`).
//!
//! When NATS cannot be reached for longer than the lease, a node decides for its own
//! consoles and listeners alone ("isolated": said in the log, the event log and `/metrics`)
//! and follows the cluster again once NATS is back.

mod auth;
mod merged;
mod recording;
mod view;

pub use auth::{redact, Credentials, PASSWORD_ENV, TOKEN_ENV, USER_ENV};

pub use recording::{
    RECORD_MARGIN, RECORD_RENEW, RECORD_TTL, TAKEOVER_GIVEN_UP_AFTER, TAKEOVER_OTHERS_AFTER,
};

use crate::config::Event;
use crate::protocol::{ConsoleState, LogKind, SenderHealth, ServerMessage};
use crate::relay::{Outbound, Relay};
use crate::rules::{Command, Session};
use async_nats::jetstream::kv;
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Notify};

/// How long the decider's lease lasts without renewal. A decider that dies is replaced within
/// about this plus [`RENEW_EVERY`] (under the 3 s the event can bear); a NATS hiccup shorter
/// than it changes nothing.
pub const LEASE_TTL: Duration = Duration::from_millis(1500);
/// How often the decider renews its lease (and the others try to take it).
pub const RENEW_EVERY: Duration = Duration::from_millis(250);
/// The decider stops deciding this long before its lease runs out at the NATS server, so it
/// has stopped before another can take over (clocks run at the same rate; their offsets do
/// not matter: both ends count from their own sending of the renewal).
pub const LEASE_MARGIN: Duration = Duration::from_millis(300);
/// A node not heard from for this long is left out of the audience and the node list.
pub const NODE_STALE: Duration = Duration::from_secs(3);
/// Most relay addresses a `welcome` lists (a cluster has a handful of nodes).
pub const MAX_RELAYS: usize = 16;
/// Messages waiting to be handed to the NATS client; past this they are dropped and counted
/// (the relay never waits for NATS).
pub const OUT_QUEUE: usize = 4096;
/// Frames a channel subscription holds for this node before NATS drops them (5 s at 20 ms).
const CHANNEL_SUB_CAPACITY: usize = 256;
/// Highest frame rate of one channel (one 2.5 ms frame after another): a node that takes over
/// moves each channel's numbering on by this rate times the time since it last knew it, so
/// no number is used twice.
const MAX_FRAMES_PER_SECOND: u64 = 400;
/// How long the fingerprint and node prefixes stay in NATS after the last node refreshed them.
const REGISTRY_TTL: Duration = Duration::from_secs(30);
/// Lease requests in a row left unanswered (each [`RENEW_EVERY`]) before the bucket's handle
/// is made again.
const UNANSWERED_BEFORE_REOPEN: u32 = 4;
/// How long a node's name stays claimed after it last said it is alive (every second): a
/// node that died frees its name this soon, so it can be started again at once.
const NAME_TTL: Duration = Duration::from_secs(3);
/// How long a starting node waits for its name to be freed before it is refused.
const NAME_WAIT: Duration = Duration::from_secs(4);

const LEAD: &str = "boothcast.lead";
const CHANNELS: &str = "boothcast.channels";
const DECIDER: &str = "boothcast.decider";
const NODES: &str = "boothcast.nodes";

/// Errors of joining a cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot reach NATS at {servers}: {reason}")]
    Connect { servers: String, reason: String },
    #[error("NATS JetStream at {servers}: {reason} (start nats-server with -js)")]
    JetStream { servers: String, reason: String },
    #[error("this node's event differs from the cluster's: {0}")]
    EventDiffers(String),
    #[error("NATS credentials: {0}")]
    Credentials(String),
    #[error("bad node name {0:?}: 1 to 32 of a-z, A-Z, 0-9, - and _")]
    BadNode(String),
    #[error(
        "a node named {0:?} is already in the cluster: give each node its own --node name \
         (a node that died frees its name within 3 s)"
    )]
    NameTaken(String),
}

/// How to join.
#[derive(Debug, Clone)]
pub struct Options {
    /// NATS servers, `nats://HOST:PORT`, each possibly with `USER:PASSWORD@` or `TOKEN@`
    /// before the host (the same on every URL; taken out and given to the client, never
    /// shown).
    pub servers: Vec<String>,
    /// Credentials given apart from the URLs ([`Credentials::from_env`]); refused beside
    /// credentials in the URLs.
    pub credentials: Option<Credentials>,
    /// This node's name, unique in the cluster.
    pub node: String,
    /// The address clients reach this node at (`ws://…` or `wss://…`), told to the others.
    pub public_url: String,
}

/// Which kind of sender a forwarded frame is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Console,
    Floor,
}

/// A console as reported to a new decider: who it is and its state as last decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleSync {
    pub session: Session,
    pub booth: usize,
    pub name: String,
    pub live: Option<u16>,
    pub input: u16,
    pub cough: bool,
}

/// A console command, as it crosses to the decider.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WireCommand {
    Live(Option<u16>),
    Mute,
    Cough(bool),
    Handover,
    Accept,
    Input(u16),
}

/// What a node tells the decider.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ToLeader {
    Console {
        session: Session,
        booth: usize,
        name: String,
    },
    Floor {
        session: Session,
        room: usize,
    },
    Command {
        session: Session,
        cmd: WireCommand,
    },
    ForceMute {
        booth: String,
        console: String,
    },
    Gone {
        session: Session,
        reason: Option<String>,
    },
    /// A node's senders, after it saw a new decider (`epoch`).
    Sync {
        epoch: u64,
        node: String,
        consoles: Vec<ConsoleSync>,
        floors: Vec<(Session, usize)>,
        /// The node's next sequence number per channel: after deciding alone for a while
        /// its listeners have heard numbers the decider has not used yet.
        #[serde(default)]
        seqs: Vec<u32>,
    },
}

/// What the decider tells a node about one of its sessions.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum ToNode {
    Message {
        session: Session,
        msg: ServerMessage,
    },
    Console {
        session: Session,
        state: ConsoleState,
        input: u16,
    },
    Close {
        session: Session,
        msg: ServerMessage,
    },
}

/// The decider's announcement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Announce {
    pub node: String,
    /// The lease's revision when taken: a new value means a new decider.
    pub epoch: u64,
    /// Each channel's next sequence number.
    pub seqs: Vec<u32>,
}

/// Each channel's next sequence number as the decider last stored it (key `seqs` of
/// `boothcast-event`, every second), for a node that takes over without having heard any
/// announcement (it started just before the decider died).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSeqs {
    /// When stored, µs since the Unix epoch.
    pub t: u64,
    pub seqs: Vec<u32>,
}

/// Where channel numbering may have reached `ms` milliseconds after it was at `seq`: the
/// highest frame rate times the time, plus one.
fn projected(seq: u32, ms: u64) -> u32 {
    seq.wrapping_add((ms * MAX_FRAMES_PER_SECOND).div_ceil(1000) as u32 + 1)
}

/// Merges numbers stored `age_ms` ago into `known` ((next sequence, when known) per channel):
/// each channel keeps whichever may have reached further by now (wrapping order).
fn merge_stored_seqs(known: &mut [(u32, Instant)], stored: &[u32], age_ms: u64, now: Instant) {
    let at = now
        .checked_sub(Duration::from_millis(age_ms))
        .unwrap_or(now);
    for (k, s) in known.iter_mut().zip(stored) {
        let mine = projected(k.0, now.saturating_duration_since(k.1).as_millis() as u64);
        let theirs = projected(*s, age_ms);
        if (theirs.wrapping_sub(mine) as i32) > 0 {
            *k = (*s, at);
        }
    }
}

/// A node's heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    pub node: String,
    /// Its session prefix: the decider forgets the senders of a node it no longer hears.
    #[serde(default)]
    pub prefix: u16,
    pub url: String,
    pub deciding: bool,
    pub isolated: bool,
    /// Listeners per channel, in the event's channel order.
    pub listeners: Vec<u32>,
    /// The recording this node runs, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<RecordingAt>,
}

/// A node's recording, as its heartbeat tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingAt {
    /// The session directory, on that node's disk.
    pub dir: String,
    /// When it started, milliseconds since the Unix epoch on that node's clock (should two
    /// nodes say they record for a moment while it moves, the later start is shown).
    pub since_ms: u64,
    /// The node whose recording this one took over by itself (that node was lost), if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_over_from: Option<String>,
}

#[derive(Debug, Clone)]
enum LocalSender {
    Console {
        booth: usize,
        name: String,
        live: Option<u16>,
        input: u16,
        cough: bool,
    },
    Floor {
        room: usize,
    },
}

/// Counters of the cluster link, for `/metrics`.
#[derive(Default)]
pub struct Counters {
    pub published: AtomicU64,
    pub dropped: AtomicU64,
    pub received_frames: AtomicU64,
    pub takeovers: AtomicU64,
}

/// This node's link to the cluster. Its methods never wait: what must go to NATS is queued
/// (bounded, [`OUT_QUEUE`]) and sent by a task of its own.
pub struct Link {
    node: String,
    url: String,
    prefix: u16,
    event: Arc<Event>,
    leading: AtomicBool,
    isolated: AtomicBool,
    connected: AtomicBool,
    out: mpsc::Sender<(String, Bytes)>,
    locals: Mutex<HashMap<Session, LocalSender>>,
    interest: Notify,
    /// Other nodes by name: when last heard, and what they said.
    nodes: Mutex<BTreeMap<String, (Instant, NodeState)>>,
    /// The decider's epoch as last seen, and its announced sequences with when they came.
    decider: Mutex<Option<(u64, String)>>,
    known_seqs: Mutex<Vec<(u32, Instant)>>,
    /// Decider: the other nodes' senders it knows, and when each node (by session prefix) was
    /// last heard from. Bounded by the senders an event can have and the nodes of a cluster.
    remote: Mutex<(HashMap<Session, ()>, HashMap<u16, Instant>)>,
    /// The recording this node runs, if any.
    recording: Mutex<Option<RecordingAt>>,
    /// Where the cluster records: this node's part.
    recorder: Arc<recording::Coordinator>,
    /// The nodes as engineers see them (`ServerMessage::Cluster`), once a second.
    view_tx: watch::Sender<Bytes>,
    /// The other nodes' senders' health, by node: when last heard, and what it said
    /// (`merged.rs`).
    peer_health: Mutex<BTreeMap<String, (Instant, Vec<SenderHealth>)>>,
    pub counters: Counters,
}

impl Link {
    /// Whether this node decides for the event now (it holds the lease, or it is cut off
    /// from NATS and decides for its own clients).
    #[inline]
    pub fn leading(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    /// Whether this node is cut off from the cluster.
    pub fn isolated(&self) -> bool {
        self.isolated.load(Ordering::Acquire)
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether this node reaches NATS now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The relay's recorder, which this node records with; `start` (`serve --record`):
    /// record from now on, unless another node of the cluster records already.
    pub fn attach_recorder(
        self: &Arc<Self>,
        relay: &Arc<Relay>,
        recorder: crate::record::Recorder,
        start: bool,
    ) {
        self.recorder.attach(recorder);
        if start {
            self.recorder.request(
                self.clone(),
                relay.clone(),
                None,
                recording::Request::Start { take: false },
            );
        }
    }

    /// An engineer (`session`) asked to start recording on this node (moving it here from the
    /// node that records, if any), or to stop it wherever it runs. Carried out in a task of
    /// its own; a refusal goes to the engineer, the new state to every engineer
    /// (`recording`).
    pub fn record(self: &Arc<Self>, relay: &Arc<Relay>, session: Session, start: bool) {
        let req = if start {
            recording::Request::Start { take: true }
        } else {
            recording::Request::Stop
        };
        self.recorder
            .request(self.clone(), relay.clone(), Some(session), req);
    }

    /// Stops this node's recording, if any (every file closed), and gives up its claim.
    pub async fn stop_recording_here(&self, relay: &Arc<Relay>) {
        self.recorder.shutdown(relay).await;
    }

    /// This node's recorder started (`Some(dir)`) or stopped: the other nodes are told at
    /// once, and this node's engineers where the cluster records.
    /// Logged here, for every node's engineers.
    pub fn local_recording(&self, relay: &Relay, dir: Option<String>) {
        let now = dir.map(|dir| RecordingAt {
            dir,
            since_ms: crate::relay::unix_micros() / 1000,
            taken_over_from: self.recorder.take_over_note(),
        });
        let text = match &now {
            Some(RecordingAt {
                dir,
                taken_over_from: Some(lost),
                ..
            }) => format!(
                "recording on node {} in {dir}, taken over from node {lost}",
                self.node
            ),
            Some(r) => format!("recording on node {} in {}", self.node, r.dir),
            None => format!("recording on node {} stopped", self.node),
        };
        *self.recording.lock().expect("recording lock poisoned") = now;
        self.beat(relay);
        self.refresh_recording(relay);
        relay.log(LogKind::Recording, text);
    }

    /// Tells this node's engineers where the cluster records: this node, or the node heard
    /// within [`NODE_STALE`] that says it does (the latest to start, should two say so).
    fn refresh_recording(&self, relay: &Relay) {
        let mine = self
            .recording
            .lock()
            .expect("recording lock poisoned")
            .clone()
            .map(|r| (r, self.node.clone()));
        let best = {
            let nodes = self.nodes.lock().expect("nodes lock poisoned");
            nodes
                .iter()
                .filter(|(n, (at, _))| **n != self.node && at.elapsed() <= NODE_STALE)
                .filter_map(|(n, (_, s))| s.recording.clone().map(|r| (r, n.clone())))
                .chain(mine)
                .max_by_key(|(r, _)| r.since_ms)
        };
        match best {
            Some((r, node)) => relay.show_recording(Some(r.dir), Some(node), r.taken_over_from),
            None => relay.show_recording(None, None, None),
        }
    }

    /// A node heard from within [`NODE_STALE`] whose heartbeat says it records.
    fn recording_peer(&self) -> Option<String> {
        let nodes = self.nodes.lock().expect("nodes lock poisoned");
        nodes
            .iter()
            .find(|(n, (at, s))| {
                **n != self.node && at.elapsed() <= NODE_STALE && s.recording.is_some()
            })
            .map(|(n, _)| n.clone())
    }

    /// This node's heartbeat, to the others.
    fn beat(&self, relay: &Relay) {
        let state = NodeState {
            node: self.node.clone(),
            prefix: self.prefix,
            url: self.url.clone(),
            deciding: self.leading(),
            isolated: self.isolated(),
            listeners: relay.local_audience().into_iter().map(|(_, n)| n).collect(),
            recording: self
                .recording
                .lock()
                .expect("recording lock poisoned")
                .clone(),
        };
        self.queue(
            NODES.to_string(),
            Bytes::from(serde_json::to_vec(&state).expect("serializable")),
        );
    }

    fn queue(&self, subject: String, payload: Bytes) {
        if self.out.try_send((subject, payload)).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn to_leader(&self, msg: &ToLeader) {
        let mut b = BytesMut::with_capacity(128);
        b.put_u8(b'C');
        b.extend_from_slice(&serde_json::to_vec(msg).expect("serializable"));
        self.queue(LEAD.to_string(), b.freeze());
    }

    pub fn local_console(&self, session: Session, booth: usize, name: &str) {
        let input = self.event.rooms[self
            .event
            .rooms
            .iter()
            .position(|r| r.id == self.event.booths[booth].room)
            .unwrap_or(0)]
        .floor;
        self.locals.lock().expect("locals lock poisoned").insert(
            session,
            LocalSender::Console {
                booth,
                name: name.to_string(),
                live: None,
                input,
                cough: false,
            },
        );
    }

    pub fn local_floor(&self, session: Session, room: usize) {
        self.locals
            .lock()
            .expect("locals lock poisoned")
            .insert(session, LocalSender::Floor { room });
    }

    pub fn local_gone(&self, session: Session) {
        self.locals
            .lock()
            .expect("locals lock poisoned")
            .remove(&session);
    }

    /// A console state was sent to one of this node's consoles: remembered, so that a new
    /// decider can be told it.
    pub fn observe(&self, session: Session, state: &ConsoleState, input: u16) {
        if let Some(LocalSender::Console {
            live,
            input: i,
            cough,
            ..
        }) = self
            .locals
            .lock()
            .expect("locals lock poisoned")
            .get_mut(&session)
        {
            *live = state
                .live
                .as_deref()
                .and_then(|c| self.event.resolve_channel(c));
            *i = input;
            *cough = state.cough;
        }
    }

    pub fn forward_console(&self, session: Session, booth: usize, name: &str) {
        self.to_leader(&ToLeader::Console {
            session,
            booth,
            name: name.to_string(),
        });
    }

    pub fn forward_floor(&self, session: Session, room: usize) {
        self.to_leader(&ToLeader::Floor { session, room });
    }

    pub fn forward_command(&self, session: Session, cmd: &Command) {
        let cmd = match *cmd {
            Command::Live(c) => WireCommand::Live(c),
            Command::Mute => WireCommand::Mute,
            Command::Cough(d) => WireCommand::Cough(d),
            Command::Handover => WireCommand::Handover,
            Command::Accept => WireCommand::Accept,
            Command::Input(c) => WireCommand::Input(c),
        };
        self.to_leader(&ToLeader::Command { session, cmd });
    }

    pub fn forward_force_mute(&self, booth: &str, console: &str) {
        self.to_leader(&ToLeader::ForceMute {
            booth: booth.to_string(),
            console: console.to_string(),
        });
    }

    pub fn forward_gone(&self, session: Session, reason: Option<&str>) {
        self.to_leader(&ToLeader::Gone {
            session,
            reason: reason.map(str::to_string),
        });
    }

    /// A sender's frame, checked here, for the decider: `F`, kind, session, frame.
    pub fn forward_frame(&self, kind: FrameKind, session: Session, frame: &[u8]) {
        let mut b = BytesMut::with_capacity(10 + frame.len());
        b.put_u8(b'F');
        b.put_u8(match kind {
            FrameKind::Console => b'c',
            FrameKind::Floor => b'f',
        });
        b.put_u64(session);
        b.extend_from_slice(frame);
        self.queue(LEAD.to_string(), b.freeze());
    }

    /// A frame stamped here, for the other nodes' receivers of `channel`.
    pub fn publish_frame(&self, channel: u16, frame: &Bytes) {
        if self.isolated() {
            return;
        }
        self.queue(format!("boothcast.ch.{channel}"), frame.clone());
    }

    /// A message for a session of another node.
    pub fn deliver(&self, session: Session, msg: Outbound) {
        let prefix = (session >> SESSION_BITS) as u16;
        if prefix == self.prefix || self.isolated() {
            return;
        }
        let msg = match msg {
            Outbound::Message(m) => ToNode::Message { session, msg: *m },
            Outbound::Console(state, input) => ToNode::Console {
                session,
                state: *state,
                input,
            },
            Outbound::Close(m) => ToNode::Close { session, msg: *m },
        };
        self.queue(
            format!("boothcast.node.{prefix}"),
            Bytes::from(serde_json::to_vec(&msg).expect("serializable")),
        );
    }

    /// Someone started hearing a channel here: the subscriptions are looked at now.
    pub fn interest_changed(&self) {
        self.interest.notify_one();
    }

    /// The audience over the cluster: this node's counts plus those the other nodes sent
    /// within [`NODE_STALE`].
    pub fn audience(&self, local: Vec<(String, u32)>) -> Vec<(String, u32)> {
        let nodes = self.nodes.lock().expect("nodes lock poisoned");
        let mut out = local;
        for (name, (at, state)) in nodes.iter() {
            if *name == self.node || at.elapsed() > NODE_STALE {
                continue;
            }
            for (i, n) in state.listeners.iter().enumerate() {
                if let Some(o) = out.get_mut(i) {
                    o.1 += n;
                }
            }
        }
        out
    }

    /// The other nodes heard from recently, by name.
    pub fn peers(&self) -> Vec<NodeState> {
        let nodes = self.nodes.lock().expect("nodes lock poisoned");
        nodes
            .iter()
            .filter(|(n, (at, _))| **n != self.node && at.elapsed() <= NODE_STALE)
            .map(|(_, (_, s))| s.clone())
            .collect()
    }

    /// The public addresses of the live nodes (this one's first, then the others heard from
    /// within [`NODE_STALE`] by name), as told in `welcome`: at most [`MAX_RELAYS`].
    pub fn relays(&self) -> Vec<String> {
        let mut out = vec![self.url.clone()];
        for s in self.peers() {
            if out.len() >= MAX_RELAYS {
                break;
            }
            if !s.url.is_empty() && !out.contains(&s.url) {
                out.push(s.url);
            }
        }
        out
    }

    /// The node with session prefix `prefix` was heard from now.
    fn heard(&self, prefix: u16) {
        let mut r = self.remote.lock().expect("remote lock poisoned");
        if r.1.len() < 1024 || r.1.contains_key(&prefix) {
            r.1.insert(prefix, Instant::now());
        }
    }

    /// Decider: a sender of another node is known.
    fn remote_sender(&self, session: Session) {
        self.heard((session >> SESSION_BITS) as u16);
        let mut r = self.remote.lock().expect("remote lock poisoned");
        if r.0.len() < 65_536 {
            r.0.insert(session, ());
        }
    }

    /// Decider: the senders of nodes not heard from within [`NODE_STALE`] (their node died
    /// without saying goodbye), forgotten here.
    fn orphans(&self) -> Vec<Session> {
        let mut r = self.remote.lock().expect("remote lock poisoned");
        let (senders, seen) = &mut *r;
        let gone: Vec<Session> = senders
            .keys()
            .copied()
            .filter(|s| {
                seen.get(&((s >> SESSION_BITS) as u16))
                    .is_none_or(|t| t.elapsed() > NODE_STALE)
            })
            .collect();
        for s in &gone {
            senders.remove(s);
        }
        gone
    }

    fn sync_report(&self, epoch: u64) -> ToLeader {
        let locals = self.locals.lock().expect("locals lock poisoned");
        let mut consoles = Vec::new();
        let mut floors = Vec::new();
        for (s, l) in locals.iter() {
            match l {
                LocalSender::Console {
                    booth,
                    name,
                    live,
                    input,
                    cough,
                } => consoles.push(ConsoleSync {
                    session: *s,
                    booth: *booth,
                    name: name.clone(),
                    live: *live,
                    input: *input,
                    cough: *cough,
                }),
                LocalSender::Floor { room } => floors.push((*s, *room)),
            }
        }
        // Live consoles first: they are put back before anyone else can take their channel.
        consoles.sort_by_key(|c| (c.live.is_none(), c.session));
        ToLeader::Sync {
            epoch,
            node: self.node.clone(),
            consoles,
            floors,
            seqs: Vec::new(),
        }
    }
}

/// Session numbers of a node: its prefix above this many bits.
pub const SESSION_BITS: u32 = 40;

/// What identifies an event across nodes: its channels, booths and hashes of its secrets.
pub fn fingerprint(event: &Event) -> BTreeMap<String, String> {
    let hash = |s: &str| -> String {
        let d = ring::digest::digest(
            &ring::digest::SHA256,
            format!("boothcast:{}:{s}", event.name).as_bytes(),
        );
        d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
    };
    let mut f = BTreeMap::new();
    f.insert("name".into(), event.name.clone());
    f.insert(
        "listener_delay_ms".into(),
        event.listener_delay_ms.to_string(),
    );
    f.insert(
        "rooms".into(),
        event
            .rooms
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>()
            .join(","),
    );
    f.insert(
        "channels".into(),
        event
            .channels
            .iter()
            .map(|c| c.id.as_str())
            .collect::<Vec<_>>()
            .join(","),
    );
    for c in &event.channels {
        f.insert(
            format!("channel {}", c.id),
            format!(
                "auto_floor={} hold={}ms takeover={}",
                c.auto_floor,
                c.hold.as_millis(),
                c.takeover
            ),
        );
    }
    f.insert(
        "booths".into(),
        event
            .booths
            .iter()
            .map(|b| b.id.as_str())
            .collect::<Vec<_>>()
            .join(","),
    );
    for b in &event.booths {
        let langs: Vec<&str> = b
            .channels
            .iter()
            .map(|c| event.channels[*c as usize].id.as_str())
            .collect();
        f.insert(
            format!("booth {}", b.id),
            format!("room={} languages={}", b.room, langs.join(",")),
        );
        f.insert(format!("secret of booth {}", b.id), hash(&b.secret));
    }
    f.insert("floor secret".into(), hash(&event.floor_secret));
    f.insert("engineer secret".into(), hash(&event.engineer_secret));
    f.insert(
        "access code".into(),
        event.access_code.as_deref().map(hash).unwrap_or_default(),
    );
    f
}

/// What differs between this node's fingerprint and the cluster's, one item per field
/// (secrets are named, never shown), or `None` when they agree.
pub fn differences(
    here: &BTreeMap<String, String>,
    cluster: &BTreeMap<String, String>,
) -> Option<String> {
    let mut out = Vec::new();
    for (k, v) in here {
        match cluster.get(k) {
            None => out.push(format!("{k}: only on this node")),
            Some(c) if c != v && (k.contains("secret") || k == "access code") => {
                out.push(format!("{k} differs"))
            }
            Some(c) if c != v => out.push(format!("{k}: {v:?} here, {c:?} in the cluster")),
            _ => {}
        }
    }
    for k in cluster.keys() {
        if !here.contains_key(k) {
            out.push(format!("{k}: only in the cluster"));
        }
    }
    (!out.is_empty()).then(|| out.join("; "))
}

/// The NATS client as the relay uses it. Settings chosen:
/// - reconnect at once, then every 100 ms more up to 500 ms (the library waits up to 4 s):
///   NATS is on the venue's LAN, and a node back within the lease keeps everything as it was;
/// - a ping every second (library: 60 s), so a dead path to NATS is noticed in about 2 s, not
///   minutes;
/// - 1 s to connect (library: 5 s);
/// - no explicit flush per message: the client writes each message as soon as its queue
///   drains and flushes the socket whenever it has nothing more to write, so a lone frame is
///   not held back; calling `flush` per frame would add a round trip to the server.
async fn connect(options: &Options) -> Result<async_nats::Client, Error> {
    let servers = auth::shown(&options.servers);
    let (urls, creds) = auth::split(&options.servers, options.credentials.clone())?;
    let mut connect = async_nats::ConnectOptions::new();
    if let Some(c) = &creds {
        connect = c.apply(connect);
    }
    connect
        .name(format!("boothcast {}", options.node))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(100 * attempts.saturating_sub(1).min(5) as u64)
        })
        .ping_interval(Duration::from_secs(1))
        .connection_timeout(Duration::from_secs(1))
        .request_timeout(Some(Duration::from_secs(1)))
        .subscription_capacity(CHANNEL_SUB_CAPACITY)
        .client_capacity(OUT_QUEUE)
        .connect(urls.as_slice())
        .await
        .map_err(|e| Error::Connect {
            servers,
            reason: auth::scrub(&e.to_string(), creds.as_ref()),
        })
}

/// A key-value bucket in memory whose entries live `ttl` after their last write, made as the
/// stream a key-value bucket is (the client's own `create_key_value` reads account fields
/// that NATS servers before 2.10 do not send).
async fn bucket(
    js: &async_nats::jetstream::Context,
    name: &str,
    ttl: Duration,
) -> Result<kv::Store, async_nats::Error> {
    use async_nats::jetstream::stream;
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age: ttl,
        storage: stream::StorageType::Memory,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    })
    .await?;
    Ok(js.get_key_value(name).await?)
}

fn valid_node(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Joins `relay` to the cluster: connects to NATS, checks the event against the cluster's,
/// takes a session prefix, and starts the link's tasks. Returns once the node serves as part
/// of the cluster.
///
/// # Errors
/// [`Error::Credentials`] when the URLs' credentials disagree (or are given twice),
/// [`Error::Connect`] when NATS cannot be reached (or refuses the credentials: `authorization
/// violation`), [`Error::JetStream`] when its key-value
/// store cannot be used, [`Error::EventDiffers`] (saying what differs) when the cluster
/// serves another event, [`Error::BadNode`] for a node name that is not an id.
pub async fn join(relay: Arc<Relay>, options: Options) -> Result<Arc<Link>, Error> {
    if !valid_node(&options.node) {
        return Err(Error::BadNode(options.node));
    }
    // Shown in errors and logs: credentials replaced by `***`.
    let servers = auth::shown(&options.servers);
    let js_err = |e: &dyn std::fmt::Display| Error::JetStream {
        servers: servers.clone(),
        reason: e.to_string(),
    };
    let client = connect(&options).await?;
    let mut js = async_nats::jetstream::new(client.clone());
    js.set_timeout(Duration::from_secs(1));
    let event_kv = bucket(&js, "boothcast-event", REGISTRY_TTL)
        .await
        .map_err(|e| js_err(&e))?;
    let nodes_kv = bucket(&js, "boothcast-nodes", REGISTRY_TTL)
        .await
        .map_err(|e| js_err(&e))?;
    let lease_kv = bucket(&js, "boothcast-lease", LEASE_TTL)
        .await
        .map_err(|e| js_err(&e))?;

    // The event: the first node's fingerprint is the cluster's.
    let event = relay.event().clone();
    let mine = fingerprint(&event);
    let mine_json = Bytes::from(serde_json::to_vec(&mine).expect("serializable"));
    match event_kv.create("fingerprint", mine_json.clone()).await {
        Ok(_) => {}
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            let theirs = event_kv
                .get("fingerprint")
                .await
                .map_err(|e| js_err(&e))?
                .unwrap_or_default();
            let theirs: BTreeMap<String, String> =
                serde_json::from_slice(&theirs).unwrap_or_default();
            if let Some(d) = differences(&mine, &theirs) {
                return Err(Error::EventDiffers(d));
            }
        }
        Err(e) => return Err(js_err(&e)),
    }

    // The node's name, held by one live process at a time.
    let names_kv = bucket(&js, "boothcast-names", NAME_TTL)
        .await
        .map_err(|e| js_err(&e))?;
    let instance = Bytes::from(format!("{:016x}", rand::random::<u64>()));
    let asked = Instant::now();
    loop {
        match names_kv.create(&options.node, instance.clone()).await {
            Ok(_) => break,
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                if asked.elapsed() >= NAME_WAIT {
                    return Err(Error::NameTaken(options.node));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(js_err(&e)),
        }
    }
    drop(names_kv);

    // A session prefix no other live node has.
    let mut prefix = 0u16;
    for _ in 0..64 {
        let p = rand::random::<u16>().max(1);
        match nodes_kv
            .create(format!("prefix-{p}"), Bytes::from(options.node.clone()))
            .await
        {
            Ok(_) => {
                prefix = p;
                break;
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => continue,
            Err(e) => return Err(js_err(&e)),
        }
    }
    if prefix == 0 {
        return Err(js_err(&"no free session prefix"));
    }

    let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
    let recorder = Arc::new(recording::Coordinator::new(client.clone()));
    let link = Arc::new(Link {
        node: options.node.clone(),
        url: options.public_url.clone(),
        prefix,
        event: event.clone(),
        leading: AtomicBool::new(false),
        isolated: AtomicBool::new(false),
        connected: AtomicBool::new(true),
        out: out_tx,
        locals: Mutex::new(HashMap::new()),
        interest: Notify::new(),
        nodes: Mutex::new(BTreeMap::new()),
        decider: Mutex::new(None),
        known_seqs: Mutex::new(vec![(0, Instant::now()); event.channels.len()]),
        remote: Mutex::new((HashMap::new(), HashMap::new())),
        recording: Mutex::new(None),
        recorder: recorder.clone(),
        view_tx: watch::channel(Bytes::new()).0,
        peer_health: Mutex::new(BTreeMap::new()),
        counters: Counters::default(),
    });
    relay.set_cluster(link.clone(), ((prefix as u64) << SESSION_BITS) | 1);

    tokio::spawn(publisher(client.clone(), link.clone(), out_rx));
    tokio::spawn(node_inbox(client.clone(), relay.clone(), prefix));
    tokio::spawn(state_inbox(client.clone(), relay.clone(), link.clone()));
    tokio::spawn(interest(client.clone(), relay.clone(), link.clone()));
    tokio::spawn(merged::inbox(client.clone(), relay.clone(), link.clone()));
    drop((event_kv, nodes_kv));
    tokio::spawn(heartbeat(
        client.clone(),
        relay.clone(),
        link.clone(),
        (mine_json, instance),
        prefix,
    ));
    drop(lease_kv);
    tokio::spawn(recording::renew(
        recorder.clone(),
        relay.clone(),
        link.clone(),
    ));
    tokio::spawn(recording::inbox(recorder, relay.clone(), link.clone()));
    tokio::spawn(lease(client, relay, link.clone()));
    tracing::info!(node = %options.node, nats = %servers, prefix, "joined the cluster");
    Ok(link)
}

/// Hands queued messages to the NATS client, in order.
async fn publisher(
    client: async_nats::Client,
    link: Arc<Link>,
    mut rx: mpsc::Receiver<(String, Bytes)>,
) {
    while let Some((subject, payload)) = rx.recv().await {
        // While NATS is away the client would keep messages for after the reconnect: stale
        // frames and commands then. They are dropped instead.
        if !matches!(
            client.connection_state(),
            async_nats::connection::State::Connected
        ) {
            link.counters.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        match client.publish(subject, payload).await {
            Ok(()) => link.counters.published.fetch_add(1, Ordering::Relaxed),
            Err(_) => link.counters.dropped.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// The decider's messages for this node's sessions.
async fn node_inbox(client: async_nats::Client, relay: Arc<Relay>, prefix: u16) {
    use futures_util::StreamExt;
    let Ok(mut sub) = client.subscribe(format!("boothcast.node.{prefix}")).await else {
        tracing::error!("cannot subscribe to this node's subject");
        return;
    };
    while let Some(m) = sub.next().await {
        let Ok(msg) = serde_json::from_slice::<ToNode>(&m.payload) else {
            continue;
        };
        match msg {
            ToNode::Message { session, msg } => {
                relay.deliver_local(session, Outbound::Message(Box::new(msg)))
            }
            ToNode::Console {
                session,
                state,
                input,
            } => relay.deliver_local(session, Outbound::Console(Box::new(state), input)),
            ToNode::Close { session, msg } => {
                relay.deliver_local(session, Outbound::Close(Box::new(msg)))
            }
        }
    }
}

/// The channel list, the decider's announcements and the other nodes' heartbeats.
async fn state_inbox(client: async_nats::Client, relay: Arc<Relay>, link: Arc<Link>) {
    use futures_util::StreamExt;
    let (Ok(channels), Ok(decider), Ok(nodes)) = (
        client.subscribe(CHANNELS).await,
        client.subscribe(DECIDER).await,
        client.subscribe(NODES).await,
    ) else {
        tracing::error!("cannot subscribe to the cluster's state");
        return;
    };
    let mut all =
        futures_util::stream::select(futures_util::stream::select(channels, decider), nodes);
    while let Some(m) = all.next().await {
        match m.subject.as_str() {
            CHANNELS => {
                if !link.leading() {
                    relay.set_channels_json(m.payload);
                }
            }
            DECIDER => {
                let Ok(a) = serde_json::from_slice::<Announce>(&m.payload) else {
                    continue;
                };
                let now = Instant::now();
                {
                    let mut known = link.known_seqs.lock().expect("seqs lock poisoned");
                    for (k, s) in known.iter_mut().zip(&a.seqs) {
                        *k = (*s, now);
                    }
                }
                if a.node == link.node || link.leading() {
                    continue;
                }
                let new = {
                    let mut d = link.decider.lock().expect("decider lock poisoned");
                    let new = d.as_ref().map(|(e, _)| *e) != Some(a.epoch);
                    *d = Some((a.epoch, a.node.clone()));
                    new
                };
                if new {
                    tracing::info!(decider = %a.node, epoch = a.epoch, "the cluster's decider");
                    let mut sync = link.sync_report(a.epoch);
                    if let ToLeader::Sync { seqs, .. } = &mut sync {
                        *seqs = relay.next_sequences();
                    }
                    link.to_leader(&sync);
                }
            }
            _ => {
                let Ok(s) = serde_json::from_slice::<NodeState>(&m.payload) else {
                    continue;
                };
                link.heard(s.prefix);
                let recording_changed = {
                    let mut nodes = link.nodes.lock().expect("nodes lock poisoned");
                    // Bounded: names of nodes not heard from for a while are forgotten.
                    nodes.retain(|_, (at, _)| at.elapsed() < NODE_STALE * 10);
                    let before = nodes.get(&s.node).map(|(_, old)| old.recording.clone());
                    let changed = before != Some(s.recording.clone());
                    if nodes.len() < 256 || nodes.contains_key(&s.node) {
                        nodes.insert(s.node.clone(), (Instant::now(), s));
                    }
                    changed
                };
                if recording_changed {
                    link.refresh_recording(&relay);
                }
            }
        }
    }
}

/// Keeps a NATS subscription to each channel that has receivers here while another node
/// decides, and none otherwise. While an engineer is connected here every channel has one:
/// engineers watch every channel's level meter, which this node computes from the frames it
/// receives.
async fn interest(client: async_nats::Client, relay: Arc<Relay>, link: Arc<Link>) {
    let n = relay.event().channels.len();
    let mut subs: Vec<Option<tokio::task::JoinHandle<()>>> = (0..n).map(|_| None).collect();
    loop {
        // Woken by a new receiver or engineer; those that leave are noticed within 200 ms.
        let _ = tokio::time::timeout(Duration::from_millis(200), link.interest.notified()).await;
        let leading = link.leading();
        let engineers = link.engineers() > 0;
        for (i, sub) in subs.iter_mut().enumerate() {
            if sub.as_ref().is_some_and(|h| h.is_finished()) {
                *sub = None;
            }
            let want = !leading && (engineers || relay.fanout(i as u16).receivers() > 0);
            match (want, sub.is_some()) {
                (true, false) => {
                    let Ok(s) = client.subscribe(format!("boothcast.ch.{i}")).await else {
                        continue;
                    };
                    *sub = Some(tokio::spawn(channel_frames(
                        s,
                        relay.clone(),
                        link.clone(),
                        i as u16,
                    )));
                }
                (false, true) => {
                    if let Some(h) = sub.take() {
                        // Dropping the subscriber in the aborted task unsubscribes.
                        h.abort();
                    }
                }
                _ => {}
            }
        }
    }
}

async fn channel_frames(
    mut sub: async_nats::Subscriber,
    relay: Arc<Relay>,
    link: Arc<Link>,
    channel: u16,
) {
    use futures_util::StreamExt;
    while let Some(m) = sub.next().await {
        if link.leading() {
            continue;
        }
        link.counters
            .received_frames
            .fetch_add(1, Ordering::Relaxed);
        relay.inject_frame(channel, m.payload);
    }
}

/// Once a second: this node's state to the others, and the event fingerprint and session
/// prefix kept alive in NATS.
async fn heartbeat(
    client: async_nats::Client,
    relay: Arc<Relay>,
    link: Arc<Link>,
    (fingerprint, instance): (Bytes, Bytes),
    prefix: u16,
) {
    let js = async_nats::jetstream::new(client);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    loop {
        tick.tick().await;
        n += 1;
        link.beat(&relay);
        link.publish_health(&relay);
        // A recording node gone silent no longer records, as far as engineers here can tell.
        link.refresh_recording(&relay);
        link.publish_view(&relay);
        if !link.isolated() {
            // The name, claimed again every second (made again if NATS came back without it);
            // the decider's channel numbers, for a node that takes over without having heard it.
            let seqs = link.leading().then(|| StoredSeqs {
                t: crate::relay::unix_micros(),
                seqs: relay.next_sequences(),
            });
            let _ = tokio::time::timeout(Duration::from_millis(900), async {
                if let Ok(kv) = bucket(&js, "boothcast-names", NAME_TTL).await {
                    let _ = kv.put(&link.node, instance.clone()).await;
                }
                if let Some(seqs) = seqs {
                    if let Ok(kv) = bucket(&js, "boothcast-event", REGISTRY_TTL).await {
                        let json = serde_json::to_vec(&seqs).expect("serializable");
                        let _ = kv.put("seqs", Bytes::from(json)).await;
                    }
                }
            })
            .await;
        }
        if n.is_multiple_of(5) && !link.isolated() {
            // Made again if NATS came back without them (memory storage).
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                if let Ok(kv) = bucket(&js, "boothcast-event", REGISTRY_TTL).await {
                    let _ = kv.put("fingerprint", fingerprint.clone()).await;
                }
                if let Ok(kv) = bucket(&js, "boothcast-nodes", REGISTRY_TTL).await {
                    let _ = kv
                        .put(format!("prefix-{prefix}"), Bytes::from(link.node.clone()))
                        .await;
                }
            })
            .await;
        }
    }
}

/// The lease: taken when free, renewed while held, given up when it cannot be renewed.
/// While held, this node consumes `boothcast.lead` and announces itself.
async fn lease(client: async_nats::Client, relay: Arc<Relay>, link: Arc<Link>) {
    let mut js = async_nats::jetstream::new(client.clone());
    js.set_timeout(RENEW_EVERY);
    let mut kv: Option<kv::Store> = None;
    let mut last_bucket_try: Option<Instant> = None;
    let me = Bytes::from(link.node.clone());
    let mut held: Option<(u64, u64, Instant)> = None; // (revision, epoch, until)
    let mut unanswered = 0u32;
    let mut lead_task: Option<tokio::task::JoinHandle<()>> = None;
    let mut channels = relay.channels_watch();
    let mut last_channels = Instant::now();
    let mut tick = tokio::time::interval(RENEW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let up = matches!(
            client.connection_state(),
            async_nats::connection::State::Connected
        );
        link.connected.store(up, Ordering::Relaxed);
        // The bucket is made again when NATS came back without it (memory storage).
        if up
            && kv.is_none()
            && last_bucket_try.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            last_bucket_try = Some(Instant::now());
            kv = bucket(&js, "boothcast-lease", LEASE_TTL).await.ok();
        }
        let sent = Instant::now();
        if let Some((rev, epoch, until)) = held {
            let r = match &kv {
                Some(kv) => {
                    tokio::time::timeout(RENEW_EVERY, kv.update("decider", me.clone(), rev))
                        .await
                        .map_err(|_| ())
                }
                None => Err(()),
            };
            // Why the lease is lost, as far as this node can tell.
            let mut why = "";
            match r {
                Ok(Ok(new)) => held = Some((new, epoch, sent + LEASE_TTL - LEASE_MARGIN)),
                Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    held = None;
                    why = "it ran out or another node took it";
                }
                Ok(Err(_)) if Instant::now() >= until => {
                    held = None;
                    kv = None;
                    why = "NATS refused the renewal";
                }
                _ if Instant::now() >= until => {
                    held = None;
                    why = if up {
                        "NATS did not answer the renewal in time"
                    } else {
                        "NATS unreachable"
                    };
                }
                _ => {}
            }
            if held.is_none() {
                tracing::warn!(node = %link.node, "lost the lease ({why}): no longer deciding");
                if let Some(t) = lead_task.take() {
                    t.abort();
                }
                link.leading.store(false, Ordering::Release);
                link.interest_changed();
            }
        } else if let (true, Some(store)) = (up, &kv) {
            let created =
                tokio::time::timeout(RENEW_EVERY, store.create("decider", me.clone())).await;
            if created.is_ok() {
                unanswered = 0;
            }
            match created {
                Ok(Ok(rev)) => {
                    if link.isolated.swap(false, Ordering::AcqRel) {
                        tracing::info!(node = %link.node, "NATS is back");
                    }
                    held = Some((rev, rev, sent + LEASE_TTL - LEASE_MARGIN));
                    learn_stored_seqs(&js, &link).await;
                    take_over(&relay, &link, rev);
                    lead_task = Some(tokio::spawn(lead(
                        client.clone(),
                        relay.clone(),
                        link.clone(),
                        rev,
                    )));
                }
                Ok(Err(e)) if e.kind() != kv::CreateErrorKind::AlreadyExists => {
                    // Not "taken": the bucket may be gone (NATS restarted).
                    kv = None;
                }
                Err(_) => {
                    // No answer: a slow moment, or the bucket is gone with a NATS server that
                    // restarted (memory storage), where a request waits for nobody. After a
                    // second of silence the handle is made again, and the bucket with it;
                    // keeping it would leave every node following a decider that no longer
                    // exists.
                    unanswered += 1;
                    if unanswered >= UNANSWERED_BEFORE_REOPEN {
                        unanswered = 0;
                        kv = None;
                    }
                }
                Ok(Err(_)) => {
                    if link.isolated.swap(false, Ordering::AcqRel) {
                        tracing::info!(node = %link.node, "NATS is back: following the cluster");
                        relay.log(
                            LogKind::Connect,
                            format!("node {} rejoined the cluster", link.node),
                        );
                        // A new sync goes to the decider on its next announcement.
                        *link.decider.lock().expect("decider lock poisoned") = None;
                    }
                    link.leading.store(false, Ordering::Release);
                    link.interest_changed();
                }
            }
        }
        // Cut off, and not (or no longer) holding the lease: decide alone for this node's
        // clients at once, so a booth and listeners on this node keep hearing each other.
        if held.is_none() && !up && !link.isolated.load(Ordering::Acquire) {
            link.isolated.store(true, Ordering::Release);
            tracing::warn!(node = %link.node, "NATS unreachable: serving this node's own booths and listeners alone");
            relay.log(
                LogKind::Disconnect,
                format!(
                    "node {} cannot reach NATS: it serves its own booths and listeners alone",
                    link.node
                ),
            );
            take_over(&relay, &link, 0);
        }
        if let Some((_, epoch, _)) = held {
            for s in link.orphans() {
                relay.unregister_because(s, Some("its relay node is gone"));
            }
            let announce = Announce {
                node: link.node.clone(),
                epoch,
                seqs: relay.next_sequences(),
            };
            link.queue(
                DECIDER.to_string(),
                Bytes::from(serde_json::to_vec(&announce).expect("serializable")),
            );
            let changed = channels.has_changed().unwrap_or(false);
            if changed || last_channels.elapsed() >= Duration::from_secs(1) {
                let json = channels.borrow_and_update().clone();
                link.queue(CHANNELS.to_string(), json);
                last_channels = Instant::now();
            }
        }
    }
}

/// Reads the numbers the last decider stored, so that a node that never heard it still
/// numbers every channel on from where it may have reached. Skipped when NATS does not answer
/// within [`RENEW_EVERY`].
async fn learn_stored_seqs(js: &async_nats::jetstream::Context, link: &Link) {
    let read = async {
        let kv = bucket(js, "boothcast-event", REGISTRY_TTL).await.ok()?;
        let v = kv.get("seqs").await.ok()??;
        serde_json::from_slice::<StoredSeqs>(&v).ok()
    };
    let Ok(Some(stored)) = tokio::time::timeout(RENEW_EVERY, read).await else {
        return;
    };
    let age_ms = crate::relay::unix_micros().saturating_sub(stored.t) / 1000;
    let mut known = link.known_seqs.lock().expect("seqs lock poisoned");
    merge_stored_seqs(&mut known, &stored.seqs, age_ms, Instant::now());
}

/// This node starts deciding: its rules are rebuilt from its own senders (the others report
/// theirs when they see the announcement), and every channel's numbering moves on past
/// anything the previous decider may have used.
fn take_over(relay: &Arc<Relay>, link: &Arc<Link>, epoch: u64) {
    link.counters.takeovers.fetch_add(1, Ordering::Relaxed);
    {
        let known = link.known_seqs.lock().expect("seqs lock poisoned");
        for (i, (seq, at)) in known.iter().enumerate() {
            relay.advance_sequence(i as u16, projected(*seq, at.elapsed().as_millis() as u64));
        }
    }
    let ToLeader::Sync {
        consoles, floors, ..
    } = link.sync_report(epoch)
    else {
        unreachable!("sync_report makes a sync")
    };
    link.leading.store(true, Ordering::Release);
    link.interest_changed();
    relay.restore(true, &consoles, &floors);
    tracing::info!(node = %link.node, epoch, "deciding for the event");
    if epoch > 0 {
        relay.log(
            LogKind::Connect,
            format!("node {} decides for the event", link.node),
        );
    }
}

/// The decider's side of `boothcast.lead`: the other nodes' senders.
async fn lead(client: async_nats::Client, relay: Arc<Relay>, link: Arc<Link>, epoch: u64) {
    use futures_util::StreamExt;
    let Ok(mut sub) = client.subscribe(LEAD).await else {
        tracing::error!("cannot subscribe to the decider's subject");
        return;
    };
    while let Some(m) = sub.next().await {
        if !link.leading() {
            continue;
        }
        let p = &m.payload;
        match p.first() {
            Some(b'F') if p.len() > 10 => {
                let session = u64::from_be_bytes(p[2..10].try_into().expect("8 bytes"));
                let frame = &p[10..];
                let _ = match p[1] {
                    b'c' => relay.console_frame(session, frame),
                    _ => relay.floor_frame(session, frame),
                };
            }
            Some(b'C') => {
                let Ok(msg) = serde_json::from_slice::<ToLeader>(&p[1..]) else {
                    continue;
                };
                handle(&relay, &link, epoch, msg);
            }
            _ => {}
        }
    }
}

fn handle(relay: &Arc<Relay>, link: &Arc<Link>, epoch: u64, msg: ToLeader) {
    match msg {
        ToLeader::Console {
            session,
            booth,
            name,
        } => {
            if booth >= relay.event().booths.len() {
                return;
            }
            link.remote_sender(session);
            relay.sender_connected(
                session,
                &format!("{}/{name}", relay.event().booths[booth].id),
            );
            if let Err(r) = relay.console_connect(session, booth, &name) {
                relay.close_session(session, r);
            }
        }
        ToLeader::Floor { session, room } => {
            if room < relay.event().rooms.len() {
                link.remote_sender(session);
                relay.sender_connected(session, "floor");
                relay.floor_connect(session, room);
            }
        }
        ToLeader::Command { session, cmd } => {
            let cmd = match cmd {
                WireCommand::Live(c) => Command::Live(c),
                WireCommand::Mute => Command::Mute,
                WireCommand::Cough(d) => Command::Cough(d),
                WireCommand::Handover => Command::Handover,
                WireCommand::Accept => Command::Accept,
                WireCommand::Input(c) => Command::Input(c),
            };
            let bad = match cmd {
                Command::Live(Some(c)) | Command::Input(c) => {
                    c as usize >= relay.event().channels.len()
                }
                _ => false,
            };
            if bad {
                return;
            }
            if let Err(r) = relay.command(session, cmd) {
                relay.notify(session, r);
            }
        }
        ToLeader::ForceMute { booth, console } => {
            let _ = relay.force_mute(&booth, &console);
        }
        ToLeader::Gone { session, .. } => {
            link.remote
                .lock()
                .expect("remote lock poisoned")
                .0
                .remove(&session);
            // Its own node logged its departure, with the reason.
            relay.unregister_because(session, None);
        }
        ToLeader::Sync {
            epoch: e,
            node,
            consoles,
            floors,
            seqs,
        } => {
            if e != epoch || node == link.node {
                return;
            }
            for (i, s) in seqs.iter().enumerate().take(relay.event().channels.len()) {
                relay.advance_sequence(i as u16, *s);
            }
            for s in consoles
                .iter()
                .map(|c| c.session)
                .chain(floors.iter().map(|f| f.0))
            {
                link.remote_sender(s);
            }
            for c in &consoles {
                if c.booth < relay.event().booths.len() {
                    relay.sender_connected(
                        c.session,
                        &format!("{}/{}", relay.event().booths[c.booth].id, c.name),
                    );
                }
            }
            for (s, _) in &floors {
                relay.sender_connected(*s, "floor");
            }
            relay.restore(false, &consoles, &floors);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_decider_numbers_on_from_what_the_last_one_stored() {
        // A node started 1 s ago that never heard the decider: its own guess is 401 frames on
        // from 0; the decider stored 20,585 half a second ago.
        let now = Instant::now();
        let started = now - Duration::from_secs(1);
        let mut known = vec![(0, started), (0, started)];
        merge_stored_seqs(&mut known, &[20_585, 3], 500, now);
        assert_eq!(known[0].0, 20_585);
        let age = now.duration_since(known[0].1).as_millis() as u64;
        assert_eq!(projected(known[0].0, age), 20_585 + 201);
        // Where the node's own knowledge reaches further, it is kept.
        assert_eq!(known[1], (0, started));
        // Across the wrap of the 32-bit numbering.
        let mut known = vec![(u32::MAX - 10, now)];
        merge_stored_seqs(&mut known, &[5], 0, now);
        assert_eq!(known[0].0, 5);
    }

    #[test]
    fn same_event_has_no_differences() {
        let e = Event::default_event();
        assert_eq!(differences(&fingerprint(&e), &fingerprint(&e)), None);
    }

    #[test]
    fn a_different_secret_is_named_not_shown() {
        let a = Event::default_event();
        let mut b = a.clone();
        b.booths[0].secret = "another-secret".into();
        let d = differences(&fingerprint(&b), &fingerprint(&a)).expect("differs");
        assert!(d.contains(&format!("secret of booth {} differs", a.booths[0].id)));
        assert!(!d.contains("another-secret"));
    }

    #[test]
    fn a_different_hold_says_both_values() {
        let a = Event::default_event();
        let mut b = a.clone();
        let i = b.channels.iter().position(|c| !c.is_floor).unwrap();
        b.channels[i].hold = Duration::from_millis(2000);
        let d = differences(&fingerprint(&b), &fingerprint(&a)).expect("differs");
        assert!(d.contains("hold=2000ms"), "{d}");
        assert!(d.contains("in the cluster"), "{d}");
    }
}
