//! One event log and one health view for the engineer, whichever node it is connected to.
//!
//! Each node publishes the entries of its own event log as they are logged (`boothcast.log`)
//! and its senders' connection health once a second (`boothcast.health`), both core subjects.
//! Every node keeps the others' entries in its own log (the relay's, bounded by
//! `relay::LOG_KEEP`, the same for every entry wherever it came from) and sends them to its
//! engineers; it merges the others' health, as last heard within [`NODE_STALE`], into the
//! `health` it sends. An entry received is never published again, and a node skips its own.
//!
//! Each entry and each sender carries `node`: for a sender, the node it is connected to (which
//! measured it); for an entry, the node of the sender it concerns (the deciding node logs the
//! commands of every node's consoles, tagged with the console's node), else the node that
//! logged it.

use super::{Link, NODE_STALE, SESSION_BITS};
use crate::protocol::{LogEntry, SenderHealth};
use crate::relay::Relay;
use crate::rules::Session;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

pub(super) const LOG: &str = "boothcast.log";
pub(super) const HEALTH: &str = "boothcast.health";

/// Largest log or health message taken from another node: an entry's text is a line for
/// people, and a node's senders are its booth consoles and floor feeds.
const MAX_PAYLOAD: usize = 256 * 1024;
/// Most senders taken from one node's health (an event has far fewer consoles and floors).
const MAX_SENDERS_PER_NODE: usize = 1024;
/// Most nodes whose health is kept (as the nodes of the heartbeats).
const MAX_NODES: usize = 256;

/// A log entry as it crosses: the node that logged it (its entry may be tagged with another
/// node, the one it concerns).
#[derive(Debug, Serialize, Deserialize)]
struct LogMessage {
    from: String,
    entry: LogEntry,
}

/// A node's health summary: its own senders.
#[derive(Debug, Serialize, Deserialize)]
struct HealthMessage {
    from: String,
    senders: Vec<SenderHealth>,
}

impl Link {
    /// Whether `session` is one of this node's own connections (by its number's prefix).
    pub fn is_local(&self, session: Session) -> bool {
        (session >> SESSION_BITS) as u16 == self.prefix
    }

    /// The node session `session` belongs to, by its prefix: this one, or another as its
    /// heartbeats said; this node's name when the prefix is not known (yet).
    pub fn node_of(&self, session: Session) -> String {
        if self.is_local(session) {
            return self.node.clone();
        }
        let prefix = (session >> SESSION_BITS) as u16;
        let nodes = self.nodes.lock().expect("nodes lock poisoned");
        nodes
            .iter()
            .find(|(_, (_, s))| s.prefix == prefix)
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| self.node.clone())
    }

    /// An entry logged here, for the other nodes' engineers (queued; dropped while NATS is
    /// away, as everything else).
    pub fn publish_log(&self, entry: &LogEntry) {
        let msg = LogMessage {
            from: self.node.clone(),
            entry: entry.clone(),
        };
        self.queue(
            LOG.to_string(),
            Bytes::from(serde_json::to_vec(&msg).expect("serializable")),
        );
    }

    /// This node's senders' health, for the other nodes' engineers (once a second).
    pub(super) fn publish_health(&self, relay: &Relay) {
        let mut senders = relay.local_health();
        senders.truncate(MAX_SENDERS_PER_NODE);
        let msg = HealthMessage {
            from: self.node.clone(),
            senders,
        };
        self.queue(
            HEALTH.to_string(),
            Bytes::from(serde_json::to_vec(&msg).expect("serializable")),
        );
    }

    /// The health of the cluster's senders: this node's own (`local`) and those of the nodes
    /// heard from within [`NODE_STALE`], by sender and node.
    pub fn health(&self, local: Vec<SenderHealth>) -> Vec<SenderHealth> {
        let mut out = local;
        {
            let heard = self.peer_health.lock().expect("health lock poisoned");
            for (node, (at, senders)) in heard.iter() {
                if *node != self.node && at.elapsed() <= NODE_STALE {
                    out.extend(senders.iter().cloned());
                }
            }
        }
        out.sort_by(|a, b| (&a.who, &a.node).cmp(&(&b.who, &b.node)));
        out
    }

    /// Another node's message on `boothcast.log` or `boothcast.health`.
    pub(super) fn merge(&self, relay: &Relay, subject: &str, payload: &[u8]) {
        if payload.len() > MAX_PAYLOAD {
            return;
        }
        if subject == LOG {
            let Ok(LogMessage { from, mut entry }) = serde_json::from_slice(payload) else {
                return;
            };
            if from == self.node {
                return;
            }
            entry.node.get_or_insert(from);
            relay.log_remote(entry);
        } else {
            let Ok(HealthMessage { from, mut senders }) = serde_json::from_slice(payload) else {
                return;
            };
            if from == self.node {
                return;
            }
            senders.truncate(MAX_SENDERS_PER_NODE);
            for s in &mut senders {
                s.node = Some(from.clone());
            }
            let mut heard = self.peer_health.lock().expect("health lock poisoned");
            // Bounded: nodes not heard from for a while are forgotten.
            heard.retain(|_, (at, _)| at.elapsed() <= NODE_STALE);
            if heard.len() < MAX_NODES || heard.contains_key(&from) {
                heard.insert(from, (Instant::now(), senders));
            }
        }
    }
}

/// The other nodes' log entries and health, merged into this node's.
pub(super) async fn inbox(client: async_nats::Client, relay: Arc<Relay>, link: Arc<Link>) {
    use futures_util::StreamExt;
    let (Ok(log), Ok(health)) = (client.subscribe(LOG).await, client.subscribe(HEALTH).await)
    else {
        tracing::error!("cannot subscribe to the cluster's log and health");
        return;
    };
    let mut all = futures_util::stream::select(log, health);
    while let Some(m) = all.next().await {
        link.merge(&relay, m.subject.as_str(), &m.payload);
    }
}
