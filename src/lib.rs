//! boothcast: a live interpretation-channel relay.
//!
//! Interpreters in booths and the floor (the hall's original sound) send Opus audio over
//! WebSockets; the relay carries each language as its own channel to every delegate listening
//! to it, with the rules of simultaneous interpretation.
//!
//! The modules, from the wire inwards:
//! - [`protocol`]: control messages (JSON) and audio frames (binary header + Opus): parsing,
//!   limits, error codes. No I/O.
//! - [`config`]: the event (rooms, channels, booths, secrets) from TOML, with a built-in default.
//! - [`rules`]: who is live and what each channel carries: auto-floor, interlock, handover,
//!   cough, relay. A state machine with time as an input; no I/O.
//! - [`relay`]: the fan-out: one queue per channel shared by its listeners; feeds [`rules`].
//!   [`direct`]: a channel's writers, which send each frame to its caught-up delegates' sockets
//!   without waking their tasks.
//! - [`server`]: HTTP and WebSocket transport around [`relay`]; [`accept`] takes connections
//!   within the bounds of [`admission`] (how many, from whom) and [`attempts`] slows the
//!   guessing of secrets; [`tls`] for HTTPS/WSS and [`join`] for the address delegates join at
//!   and its QR code; [`stream`] for the channels as HTTP streams
//!   (Ogg Opus) for any player.
//! - [`audio`]: WAV files, resampling, the Opus encoder and decoder (only clients touch audio).
//! - [`input`]: sound files and live streams in (symphonia), paced as a microphone delivers.
//! - [`client`]: the floor, booth and listener clients, from and to audio files or devices.
//! - [`tui`]: the interpreter's console on a terminal (ratatui), in front of a booth client.
//! - [`device`]: real audio devices through cpal: capture, playback, listing.
//! - [`jitter`]: the listener's adaptive jitter buffer. No I/O; time as an input.
//! - [`ogg`]: an Ogg Opus file writer (packets as received, silence for gaps).
//! - [`record`]: recordings of every channel, aligned, with a session index.
//! - [`bench`]: the load generators of `docs/BENCHMARKS.md`.

pub mod accept;
pub mod admission;
pub mod attempts;
pub mod audio;
pub mod bench;
pub mod client;
pub mod cluster;
pub mod config;
pub mod device;
pub mod direct;
pub mod input;
pub mod jitter;
pub mod join;
pub mod ogg;
pub mod protocol;
pub mod record;
pub mod relay;
pub mod rules;
pub mod server;
pub mod stream;
pub mod tls;
pub mod tui;
