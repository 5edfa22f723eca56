//! The wire: JSON control messages and binary audio frames.
//!
//! `docs/PROTOCOL.md` is the human-readable version of this module; the two change together.
//! Nothing here does I/O: it only turns bytes into messages and back, and says precisely what
//! is wrong with input that does not parse.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// Version byte of the binary audio frame header.
pub const FRAME_VERSION: u8 = 1;
/// Length of the fixed binary header that precedes the Opus packet.
pub const HEADER_LEN: usize = 28;
/// Longest Opus packet carried: up to three 1275-byte frames (RFC 6716, section 3.2.5), as a
/// 60 ms packet at the highest bitrate may hold.
pub const MAX_OPUS_LEN: usize = 3 * 1275;
/// Largest binary message accepted: one header and one Opus packet.
pub const MAX_FRAME_LEN: usize = HEADER_LEN + MAX_OPUS_LEN;
/// Largest text (JSON control) message accepted.
pub const MAX_CONTROL_LEN: usize = 4096;
/// Level byte meaning "no level measured".
pub const LEVEL_UNKNOWN: u8 = 255;
/// Channel index a sender puts in an inbound frame: the relay decides the channel.
pub const CHANNEL_UNSET: u16 = u16::MAX;

/// What a frame carries: the floor's original sound or an interpreter's voice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Floor,
    Interpreter,
}

impl Source {
    fn to_byte(self) -> u8 {
        match self {
            Source::Floor => 0,
            Source::Interpreter => 1,
        }
    }
}

/// The fixed header of a binary audio frame. All integers are big-endian.
///
/// ```text
/// offset size field
///  0     1    version (1)
///  1     1    source: 0 floor, 1 interpreter
///  2     2    channel index (senders: 0xFFFF, the relay fills it in)
///  4     4    sequence number
///  8     8    capture time, microseconds since the Unix epoch, sender's clock
/// 16     8    relay time, microseconds since the Unix epoch, stamped by the relay (senders: 0)
/// 24     1    RMS level, -dBFS (0..=127), 255 = unknown
/// 25     1    peak level, -dBFS (0..=127), 255 = unknown
/// 26     2    reserved, 0
/// 28     n    one Opus packet, 1..=3825 bytes, at most 60 ms
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub source: Source,
    pub channel: u16,
    pub sequence: u32,
    pub capture_us: u64,
    pub relay_us: u64,
    pub rms: u8,
    pub peak: u8,
}

/// Why a binary frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error(
        "audio frame of {0} bytes is shorter than the {HEADER_LEN}-byte header plus one Opus byte"
    )]
    TooShort(usize),
    #[error("audio frame of {0} bytes is longer than the limit of {MAX_FRAME_LEN} bytes")]
    TooLong(usize),
    #[error(
        "audio frame version {0} is not supported (this relay speaks version {FRAME_VERSION})"
    )]
    Version(u8),
    #[error("audio frame source byte {0} is neither 0 (floor) nor 1 (interpreter)")]
    Source(u8),
    #[error("audio frame level byte {0} is out of range (0..=127 or 255)")]
    Level(u8),
    #[error("audio frame reserved bytes are not zero")]
    Reserved,
    #[error("audio frame payload refused: {0}")]
    Opus(String),
}

impl FrameHeader {
    /// Parses and validates the header of `frame`; the Opus packet is `&frame[HEADER_LEN..]`.
    pub fn parse(frame: &[u8]) -> Result<FrameHeader, FrameError> {
        if frame.len() > MAX_FRAME_LEN {
            return Err(FrameError::TooLong(frame.len()));
        }
        if frame.len() <= HEADER_LEN {
            return Err(FrameError::TooShort(frame.len()));
        }
        if frame[0] != FRAME_VERSION {
            return Err(FrameError::Version(frame[0]));
        }
        let source = match frame[1] {
            0 => Source::Floor,
            1 => Source::Interpreter,
            other => return Err(FrameError::Source(other)),
        };
        let level_ok = |b: u8| b <= 127 || b == LEVEL_UNKNOWN;
        if !level_ok(frame[24]) {
            return Err(FrameError::Level(frame[24]));
        }
        if !level_ok(frame[25]) {
            return Err(FrameError::Level(frame[25]));
        }
        if frame[26] != 0 || frame[27] != 0 {
            return Err(FrameError::Reserved);
        }
        Ok(FrameHeader {
            source,
            channel: u16::from_be_bytes([frame[2], frame[3]]),
            sequence: u32::from_be_bytes(frame[4..8].try_into().expect("4 bytes")),
            capture_us: u64::from_be_bytes(frame[8..16].try_into().expect("8 bytes")),
            relay_us: u64::from_be_bytes(frame[16..24].try_into().expect("8 bytes")),
            rms: frame[24],
            peak: frame[25],
        })
    }

    /// Writes the header into `out` (exactly `HEADER_LEN` bytes).
    pub fn write(&self, out: &mut impl BufMut) {
        out.put_u8(FRAME_VERSION);
        out.put_u8(self.source.to_byte());
        out.put_u16(self.channel);
        out.put_u32(self.sequence);
        out.put_u64(self.capture_us);
        out.put_u64(self.relay_us);
        out.put_u8(self.rms);
        out.put_u8(self.peak);
        out.put_u16(0);
    }

    /// One complete frame: this header followed by `opus`.
    pub fn frame(&self, opus: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(HEADER_LEN + opus.len());
        self.write(&mut out);
        out.put_slice(opus);
        out.freeze()
    }
}

/// Converts a linear amplitude (0.0..=1.0 full scale) to the header's -dBFS byte.
pub fn level_byte(amplitude: f32) -> u8 {
    if !amplitude.is_finite() || amplitude <= 0.0 {
        return 127;
    }
    let db = -20.0 * amplitude.min(1.0).log10();
    db.round().clamp(0.0, 127.0) as u8
}

/// Who a connection is. Sent in the first message, `hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A delegate: listens to one channel at a time.
    Listener,
    /// An interpreter's console in a booth.
    Interpreter,
    /// The floor feed from the mixing desk.
    Floor,
    /// A sound engineer: sees everything, may force-mute.
    Engineer,
}

/// How a listener's frames are written to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Each frame as it comes: the least delay, for delegates in the hall (lip-sync).
    #[default]
    Live,
    /// Frames gathered and written together every 200 ms (`server::RELAXED_EVERY`): up to
    /// 200 ms more delay for one write in ten, for audiences that do not watch the speaker (a
    /// remote audience, an overflow room).
    Relaxed,
}

/// Messages a client sends, as JSON text frames tagged by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// First message on every connection.
    Hello {
        role: Role,
        /// Booth id, for interpreters.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        booth: Option<String>,
        /// Console name inside the booth, for interpreters (default "1").
        #[serde(default, skip_serializing_if = "Option::is_none")]
        console: Option<String>,
        /// Secret of the role; the event access code for listeners.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret: Option<String>,
        /// Channel to start listening to, for listeners and engineers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
        /// Room a floor source feeds (default: the first room).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        /// Free-form client name, for the engineer's view.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        /// For listeners: how frames are written (default `live`: each as it comes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delivery: Option<Delivery>,
        /// For listeners and engineers: also receive the floor of `channel`'s room, to play
        /// quietly under the interpretation (as in `subscribe`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        floor_under: bool,
    },
    /// Listen to a channel (listeners and engineers); switches if already listening. With
    /// `floor_under`, the frames of the floor of the channel's room come on the same connection
    /// too, told apart by the channel index in each frame's header (none for a floor channel).
    Subscribe {
        channel: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        floor_under: bool,
    },
    /// Stop listening.
    Unsubscribe,
    /// Go live on a channel of the console's booth (default: the booth's first language).
    Live {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
    },
    /// Go off air.
    Mute,
    /// Cough key pressed (`down: true`) or released.
    Cough { down: bool },
    /// The live console offers the microphone to its booth partners.
    Handover,
    /// A partner takes the microphone offered by `handover`.
    Accept,
    /// Choose what the console hears: `"floor"` or a channel id (relay).
    Input { channel: String },
    /// Engineer: force a console off air.
    ForceMute { booth: String, console: String },
    /// Engineer: start (`true`) or stop recording every channel.
    Record { start: bool },
    /// Keep-alive and round-trip measurement; answered by `pong` with the same `t`.
    Ping { t: u64 },
    /// Booth consoles and floor feeds: how their capture is doing, at most once a second.
    /// `overruns`: capture overruns (blocks of samples the device delivered that could not be
    /// kept) since the client started.
    Stats { overruns: u64 },
}

/// Messages the relay sends, as JSON text frames tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Answer to `hello`: who the relay thinks you are, and the event.
    Welcome {
        role: Role,
        event: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        booth: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        console: Option<String>,
        /// Listeners: the event's suggested extra delay, milliseconds, to line up with a
        /// delayed video (0: none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        listener_delay_ms: Option<u32>,
        /// In a cluster: the public base addresses (`ws://`, `wss://`, `http://` or
        /// `https://`) of the relays live now, this one first; a client tries the next of them
        /// when its connection is lost. Absent (empty) from a relay that serves alone.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        relays: Vec<String>,
    },
    /// Every channel with what it carries now. Sent after `welcome` and on every change.
    Channels { channels: Vec<ChannelInfo> },
    /// Listener counts per channel id (consoles and engineers; at most once a second).
    Audience { listeners: Vec<(String, u32)> },
    /// The channel this connection now receives audio frames of (`null`: none), and the floor
    /// it receives under it, if it asked for one and the channel is not a floor.
    Subscribed {
        channel: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        floor_under: Option<String>,
    },
    /// The state of this console (interpreters), after each change.
    Console(ConsoleState),
    /// A partner offered the microphone (to the booth's other consoles).
    HandoverOffered { from: String },
    /// Level meters of every channel (engineers), ten times a second while they move:
    /// `[channel id, RMS, peak]` in -dBFS (127: silence).
    Levels { levels: Vec<(String, u8, u8)> },
    /// Connection health of every booth console and floor feed (engineers, once a second).
    Health { senders: Vec<SenderHealth> },
    /// Whether every channel is being recorded, and where (engineers; on connect and change).
    Recording {
        active: bool,
        /// The session directory, on the recording node's disk.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dir: Option<String>,
        /// In a cluster: the node that records (one at a time). Absent from a relay alone.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
        /// In a cluster: the node that recorded before and was lost, when `node` took the
        /// recording over by itself. Absent otherwise.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        taken_over_from: Option<String>,
    },
    /// In a cluster (engineers; on connect, then on change, at most once a second): every
    /// node this one knows of, itself first, then by name. Never sent by a relay alone.
    Cluster { nodes: Vec<ClusterNode> },
    /// The event log (engineers): the latest entries on connect, then each new one.
    Log { entries: Vec<LogEntry> },
    /// Answer to `ping`.
    Pong { t: u64 },
    /// A refusal. `fatal: true` means the relay closes the connection after it.
    Error {
        code: ErrorCode,
        message: String,
        fatal: bool,
    },
}

/// How a sender's connection is doing, as the relay measures it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SenderHealth {
    /// `booth/console` for a console, `floor/room` for a floor feed.
    pub who: String,
    /// Round-trip time of the last WebSocket ping, milliseconds (`null` before the first pong).
    pub rtt_ms: Option<f64>,
    /// Interarrival jitter of its frames against their capture times (RFC 3550), milliseconds.
    pub jitter_ms: f64,
    pub frames: u64,
    /// Frames missing from its own sequence numbers.
    pub lost: u64,
    /// Connections of this console or floor before the current one.
    pub reconnects: u32,
    /// Capture overruns the sender reports (`stats`).
    #[serde(default)]
    pub overruns: u64,
    /// Milliseconds since its last frame (`null` before the first). A live console whose
    /// frames stopped shows here first, before its deadline closes it.
    #[serde(default)]
    pub silent_ms: Option<u64>,
    /// In a cluster: the node the sender is connected to, which measured these figures.
    /// Absent from a relay alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// One relay of a cluster as the node the engineer is connected to sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    /// Its name (`serve --node`).
    pub node: String,
    /// Its public base address (`ws://HOST:PORT/`), as `welcome`'s `relays`.
    pub url: String,
    pub health: NodeHealth,
    /// Whether it reaches NATS: this node's own link; another node's while its heartbeats
    /// come (it sends them through NATS).
    pub connected: bool,
    /// Milliseconds since its last heartbeat was heard here (0 for this node itself).
    pub heard_ms: u64,
    /// This is the node the engineer is connected to.
    pub here: bool,
    /// It records (see `recording`).
    pub recording: bool,
    /// Its own delegates per channel id, in the event's channel order (the cluster's sums are
    /// in `audience`).
    pub listeners: Vec<(String, u32)>,
}

/// How a node of a cluster is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeHealth {
    /// It holds the lease: it decides for the whole event.
    Deciding,
    /// It follows the deciding node.
    Following,
    /// It cannot reach NATS and serves its own booths and listeners alone.
    Isolated,
    /// Not heard from for over 3 s: gone, or cut off from NATS (the others cannot tell).
    Silent,
}

/// One entry of the event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// When, milliseconds since the Unix epoch.
    pub t: u64,
    pub kind: LogKind,
    /// What happened, for people.
    pub text: String,
    /// In a cluster: the node the entry is about: the node of the booth console or floor feed
    /// it concerns, else the node that logged it. Absent from a relay alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// What an event-log entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogKind {
    /// A booth console or floor feed connected.
    Connect,
    /// A booth console or floor feed left.
    Disconnect,
    /// A console went live (also by taking a handover).
    Live,
    /// A console went off air.
    Mute,
    /// A console offered the microphone to its partners.
    Handover,
    /// A console chose what it hears: the floor, or a relay channel.
    Input,
    /// The engineer force-muted a console.
    ForceMute,
    /// Something was refused: a wrong secret, a command the rules do not allow.
    Refused,
    /// A recording started or stopped.
    Recording,
}

/// What one console sees of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleState {
    pub booth: String,
    pub console: String,
    /// The channel this console is live on, if any.
    pub live: Option<String>,
    pub cough: bool,
    /// What the console hears: `"floor"` or a channel id.
    pub input: String,
    /// Languages (channel ids) this console's booth may go live on.
    pub channels: Vec<String>,
}

/// One channel as listed to every client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelInfo {
    /// Stable id, `room/lang`, e.g. `plenary/en`; the floor is `room/floor`.
    pub id: String,
    /// Index used in binary frame headers.
    pub index: u16,
    pub room: String,
    pub lang: String,
    /// Name of the language in English.
    pub name: String,
    /// Name of the language in itself.
    pub native: String,
    /// What the channel carries now.
    pub carrying: Carrying,
    /// Booth and console live on it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveConsole>,
    /// For a relay: the chain of channels the live interpreter hears, nearest first,
    /// ending in the floor (e.g. `["plenary/en", "plenary/floor"]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relay_chain: Vec<String>,
}

/// What a channel carries right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Carrying {
    /// The original sound of the hall (the floor channel itself, or auto-floor).
    Floor,
    /// An interpreter working from the floor.
    Interpreter,
    /// An interpreter working from another booth's channel.
    Relay,
    /// Nothing: no interpreter live and auto-floor off (or still holding).
    Silence,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveConsole {
    pub booth: String,
    pub console: String,
    /// True while the cough key is held.
    pub cough: bool,
}

/// Stable error codes; clients switch on these, the message is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The message was not valid JSON of a known type, or too long.
    BadMessage,
    /// A binary frame was malformed or too long.
    BadFrame,
    /// The first message was not `hello`, or a second `hello` came.
    NotHello,
    /// Wrong or missing secret or access code.
    Unauthorized,
    /// The role may not do this (e.g. a listener sending audio).
    Forbidden,
    /// No such channel.
    UnknownChannel,
    /// No such booth.
    UnknownBooth,
    /// The channel is live from another booth (interlock).
    ChannelTaken,
    /// A partner in the same booth is live: use handover.
    PartnerLive,
    /// The booth may not work into that channel.
    NotBoothLanguage,
    /// The command needs a live console, or an offered handover.
    NotLive,
    NoHandover,
    /// The chosen relay input would make a loop of relays.
    RelayLoop,
    /// Another connection took this console's place.
    Replaced,
    /// The connection did not take what was sent to it for too long; reconnect to get live.
    TooSlow,
    /// The relay is shutting down.
    ShuttingDown,
    /// Too many wrong secrets from this address: it must wait before trying again.
    TooManyAttempts,
    /// The relay holds as many connections as it can; its last places are kept for booths,
    /// the floor and engineers. Try again in a moment.
    ServerFull,
    /// This address has as many listener connections as it may.
    TooManyConnections,
    /// Nothing came from the client (no frame, message or pong) within its deadline: the
    /// path to it is taken to be dead.
    Timeout,
}

/// Why a text message was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    #[error("control message of {0} bytes is longer than the limit of {MAX_CONTROL_LEN} bytes")]
    TooLong(usize),
    #[error("control message is not valid: {0}")]
    Invalid(String),
}

impl ClientMessage {
    pub fn parse(text: &str) -> Result<ClientMessage, MessageError> {
        if text.len() > MAX_CONTROL_LEN {
            return Err(MessageError::TooLong(text.len()));
        }
        // Only the object form: the array form serde would also take (`["live","en"]`) is
        // not the protocol, and grows past the length limit when written back as an object.
        if !text
            .trim_start_matches([' ', '\t', '\n', '\r'])
            .starts_with('{')
        {
            return Err(MessageError::Invalid(
                "a control message is a JSON object tagged by `type`".into(),
            ));
        }
        serde_json::from_str(text).map_err(|e| MessageError::Invalid(e.to_string()))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("client messages always serialize")
    }
}

impl ServerMessage {
    pub fn parse(text: &str) -> Result<ServerMessage, MessageError> {
        serde_json::from_str(text).map_err(|e| MessageError::Invalid(e.to_string()))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server messages always serialize")
    }

    pub fn error(code: ErrorCode, message: impl Into<String>, fatal: bool) -> ServerMessage {
        ServerMessage::Error {
            code,
            message: message.into(),
            fatal,
        }
    }
}

/// Redacts secrets from a message for logging.
impl std::fmt::Display for ClientMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientMessage::Hello {
                role,
                booth,
                console,
                secret,
                ..
            } => write!(
                f,
                "hello role={role:?} booth={booth:?} console={console:?} secret={}",
                if secret.is_some() { "<set>" } else { "<none>" }
            ),
            other => write!(f, "{other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> FrameHeader {
        FrameHeader {
            source: Source::Interpreter,
            channel: 3,
            sequence: 77,
            capture_us: 1_700_000_000_000_000,
            relay_us: 0,
            rms: 20,
            peak: 6,
        }
    }

    #[test]
    fn frame_round_trips() {
        let frame = header().frame(&[0xfc, 1, 2]);
        assert_eq!(frame.len(), HEADER_LEN + 3);
        assert_eq!(FrameHeader::parse(&frame).unwrap(), header());
        assert_eq!(&frame[HEADER_LEN..], &[0xfc, 1, 2]);
    }

    #[test]
    fn malformed_frames_say_what_is_wrong() {
        let good = header().frame(&[0xfc]);
        assert_eq!(
            FrameHeader::parse(&good[..10]),
            Err(FrameError::TooShort(10))
        );
        assert_eq!(
            FrameHeader::parse(&good[..HEADER_LEN]),
            Err(FrameError::TooShort(HEADER_LEN))
        );
        let mut bad = good.to_vec();
        bad[0] = 9;
        assert_eq!(FrameHeader::parse(&bad), Err(FrameError::Version(9)));
        let mut bad = good.to_vec();
        bad[1] = 7;
        assert_eq!(FrameHeader::parse(&bad), Err(FrameError::Source(7)));
        let mut bad = good.to_vec();
        bad[24] = 200;
        assert_eq!(FrameHeader::parse(&bad), Err(FrameError::Level(200)));
        let mut bad = good.to_vec();
        bad[27] = 1;
        assert_eq!(FrameHeader::parse(&bad), Err(FrameError::Reserved));
        let long = vec![1u8; MAX_FRAME_LEN + 1];
        assert_eq!(
            FrameHeader::parse(&long),
            Err(FrameError::TooLong(MAX_FRAME_LEN + 1))
        );
        let err = FrameHeader::parse(&long).unwrap_err().to_string();
        assert!(err.contains("3853"), "{err}");
    }

    #[test]
    fn levels_map_to_dbfs() {
        assert_eq!(level_byte(1.0), 0);
        assert_eq!(level_byte(0.5), 6);
        assert_eq!(level_byte(0.1), 20);
        assert_eq!(level_byte(0.0), 127);
        assert_eq!(level_byte(f32::NAN), 127);
    }

    #[test]
    fn control_messages_parse_and_refuse() {
        let m = ClientMessage::parse(
            r#"{"type":"hello","role":"interpreter","booth":"en","secret":"s3cret"}"#,
        )
        .unwrap();
        assert!(matches!(
            m,
            ClientMessage::Hello {
                role: Role::Interpreter,
                ..
            }
        ));
        assert!(!m.to_string().contains("s3cret"));
        let m = ClientMessage::parse(r#"{"type":"cough","down":true}"#).unwrap();
        assert_eq!(m, ClientMessage::Cough { down: true });
        let e = ClientMessage::parse(r#"{"type":"dance"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant `dance`"), "{e}");
        let e = ClientMessage::parse(r#"{"type":"live","chanel":"x"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("chanel"), "{e}");
        let long = format!(r#"{{"type":"ping","t":1,"x":"{}"}}"#, "a".repeat(5000));
        assert!(matches!(
            ClientMessage::parse(&long),
            Err(MessageError::TooLong(_))
        ));
    }

    #[test]
    fn server_messages_round_trip() {
        let m = ServerMessage::error(ErrorCode::ChannelTaken, "taken by booth az", false);
        let json = m.to_json();
        assert!(json.contains(r#""code":"channel_taken""#), "{json}");
        assert_eq!(ServerMessage::parse(&json).unwrap(), m);
    }

    #[test]
    fn a_relay_alone_says_no_node_and_a_cluster_names_it() {
        let alone = ServerMessage::Recording {
            active: true,
            dir: Some("recordings/session-1".into()),
            node: None,
            taken_over_from: None,
        };
        assert_eq!(
            alone.to_json(),
            r#"{"type":"recording","active":true,"dir":"recordings/session-1"}"#
        );
        let cluster = ServerMessage::Cluster {
            nodes: vec![ClusterNode {
                node: "b".into(),
                url: "ws://10.0.0.12:8080/".into(),
                health: NodeHealth::Silent,
                connected: false,
                heard_ms: 4200,
                here: false,
                recording: false,
                listeners: vec![("plenary/en".into(), 3)],
            }],
        };
        let json = cluster.to_json();
        assert!(json.contains(r#""health":"silent""#), "{json}");
        assert!(json.contains(r#""listeners":[["plenary/en",3]]"#), "{json}");
        assert_eq!(ServerMessage::parse(&json).unwrap(), cluster);
    }
}
