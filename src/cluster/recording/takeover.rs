//! Taking a recording over when its node is lost.
//!
//! Whether the event is to be recorded at all is the key `wanted` of the recording's bucket
//! ([`Wanted`]: the node that records): written by every start, deleted by a stop from any
//! node (before the holder is asked to stop), and written again every [`WANTED_REFRESH`] by
//! the deciding node, with compare-and-set, so that it outlives the node that records but a
//! stop is never undone. While `wanted` stands and nobody holds the claim, a node that can
//! record takes the recording over ([`Coordinator::watch`]): the claim's `create` lets one node
//! only do it; the deciding node tries first.

use super::{Coordinator, State, KEY, KV_TIMEOUT, RECORD_MARGIN, RECORD_TTL};
use crate::cluster::Link;
use crate::protocol::LogKind;
use crate::record::Recorder;
use crate::relay::Relay;
use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) const WANTED: &str = "wanted";

/// How long a node that is not deciding leaves an expired claim to the deciding node before
/// it tries to take the recording over itself (a deciding node without `--record` never
/// tries).
pub const TAKEOVER_OTHERS_AFTER: Duration = Duration::from_secs(1);
/// How long a claim given up by its holder (deleted: a shutdown, or a move under way) is left
/// to the node it moves to before the others take the recording over.
pub const TAKEOVER_GIVEN_UP_AFTER: Duration = Duration::from_secs(2);
/// How often the deciding node writes `wanted` again (it lives [`RECORD_TTL`]).
const WANTED_REFRESH: Duration = Duration::from_secs(1);
/// A node whose recorder failed to start when it took the recording over does not try again
/// for this long (its disk is full, say): another node may.
const TAKEOVER_FAILED_PAUSE: Duration = Duration::from_secs(30);

/// The value of `wanted`: the node that records (or, once it is lost, last recorded).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Wanted {
    pub(super) node: String,
}

impl Wanted {
    pub(super) fn json(node: &str) -> Bytes {
        Bytes::from(
            serde_json::to_vec(&Wanted {
                node: node.to_string(),
            })
            .expect("serializable"),
        )
    }
}

/// A key as read: written (its value and revision), deleted (a marker left by a delete), or
/// absent (never written, run out, or NATS restarted without it).
pub(super) enum Read {
    Put(Bytes, u64),
    Deleted,
    Absent,
}

/// Reads `key`; `None` when NATS does not answer.
pub(super) async fn read(kv: &kv::Store, key: &str) -> Option<Read> {
    match tokio::time::timeout(KV_TIMEOUT, kv.entry(key)).await {
        Ok(Ok(Some(e))) if e.operation == kv::Operation::Put => {
            Some(Read::Put(e.value, e.revision))
        }
        Ok(Ok(Some(_))) => Some(Read::Deleted),
        Ok(Ok(None)) => Some(Read::Absent),
        _ => None,
    }
}

/// Why the claim is missing while recording is wanted, and since when (as seen here).
#[derive(Debug, Clone, Copy)]
pub(super) struct Missing {
    pub(super) since: Instant,
    /// Deleted by its holder rather than run out.
    pub(super) given_up: bool,
}

impl Coordinator {
    /// Every node reaching NATS, every [`RECORD_RENEW`]: the deciding node keeps `wanted`
    /// alive; a node that can record and does not, while recording is wanted and nobody holds
    /// the claim, takes the recording over (the deciding node at once, the others
    /// [`TAKEOVER_OTHERS_AFTER`] later; a claim given up, [`TAKEOVER_GIVEN_UP_AFTER`] later).
    pub(super) async fn watch(&self, link: &Link, relay: &Arc<Relay>, st: &mut State) {
        let Some(kv) = self.store(st).await else {
            return;
        };
        let Some(Read::Put(value, wrev)) = read(&kv, WANTED).await else {
            st.missing = None;
            return;
        };
        let leading = link.leading();
        if leading
            && st
                .wanted_written
                .is_none_or(|t| t.elapsed() >= WANTED_REFRESH)
        {
            // With its revision: a stop that deleted it meanwhile stands.
            st.wanted_written = Some(Instant::now());
            let _ = tokio::time::timeout(KV_TIMEOUT, kv.update(WANTED, value.clone(), wrev)).await;
        }
        let can_record = self.recorder.get().is_some_and(Recorder::can_record);
        if st.held.is_some()
            || st.resume
            || !can_record
            || st.pause_until.is_some_and(|t| Instant::now() < t)
        {
            st.missing = None;
            return;
        }
        let given_up = match read(&kv, KEY).await {
            None => return,
            Some(Read::Put(..)) => {
                st.missing = None;
                return;
            }
            Some(Read::Deleted) => true,
            Some(Read::Absent) => false,
        };
        let missing = match st.missing {
            Some(m) if m.given_up == given_up => m,
            _ => *st.missing.insert(Missing {
                since: Instant::now(),
                given_up,
            }),
        };
        let mut wait = Duration::ZERO;
        if given_up {
            wait += TAKEOVER_GIVEN_UP_AFTER;
        }
        if !leading {
            wait += TAKEOVER_OTHERS_AFTER;
        }
        if missing.since.elapsed() < wait {
            return;
        }
        let lost = serde_json::from_slice::<Wanted>(&value)
            .map(|w| w.node)
            .unwrap_or_else(|_| "?".into());
        self.take_over(link, relay, st, &kv, lost, given_up).await;
    }

    /// Takes the recording over from `lost`: the claim first (one node only succeeds), then
    /// `wanted` read again (a stop that deleted it before the claim was taken stands; one that
    /// comes after finds the claim and asks this node), then the recorder, in files of its own.
    async fn take_over(
        &self,
        link: &Link,
        relay: &Arc<Relay>,
        st: &mut State,
        kv: &kv::Store,
        lost: String,
        given_up: bool,
    ) {
        let sent = Instant::now();
        let rev =
            match tokio::time::timeout(KV_TIMEOUT, kv.create(KEY, Bytes::from(link.node.clone())))
                .await
            {
                Ok(Ok(rev)) => rev,
                // Another node was first, or no answer.
                _ => return,
            };
        st.missing = None;
        let Some(Read::Put(_, wrev)) = read(kv, WANTED).await else {
            let _ =
                tokio::time::timeout(KV_TIMEOUT, kv.delete_expect_revision(KEY, Some(rev))).await;
            return;
        };
        st.held = Some((rev, sent + RECORD_TTL - RECORD_MARGIN));
        let why = if given_up {
            format!("node {lost} let it go and no node took it")
        } else {
            format!("node {lost} was lost (its claim ran out)")
        };
        tracing::warn!(node = %link.node, lost = %lost, "taking the recording over");
        *self
            .taking_over_from
            .lock()
            .expect("takeover lock poisoned") = Some(lost);
        let recorder = self.recorder.get().expect("checked by the caller");
        if let Err(r) = recorder.set(relay, true).await {
            self.take_over_note();
            st.held = None;
            st.pause_until = Some(Instant::now() + TAKEOVER_FAILED_PAUSE);
            let _ =
                tokio::time::timeout(KV_TIMEOUT, kv.delete_expect_revision(KEY, Some(rev))).await;
            relay.log(
                LogKind::Recording,
                format!(
                    "node {} cannot take the recording over ({why}): {}",
                    link.node, r.message
                ),
            );
            return;
        }
        let _ = tokio::time::timeout(
            KV_TIMEOUT,
            kv.update(WANTED, Wanted::json(&link.node), wrev),
        )
        .await;
        relay.log(
            LogKind::Recording,
            format!("node {} took the recording over: {why}", link.node),
        );
    }
}
