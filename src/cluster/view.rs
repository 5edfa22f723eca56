//! The cluster as the sound engineer sees it: every node with its health, address and
//! listeners, for the `cluster` message and `/metrics`.

use super::{Link, NODE_STALE};
use crate::protocol::{ClusterNode, NodeHealth, ServerMessage};
use crate::relay::Relay;
use bytes::Bytes;
use std::sync::atomic::Ordering;
use tokio::sync::watch;

impl Link {
    /// Every node known here: this one first, then the others by name; one not heard from
    /// within [`NODE_STALE`] is `silent`, and left out after ten times that.
    pub fn nodes_view(&self, relay: &Relay) -> Vec<ClusterNode> {
        let recording = self
            .recording
            .lock()
            .expect("recording lock poisoned")
            .is_some();
        let mut out = vec![ClusterNode {
            node: self.node.clone(),
            url: self.url.clone(),
            health: if self.isolated() {
                NodeHealth::Isolated
            } else if self.leading() {
                NodeHealth::Deciding
            } else {
                NodeHealth::Following
            },
            connected: self.connected(),
            heard_ms: 0,
            here: true,
            recording,
            listeners: relay.local_audience(),
        }];
        let nodes = self.nodes.lock().expect("nodes lock poisoned");
        for (name, (at, s)) in nodes.iter() {
            let heard = at.elapsed();
            if *name == self.node || heard > NODE_STALE * 10 {
                continue;
            }
            let fresh = heard <= NODE_STALE;
            out.push(ClusterNode {
                node: name.clone(),
                url: s.url.clone(),
                health: if !fresh {
                    NodeHealth::Silent
                } else if s.isolated {
                    NodeHealth::Isolated
                } else if s.deciding {
                    NodeHealth::Deciding
                } else {
                    NodeHealth::Following
                },
                connected: fresh && !s.isolated,
                heard_ms: heard.as_millis() as u64,
                here: false,
                recording: fresh && s.recording.is_some(),
                listeners: self
                    .event
                    .channels
                    .iter()
                    .zip(s.listeners.iter().chain(std::iter::repeat(&0)))
                    .map(|(c, n)| (c.id.clone(), *n))
                    .collect(),
            });
        }
        out
    }

    /// The nodes as engineers see them ([`ServerMessage::Cluster`] as JSON), renewed once a
    /// second; empty until the first. For engineers only, each holding it for as long as it
    /// is connected: how many hold it is how many engineers this node has
    /// ([`Link::engineers`]), and while any does, this node receives every channel's frames
    /// (their level meters are computed from them).
    pub fn view_watch(&self) -> watch::Receiver<Bytes> {
        let rx = self.view_tx.subscribe();
        self.interest_changed();
        rx
    }

    /// Engineers connected to this node now (holders of [`Link::view_watch`]).
    pub fn engineers(&self) -> usize {
        self.view_tx.receiver_count()
    }

    pub(super) fn publish_view(&self, relay: &Relay) {
        let json = Bytes::from(
            ServerMessage::Cluster {
                nodes: self.nodes_view(relay),
            }
            .to_json(),
        );
        self.view_tx.send_if_modified(|now| {
            let changed = *now != json;
            if changed {
                *now = json;
            }
            changed
        });
    }

    /// The cluster's metrics in the Prometheus text format.
    pub fn metrics(&self, relay: &Relay, out: &mut String) {
        use std::fmt::Write;
        let node = &self.node;
        let _ = writeln!(
            out,
            "# HELP boothcast_cluster_connected 1 while this node reaches NATS.\n# TYPE boothcast_cluster_connected gauge\nboothcast_cluster_connected{{node=\"{node}\"}} {}",
            u8::from(self.connected.load(Ordering::Relaxed))
        );
        let _ = writeln!(
            out,
            "# HELP boothcast_cluster_deciding 1 while this node decides for the event (holds the lease, or is isolated).\n# TYPE boothcast_cluster_deciding gauge\nboothcast_cluster_deciding{{node=\"{node}\"}} {}",
            u8::from(self.leading())
        );
        let _ = writeln!(
            out,
            "# HELP boothcast_cluster_isolated 1 while this node is cut off from the cluster and serves its own clients alone.\n# TYPE boothcast_cluster_isolated gauge\nboothcast_cluster_isolated{{node=\"{node}\"}} {}",
            u8::from(self.isolated())
        );
        let peers = self.peers();
        let _ = writeln!(
            out,
            "# HELP boothcast_cluster_nodes Nodes heard from within 3 s, this one included.\n# TYPE boothcast_cluster_nodes gauge\nboothcast_cluster_nodes {}",
            peers.len() + 1
        );
        let view = self.nodes_view(relay);
        let _ = writeln!(
            out,
            "# HELP boothcast_cluster_node_info A node known here (this one included), with its public address and health: deciding, following, isolated, or silent (not heard from within 3 s).\n# TYPE boothcast_cluster_node_info gauge"
        );
        for n in &view {
            let _ = writeln!(
                out,
                "boothcast_cluster_node_info{{node=\"{}\",url=\"{}\",health=\"{}\"}} 1",
                n.node,
                n.url.replace('\\', "\\\\").replace('"', "\\\""),
                serde_json::to_value(n.health)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(
            out,
            "# HELP boothcast_cluster_node_heard_seconds Seconds since this node last heard the node's heartbeat (0 for itself).\n# TYPE boothcast_cluster_node_heard_seconds gauge"
        );
        for n in &view {
            let _ = writeln!(
                out,
                "boothcast_cluster_node_heard_seconds{{node=\"{}\"}} {:.3}",
                n.node,
                n.heard_ms as f64 / 1000.0
            );
        }
        let _ = writeln!(
            out,
            "# HELP boothcast_cluster_node_recording 1 for the node that records, as its heartbeats say.\n# TYPE boothcast_cluster_node_recording gauge"
        );
        for n in &view {
            let _ = writeln!(
                out,
                "boothcast_cluster_node_recording{{node=\"{}\"}} {}",
                n.node,
                u8::from(n.recording)
            );
        }
        let _ = writeln!(
            out,
            "# HELP boothcast_cluster_node_listeners Listeners per node and channel: this node's own, the others' as they last said.\n# TYPE boothcast_cluster_node_listeners gauge"
        );
        for n in view.iter().filter(|n| n.health != NodeHealth::Silent) {
            for (c, count) in &n.listeners {
                let _ = writeln!(
                    out,
                    "boothcast_cluster_node_listeners{{node=\"{}\",channel=\"{c}\"}} {count}",
                    n.node
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP boothcast_cluster_listeners Listeners per channel over the cluster (the nodes heard from within 3 s), as in audience.\n# TYPE boothcast_cluster_listeners gauge"
        );
        for (c, count) in relay.audience() {
            let _ = writeln!(
                out,
                "boothcast_cluster_listeners{{channel=\"{c}\"}} {count}"
            );
        }
        for (name, v, help) in [
            (
                "boothcast_cluster_published_total",
                &self.counters.published,
                "Messages this node handed to NATS.",
            ),
            (
                "boothcast_cluster_dropped_total",
                &self.counters.dropped,
                "Messages for NATS dropped because its queue was full.",
            ),
            (
                "boothcast_cluster_received_frames_total",
                &self.counters.received_frames,
                "Channel frames received from the deciding node.",
            ),
            (
                "boothcast_cluster_takeovers_total",
                &self.counters.takeovers,
                "Times this node started deciding for the event.",
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
}
