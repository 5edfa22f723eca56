//! Recording in a cluster: one node at a time, wherever the engineer chose, and on another
//! node when that one is lost.
//!
//! The node that records holds a claim: the key `recorder` in the JetStream key-value bucket
//! `boothcast-record` (memory storage, entries gone [`RECORD_TTL`] after their last write),
//! renewed with compare-and-set every [`RECORD_RENEW`]. A node records only while it holds the
//! claim, and stops [`RECORD_MARGIN`] before the claim could run out at the server when it
//! cannot renew it (counted from the sending of its last successful renewal, as the decider's
//! lease is): so a node can take the claim only once the one before it has stopped.
//!
//! Moving the recording: the node asked to record tries `create`; while another node holds
//! the claim, it asks that node (core request/reply on `boothcast.record.NODE`) to let go. The
//! holder stops its recording (every file closed, the index written), deletes the claim and
//! answers; the asking node then creates the claim and starts. A holder that does not answer
//! (gone, or cut off from NATS) stops by itself before its claim runs out, and the asking node
//! takes the claim then: at most [`RECORD_TTL`] later. Stopping from any node asks the holder
//! the same way.
//!
//! Whether the event is to be recorded at all is the key `wanted` of the same bucket: written
//! by a start (naming the node that records), deleted by a stop from any node, and kept alive by
//! the deciding node and the holder (each writes it again with compare-and-set, so a stop is
//! never undone). When the claim is gone while `wanted` stays (the holder was killed, or shut
//! down), the nodes that can record take the recording over: the one whose `create` of the
//! claim succeeds records, in files of its own; the deciding node tries first
//! ([`TAKEOVER_OTHERS_AFTER`]), and a claim given up rather than run out is left a moment
//! ([`TAKEOVER_GIVEN_UP_AFTER`]) to the node it moves to.
//!
//! Which node records is told to every node in the heartbeats (`NodeState::recording`), from
//! which each node tells its engineers (`recording` with `node`, and `taken_over_from` when
//! the recording was taken over).

mod takeover;

use takeover::{read, Missing, Read, Wanted, WANTED};
pub use takeover::{TAKEOVER_GIVEN_UP_AFTER, TAKEOVER_OTHERS_AFTER};

use super::{bucket, Link};
use crate::protocol::{ErrorCode, LogKind};
use crate::record::Recorder;
use crate::relay::Relay;
use crate::rules::{Refusal, Session};
use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How long a recording node's claim lasts without renewal: a node cut off from NATS keeps
/// recording this long less [`RECORD_MARGIN`] (a NATS restart of a few seconds does not cut
/// a recording), and a recording whose node was killed is taken over by another node about
/// this long after the dead node's last renewal: the gap in the recording.
pub const RECORD_TTL: Duration = Duration::from_secs(5);
/// How often the recording node renews its claim.
pub const RECORD_RENEW: Duration = Duration::from_millis(500);
/// A node that cannot renew its claim stops recording this long before the claim could run
/// out at the server.
pub const RECORD_MARGIN: Duration = Duration::from_secs(1);
/// How long a node asked to give up the recording has to stop it and answer (closing the
/// files and writing the index takes milliseconds; a disk that stalls may take longer).
const ASK_TIMEOUT: Duration = Duration::from_secs(3);
/// One key-value operation: NATS is on the venue's network.
const KV_TIMEOUT: Duration = Duration::from_secs(1);
/// Holders asked in turn by one start (each start that moves the recording asks the holder of
/// the moment; several engineers starting on several nodes at once end with the last one).
const MAX_ASKS: usize = 4;

const BUCKET: &str = "boothcast-record";
const KEY: &str = "recorder";
const ASK: &str = "boothcast.record";

/// A request to the recording node: stop, because `to` records from now (`None`: the
/// engineer stopped the recording from node `from`).
#[derive(Debug, Serialize, Deserialize)]
struct Ask {
    from: String,
    #[serde(default)]
    to: Option<String>,
}

/// The recording node's answer, once its files are closed.
#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    stopped: bool,
}

/// What an engineer (or `serve --record` at start) asked of this node.
#[derive(Debug, Clone, Copy)]
pub(super) enum Request {
    /// Record here; `take`: move the recording here from the node that has it (else, when
    /// another node records, leave it there).
    Start { take: bool },
    /// Stop the recording, wherever it runs.
    Stop,
}

#[derive(Default)]
struct State {
    kv: Option<kv::Store>,
    /// The claim held: its revision, and when this node must have stopped recording if it
    /// cannot renew it.
    held: Option<(u64, Instant)>,
    /// The recording stopped because NATS was away: it starts again when NATS is back and no
    /// other node has taken the claim meanwhile.
    resume: bool,
    /// Recording is wanted and nobody holds the claim: since when, as seen here.
    missing: Option<Missing>,
    /// This node's last try to take the recording over failed: not before then again.
    pause_until: Option<Instant>,
    /// When this node (deciding) last wrote `wanted` again.
    wanted_written: Option<Instant>,
}

/// This node's part in choosing where the cluster records.
pub(super) struct Coordinator {
    client: async_nats::Client,
    recorder: OnceLock<Recorder>,
    state: tokio::sync::Mutex<State>,
    /// A request is being carried out: another one from an engineer is refused meanwhile (a
    /// bound on the tasks waiting here).
    busy: AtomicBool,
    /// The node whose recording this node is taking over, for the recording it starts.
    taking_over_from: std::sync::Mutex<Option<String>>,
}

fn refusal(message: String) -> Refusal {
    Refusal {
        code: ErrorCode::Forbidden,
        message,
    }
}

impl Coordinator {
    pub(super) fn new(client: async_nats::Client) -> Coordinator {
        Coordinator {
            client,
            recorder: OnceLock::new(),
            state: tokio::sync::Mutex::new(State::default()),
            busy: AtomicBool::new(false),
            taking_over_from: std::sync::Mutex::new(None),
        }
    }

    /// The node whose recording the one starting here takes over, if it does (read once, as
    /// the recorder says it started).
    pub(super) fn take_over_note(&self) -> Option<String> {
        self.taking_over_from
            .lock()
            .expect("takeover lock poisoned")
            .take()
    }

    /// The relay's recorder, which this node records with (set once, as the relay starts).
    pub(super) fn attach(&self, recorder: Recorder) {
        let _ = self.recorder.set(recorder);
    }

    /// Carries out `req` in a task of its own (moving a recording may wait for another node);
    /// a refusal goes to `session`, the engineer who asked.
    pub(super) fn request(
        self: &Arc<Self>,
        link: Arc<Link>,
        relay: Arc<Relay>,
        session: Option<Session>,
        req: Request,
    ) {
        if self.busy.swap(true, Ordering::AcqRel) {
            if let Some(s) = session {
                relay.notify(
                    s,
                    refusal("a change of the recording is under way on this node: wait for the recording message".into()),
                );
            }
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let r = match req {
                Request::Start { take } => me.start_here(&link, &relay, take).await,
                Request::Stop => me.stop_anywhere(&link, &relay).await,
            };
            me.busy.store(false, Ordering::Release);
            if let Err(r) = r {
                tracing::warn!(node = %link.node, reason = %r.message, "recording request refused");
                match session {
                    Some(s) => relay.notify(s, r),
                    None => relay.log(LogKind::Recording, r.message),
                }
            }
        });
    }

    /// The claim's bucket, made again when NATS came back without it (memory storage).
    async fn store(&self, st: &mut State) -> Option<kv::Store> {
        if st.kv.is_none() {
            let mut js = async_nats::jetstream::new(self.client.clone());
            js.set_timeout(KV_TIMEOUT);
            st.kv = tokio::time::timeout(KV_TIMEOUT * 2, bucket(&js, BUCKET, RECORD_TTL))
                .await
                .ok()
                .and_then(Result::ok);
        }
        st.kv.clone()
    }

    /// The node named in the claim, and the claim's revision; `None` when nobody holds it.
    async fn holder(kv: &kv::Store) -> Option<(String, u64)> {
        match tokio::time::timeout(KV_TIMEOUT, kv.entry(KEY)).await {
            Ok(Ok(Some(e))) if e.operation == kv::Operation::Put => {
                Some((String::from_utf8_lossy(&e.value).into_owned(), e.revision))
            }
            _ => None,
        }
    }

    /// Asks `holder` to stop recording (for `to`, or because the engineer stopped it); true
    /// when it answered, its files closed.
    async fn ask(&self, link: &Link, holder: &str, to: Option<&str>) -> bool {
        let ask = Ask {
            from: link.node.clone(),
            to: to.map(str::to_string),
        };
        let req = async_nats::Request::new()
            .payload(Bytes::from(serde_json::to_vec(&ask).expect("serializable")))
            .timeout(Some(ASK_TIMEOUT));
        match self
            .client
            .send_request(format!("{ASK}.{holder}"), req)
            .await
        {
            Ok(m) => serde_json::from_slice::<Answer>(&m.payload).is_ok(),
            Err(_) => false,
        }
    }

    /// Records on this node: takes the claim (asking the node that holds it to let go when
    /// `take`), then starts the recorder.
    async fn start_here(&self, link: &Link, relay: &Arc<Relay>, take: bool) -> Result<(), Refusal> {
        let recorder = match self.recorder.get() {
            Some(r) if r.can_record() => r,
            _ => {
                return Err(refusal(format!(
                    "recording is not set up on node {}: start it with --record DIR",
                    link.node
                )))
            }
        };
        let mut st = self.state.lock().await;
        if st.held.is_some() {
            return Ok(());
        }
        let deadline = Instant::now() + RECORD_TTL + ASK_TIMEOUT * 2;
        let me = Bytes::from(link.node.clone());
        let mut asked: Vec<String> = Vec::new();
        let mut answered: Vec<String> = Vec::new();
        // A node that says it records without holding the claim and does not answer, and when
        // it was first seen so: it has stopped by `RECORD_TTL` later.
        let mut unanswered: Option<(String, Instant)> = None;
        let mut waiting_for: Option<String> = None;
        let (rev, sent) = loop {
            if !link.connected() {
                return Err(refusal(format!(
                    "node {} cannot reach NATS: a recording starts only where the cluster can be told, so that no two nodes record",
                    link.node
                )));
            }
            let kv = self.store(&mut st).await;
            // Who records: the claim's holder; else a node whose heartbeat says it records
            // (NATS restarted without the claim while that node still records).
            let claim = match &kv {
                Some(kv) => Self::holder(kv).await,
                None => None,
            };
            let holder = match claim {
                Some((node, rev)) => Some((node, Some(rev))),
                None => link
                    .recording_peer()
                    .filter(|n| !answered.contains(n))
                    .map(|n| (n, None)),
            };
            let mut may_create = true;
            match holder {
                // This node's own claim, left from before it restarted: taken back.
                Some((node, Some(rev))) if node == link.node => {
                    if let Some(kv) = &kv {
                        let sent = Instant::now();
                        if let Ok(Ok(rev)) =
                            tokio::time::timeout(KV_TIMEOUT, kv.update(KEY, me.clone(), rev)).await
                        {
                            break (rev, sent);
                        }
                    }
                    may_create = false;
                }
                Some((node, _)) if !take => {
                    tracing::info!(node = %link.node, recorder = %node, "node {node} records already");
                    return Ok(());
                }
                Some((node, claim)) => {
                    if !asked.contains(&node) && asked.len() < MAX_ASKS {
                        asked.push(node.clone());
                        if self.ask(link, &node, Some(&link.node)).await {
                            answered.push(node);
                            continue;
                        }
                        relay.log(
                            LogKind::Recording,
                            format!(
                                "node {node} does not answer: node {} records once that node's claim runs out (within {} s)",
                                link.node,
                                RECORD_TTL.as_secs()
                            ),
                        );
                    }
                    may_create = match claim {
                        // Held: `create` succeeds once it has run out.
                        Some(_) => true,
                        None => match &unanswered {
                            Some((n, since)) if *n == node => since.elapsed() >= RECORD_TTL,
                            _ => {
                                unanswered = Some((node.clone(), Instant::now()));
                                false
                            }
                        },
                    };
                    waiting_for = Some(node);
                }
                None => {}
            }
            if let (true, Some(kv)) = (may_create, &kv) {
                let sent = Instant::now();
                match tokio::time::timeout(KV_TIMEOUT, kv.create(KEY, me.clone())).await {
                    Ok(Ok(rev)) => break (rev, sent),
                    Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                    // Not "taken": the bucket may be gone (NATS restarted).
                    _ => st.kv = None,
                }
            }
            if Instant::now() >= deadline {
                return Err(refusal(match waiting_for {
                    Some(n) => format!("node {n} still holds the recording: try again"),
                    None => "the recording's claim cannot be taken in NATS: try again".into(),
                }));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        st.held = Some((rev, sent + RECORD_TTL - RECORD_MARGIN));
        st.resume = false;
        st.missing = None;
        if let Err(r) = recorder.set(relay, true).await {
            st.held = None;
            if let Some(kv) = &st.kv {
                let _ = tokio::time::timeout(KV_TIMEOUT, kv.delete_expect_revision(KEY, Some(rev)))
                    .await;
            }
            return Err(r);
        }
        // The event is to be recorded, here: if this node is lost, another takes it over.
        if let Some(kv) = &st.kv {
            let _ =
                tokio::time::timeout(KV_TIMEOUT, kv.put(WANTED, Wanted::json(&link.node))).await;
        }
        Ok(())
    }

    /// Stops the recording wherever it runs: here, or by asking the node that holds the claim.
    /// `wanted` is deleted first, so that no node takes the recording over.
    async fn stop_anywhere(&self, link: &Link, relay: &Arc<Relay>) -> Result<(), Refusal> {
        let mut st = self.state.lock().await;
        let kv = if link.connected() {
            self.store(&mut st).await
        } else {
            None
        };
        let cleared = match &kv {
            Some(kv) => matches!(
                tokio::time::timeout(KV_TIMEOUT, kv.delete(WANTED)).await,
                Ok(Ok(()))
            ),
            None => false,
        };
        if self.stop_here(relay, &mut st).await {
            if !cleared {
                tracing::warn!(node = %link.node, "recording stopped without reaching NATS");
                relay.log(
                    LogKind::Recording,
                    format!(
                        "node {} stopped its recording without reaching NATS: the cluster still wants it recorded, and another node takes it over once this node's claim runs out (within {} s); stop it again from a node that reaches NATS",
                        link.node,
                        RECORD_TTL.as_secs()
                    ),
                );
            }
            return Ok(());
        }
        let Some(kv) = kv else {
            return Err(refusal(format!(
                "node {} cannot reach NATS: stop the recording from the node that records",
                link.node
            )));
        };
        if !cleared {
            return Err(refusal(
                "the recording's state in NATS cannot be changed: try again".into(),
            ));
        }
        drop(st);
        match Self::holder(&kv).await {
            Some((node, _)) if node != link.node => {
                if self.ask(link, &node, None).await {
                    Ok(())
                } else {
                    Err(refusal(format!(
                        "node {node} does not answer (gone, or cut off from NATS): no other node takes its recording over; cut off, it stops recording within {} s",
                        (RECORD_TTL - RECORD_MARGIN).as_secs()
                    )))
                }
            }
            _ => Ok(()),
        }
    }

    /// Stops this node's recording, if it runs (every file closed), and gives up the claim.
    /// True when a recording ran here.
    async fn stop_here(&self, relay: &Arc<Relay>, st: &mut State) -> bool {
        let held = st.held.take();
        st.resume = false;
        let Some(recorder) = self.recorder.get() else {
            return false;
        };
        let was = recorder.is_recording().await;
        if was {
            if let Err(r) = recorder.set(relay, false).await {
                relay.log(LogKind::Recording, r.message);
            }
        }
        if let Some((rev, _)) = held {
            // Only this node's own claim is deleted: one that moved on has another revision.
            if let Some(kv) = self.store(st).await {
                let _ = tokio::time::timeout(KV_TIMEOUT, kv.delete_expect_revision(KEY, Some(rev)))
                    .await;
            }
        }
        was
    }

    /// The relay is shutting down: its recording ends properly and its claim is given up.
    pub(super) async fn shutdown(&self, relay: &Arc<Relay>) {
        let mut st = self.state.lock().await;
        self.stop_here(relay, &mut st).await;
    }
}

/// What one renewal of the claim came to.
enum Renewal {
    /// Renewed (or made again after NATS lost it): its new revision.
    Renewed(u64),
    /// Already renewed by a request whose answer was lost: its revision, the deadline unchanged.
    Kept(u64),
    /// Another node holds the claim now.
    Moved(String),
    /// No answer from NATS.
    NoAnswer,
}

impl Coordinator {
    /// One renewal of this node's claim (revision `rev`).
    async fn renew_claim(&self, link: &Link, st: &mut State, rev: u64) -> Renewal {
        let me = Bytes::from(link.node.clone());
        let Some(kv) = self.store(st).await else {
            return Renewal::NoAnswer;
        };
        match tokio::time::timeout(KV_TIMEOUT, kv.update(KEY, me.clone(), rev)).await {
            Ok(Ok(rev)) => Renewal::Renewed(rev),
            Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                match Self::holder(&kv).await {
                    Some((node, _)) if node != link.node => Renewal::Moved(node),
                    Some((_, rev)) => Renewal::Kept(rev),
                    // NATS came back without the claim (memory storage): made again, and
                    // `wanted` with it (unless a stop deleted it meanwhile).
                    None => match tokio::time::timeout(KV_TIMEOUT, kv.create(KEY, me)).await {
                        Ok(Ok(rev)) => {
                            if let Some(Read::Absent) = read(&kv, WANTED).await {
                                let _ = tokio::time::timeout(
                                    KV_TIMEOUT,
                                    kv.create(WANTED, Wanted::json(&link.node)),
                                )
                                .await;
                            }
                            Renewal::Renewed(rev)
                        }
                        _ => Renewal::NoAnswer,
                    },
                }
            }
            Ok(Err(_)) => {
                st.kv = None;
                Renewal::NoAnswer
            }
            Err(_) => Renewal::NoAnswer,
        }
    }

    /// After an outage of NATS that stopped this node's recording: records again unless
    /// another node took the claim, or a stop deleted `wanted`, meanwhile.
    async fn resume(&self, link: &Link, relay: &Arc<Relay>, st: &mut State) {
        let Some(kv) = self.store(st).await else {
            return;
        };
        let wanted = match read(&kv, WANTED).await {
            None => return,
            Some(Read::Deleted) => {
                st.resume = false;
                return;
            }
            Some(w) => w,
        };
        let sent = Instant::now();
        match tokio::time::timeout(KV_TIMEOUT, kv.create(KEY, Bytes::from(link.node.clone()))).await
        {
            Ok(Ok(rev)) => {
                st.held = Some((rev, sent + RECORD_TTL - RECORD_MARGIN));
                st.resume = false;
                let recorder = self.recorder.get().expect("it recorded before");
                if let Err(r) = recorder.set(relay, true).await {
                    st.held = None;
                    let _ =
                        tokio::time::timeout(KV_TIMEOUT, kv.delete_expect_revision(KEY, Some(rev)))
                            .await;
                    relay.log(LogKind::Recording, r.message);
                    return;
                }
                // `wanted` names this node again (made again if NATS lost it).
                let me = Wanted::json(&link.node);
                let _ = tokio::time::timeout(KV_TIMEOUT, async {
                    let _ = match wanted {
                        Read::Put(_, wrev) => kv.update(WANTED, me, wrev).await.is_ok(),
                        _ => kv.create(WANTED, me).await.is_ok(),
                    };
                })
                .await;
            }
            Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => st.resume = false,
            _ => st.kv = None,
        }
    }
}

/// Renews this node's claim while it records; stops recording when the claim went to another
/// node or could not be renewed in time; starts again after an outage of NATS if nobody else
/// took the claim; keeps `wanted` alive while deciding, and takes the recording over when its
/// node is lost ([`Coordinator::watch`]).
pub(super) async fn renew(coord: Arc<Coordinator>, relay: Arc<Relay>, link: Arc<Link>) {
    let mut tick = tokio::time::interval(RECORD_RENEW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut st = coord.state.lock().await;
        if let Some((rev, until)) = st.held {
            let sent = Instant::now();
            // Bounded by the deadline: past it this node must have stopped, whatever NATS does.
            let r = tokio::time::timeout_at(until.into(), coord.renew_claim(&link, &mut st, rev))
                .await
                .unwrap_or(Renewal::NoAnswer);
            match r {
                Renewal::Renewed(rev) => {
                    st.held = Some((rev, sent + RECORD_TTL - RECORD_MARGIN));
                }
                Renewal::Kept(rev) => st.held = Some((rev, until)),
                Renewal::Moved(node) => {
                    coord.stop_here(&relay, &mut st).await;
                    relay.log(
                        LogKind::Recording,
                        format!("node {} stopped recording: node {node} records", link.node),
                    );
                }
                Renewal::NoAnswer => {}
            }
            if st.held.is_some_and(|(_, until)| Instant::now() >= until) {
                coord.stop_here(&relay, &mut st).await;
                st.resume = true;
                tracing::warn!(node = %link.node, "recording stopped: NATS unreachable");
                relay.log(
                    LogKind::Recording,
                    format!(
                        "node {} cannot reach NATS: recording stopped here (a node records only while the cluster knows it does); it starts again here when NATS is back, unless another node took it over",
                        link.node
                    ),
                );
            }
        } else if st.resume && link.connected() {
            coord.resume(&link, &relay, &mut st).await;
        }
        if link.connected() {
            match st.held {
                // A holder's look never carries it past the deadline of its claim.
                Some((_, until)) => {
                    let _ =
                        tokio::time::timeout_at(until.into(), coord.watch(&link, &relay, &mut st))
                            .await;
                }
                None => coord.watch(&link, &relay, &mut st).await,
            }
        }
    }
}

/// Answers the other nodes asking this one to give up its recording.
pub(super) async fn inbox(coord: Arc<Coordinator>, relay: Arc<Relay>, link: Arc<Link>) {
    use futures_util::StreamExt;
    let Ok(mut sub) = coord.client.subscribe(format!("{ASK}.{}", link.node)).await else {
        tracing::error!("cannot subscribe to this node's recording subject");
        return;
    };
    while let Some(m) = sub.next().await {
        let (Some(reply), Ok(ask)) = (m.reply, serde_json::from_slice::<Ask>(&m.payload)) else {
            continue;
        };
        let stopped = {
            let mut st = coord.state.lock().await;
            coord.stop_here(&relay, &mut st).await
        };
        if stopped {
            relay.log(
                LogKind::Recording,
                match &ask.to {
                    Some(to) => format!("recording moved from node {} to node {to}", link.node),
                    None => format!(
                        "recording on node {} stopped from node {}",
                        link.node, ask.from
                    ),
                },
            );
        }
        // Through the link's queue, after the heartbeat that says this node stopped.
        link.queue(
            reply.to_string(),
            Bytes::from(serde_json::to_vec(&Answer { stopped }).expect("serializable")),
        );
    }
}
