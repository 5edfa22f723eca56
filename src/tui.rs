//! The interpreter's console on a terminal: what `boothcast booth` shows when it runs on one.
//!
//! Three pure parts and a thin loop around them:
//! - [`action`] maps a key to what the interpreter means by it;
//! - [`State`] is what the console knows (its own state as the relay reports it, the channels,
//!   the audience, levels, the connection) and turns actions and time into the console
//!   commands to send; time is an input, so the cough key's release timeout and the pings are
//!   tested without sleeping;
//! - [`render`] draws a `State` into a ratatui frame.
//!
//! [`run`] owns the terminal: it feeds keys, the booth's [`Report`]s and a 100 ms tick into the
//! state, sends the commands it returns into the booth's session loop, and redraws. The terminal
//! is restored on every way out, a panic included.

use crate::client::{self, BoothOptions, Report, Ui};
use crate::device;
use crate::protocol::{
    Carrying, ChannelInfo, ClientMessage, ConsoleState, ErrorCode, ServerMessage,
};
use crossterm::event::{
    Event, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers, KeyboardEnhancementFlags,
    PopKeyboardEnhancementFlags, PushKeyboardEnhancementFlags,
};
use futures_util::StreamExt;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, List, ListItem, ListState, Paragraph};
use ratatui::Frame;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Without key-release events, a held key is seen only through its repeats. The first repeat
/// comes after the keyboard's repeat delay (500-660 ms by common defaults), so the cough key
/// lets go this long after the last press or repeat: longer than that delay, or the cough
/// would flicker off between the press and the first repeat.
pub const COUGH_RELEASE: Duration = Duration::from_millis(700);
/// A round-trip measurement a second: the figure moves no faster than a person reads it.
pub const PING_EVERY: Duration = Duration::from_secs(1);
/// A level not refreshed for this long reads as silence (the relay's meters use the same).
pub const LEVEL_HOLD: Duration = Duration::from_millis(300);
/// How long the peak mark stays at the highest peak, and the clip mark stays lit.
pub const PEAK_HOLD: Duration = Duration::from_millis(1500);
pub const CLIP_HOLD: Duration = Duration::from_secs(2);
/// A notice (a refusal, a partner's offer) stays on screen this long unless replaced.
pub const NOTICE_FOR: Duration = Duration::from_secs(10);
/// `q` while live must be pressed again within this time: leaving takes the channel off air.
pub const QUIT_CONFIRM: Duration = Duration::from_secs(3);
/// Screen refresh while nothing but meters moves: ten times a second, like the engineer's.
pub const TICK: Duration = Duration::from_millis(100);
/// Reports from the booth waiting for the screen; levels come 50 a second per direction at
/// 20 ms frames, so this is over a second of them. A full queue drops reports (the booth never
/// waits for the screen).
pub const REPORT_QUEUE: usize = 256;
/// Commands waiting for the booth's session loop, which takes them as they come.
pub const COMMAND_QUEUE: usize = 16;
/// One press of `+` or `-` on the headphones' volume: 10 % of the signal.
const VOLUME_STEP: f32 = 0.1;
/// The meters' range: below -60 dBFS is silence for a speech microphone.
const METER_FLOOR_DB: u8 = 60;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("the terminal: {0}")]
    Terminal(#[from] std::io::Error),
    #[error(transparent)]
    Booth(#[from] client::Error),
}

/// What a key means at the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Live,
    Mute,
    /// The cough key went down, or repeats while held.
    CoughPress,
    /// The cough key went up (only terminals that report key releases say so).
    CoughRelease,
    /// The latching cough key: on, and off again.
    CoughToggle,
    Handover,
    Accept,
    /// Move the input selector.
    Up,
    Down,
    /// Listen to the input under the selector.
    Choose,
    /// The next of the booth's languages for `Live` (bi-active booths).
    NextLanguage,
    /// The headphones' volume, a step up or down.
    VolumeUp,
    VolumeDown,
    /// Leave (asks again while live).
    Quit,
    /// Leave at once (Ctrl-C).
    ForceQuit,
}

/// The key → action mapping. Key releases mean nothing but for the cough key.
pub fn action(key: &KeyEvent) -> Option<Action> {
    if key.modifiers.contains(KeyModifiers::CONTROL) {
        return (key.code == KeyCode::Char('c')).then_some(Action::ForceQuit);
    }
    let shift = key.modifiers.contains(KeyModifiers::SHIFT);
    if let KeyCode::Char('c') = key.code {
        if !shift {
            return match key.kind {
                KeyEventKind::Release => Some(Action::CoughRelease),
                _ => Some(Action::CoughPress),
            };
        }
    }
    if key.kind != KeyEventKind::Press {
        return None;
    }
    Some(match key.code {
        KeyCode::Char('c') | KeyCode::Char('C') => Action::CoughToggle,
        KeyCode::Char('l') => Action::Live,
        KeyCode::Char('m') => Action::Mute,
        KeyCode::Char('h') => Action::Handover,
        KeyCode::Char('a') => Action::Accept,
        KeyCode::Up | KeyCode::Char('k') => Action::Up,
        KeyCode::Down | KeyCode::Char('j') => Action::Down,
        KeyCode::Enter => Action::Choose,
        KeyCode::Tab | KeyCode::Char('n') => Action::NextLanguage,
        KeyCode::Char('+') | KeyCode::Char('=') => Action::VolumeUp,
        KeyCode::Char('-') => Action::VolumeDown,
        KeyCode::Char('q') | KeyCode::Esc => Action::Quit,
        _ => return None,
    })
}

/// What the state asks the loop to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Do {
    Send(ClientMessage),
    Quit,
}

/// The connection to the relay, as the console shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum Link {
    Connecting,
    Connected,
    /// Lost; the next attempt comes at `retry_at`.
    Lost {
        reason: String,
        retry_at: Instant,
    },
}

/// The cough key, as this console holds it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cough {
    Up,
    /// Held: until the key is released, or (without release events) until `until`.
    Held {
        until: Option<Instant>,
    },
    /// Latched on with the toggle.
    Latched,
}

/// A level meter fed with the -dBFS bytes of frame headers.
#[derive(Debug, Clone, Default)]
pub struct Meter {
    rms: u8,
    peak: u8,
    at: Option<Instant>,
    hold: u8,
    hold_at: Option<Instant>,
    clip_at: Option<Instant>,
}

impl Meter {
    fn update(&mut self, rms: u8, peak: u8, now: Instant) {
        // 255: not measured.
        if rms == 255 || peak == 255 {
            return;
        }
        self.rms = rms;
        self.peak = peak;
        self.at = Some(now);
        let held = self
            .hold_at
            .is_some_and(|t| now.duration_since(t) < PEAK_HOLD);
        if !held || peak <= self.hold {
            self.hold = peak;
            self.hold_at = Some(now);
        }
        // Byte 0 is within half a dB of full scale: the converter is clipping.
        if peak == 0 {
            self.clip_at = Some(now);
        }
    }

    /// (RMS, peak, peak hold) in -dBFS at `now`; `None` when silent.
    fn read(&self, now: Instant) -> Option<(u8, u8, u8)> {
        let fresh = self.at.is_some_and(|t| now.duration_since(t) < LEVEL_HOLD);
        (fresh && self.peak < 127).then_some((self.rms, self.peak, self.hold))
    }

    fn clipped(&self, now: Instant) -> bool {
        self.clip_at
            .is_some_and(|t| now.duration_since(t) < CLIP_HOLD)
    }
}

/// A line of text for the interpreter, with when it came.
#[derive(Debug, Clone)]
struct Notice {
    text: String,
    error: bool,
    at: Instant,
}

/// Everything the console shows.
#[derive(Debug, Clone)]
pub struct State {
    pub booth: String,
    pub console: String,
    /// The time the state was last brought to; what `render` draws is as of then.
    now: Instant,
    /// Origin of the pings' `t` (microseconds since it).
    epoch: Instant,
    pub link: Link,
    /// Connections after the first.
    pub reconnects: u32,
    connected_before: bool,
    /// This console as the relay last reported it (`None` until it does).
    pub me: Option<ConsoleState>,
    pub channels: Vec<ChannelInfo>,
    audience: Vec<(String, u32)>,
    pub mic: Meter,
    /// Capture overruns of the input device (sound lost before it was sent).
    pub overruns: u64,
    pub heard: Meter,
    pub rtt: Option<Duration>,
    last_ping: Option<Instant>,
    /// The `t` of the latest ping.
    ping_t: Option<u64>,
    /// Index into the booth's languages for `live`.
    target: usize,
    /// Index into `input_choices()`.
    cursor: usize,
    cursor_placed: bool,
    /// The partner console that offered the microphone, while the offer stands.
    pub offer_from: Option<String>,
    /// This console offered the microphone and waits for a partner.
    pub offering: bool,
    cough: Cough,
    /// The terminal reports key releases: the cough key is held exactly as long as pressed.
    release_events: bool,
    notice: Option<Notice>,
    quit_armed: Option<Instant>,
    /// The headphones' volume, when the console plays its input to a device.
    pub phones: Option<device::Volume>,
}

impl State {
    pub fn new(booth: &str, console: &str, release_events: bool, now: Instant) -> State {
        State {
            booth: booth.to_string(),
            console: console.to_string(),
            now,
            epoch: now,
            link: Link::Connecting,
            reconnects: 0,
            connected_before: false,
            me: None,
            channels: Vec::new(),
            audience: Vec::new(),
            mic: Meter::default(),
            overruns: 0,
            heard: Meter::default(),
            rtt: None,
            last_ping: None,
            ping_t: None,
            target: 0,
            cursor: 0,
            cursor_placed: false,
            offer_from: None,
            offering: false,
            cough: Cough::Up,
            release_events,
            notice: None,
            quit_armed: None,
            phones: None,
        }
    }

    /// The channel this console is live on, if connected and live.
    pub fn live(&self) -> Option<&str> {
        if self.link != Link::Connected {
            return None;
        }
        self.me.as_ref().and_then(|m| m.live.as_deref())
    }

    fn channel(&self, id: &str) -> Option<&ChannelInfo> {
        self.channels.iter().find(|c| c.id == id)
    }

    fn listeners(&self, id: &str) -> Option<u32> {
        self.audience.iter().find(|(c, _)| c == id).map(|(_, n)| *n)
    }

    /// The booth's languages, main first.
    fn languages(&self) -> &[String] {
        self.me
            .as_ref()
            .map(|m| m.channels.as_slice())
            .unwrap_or(&[])
    }

    /// The language `live` goes on air in.
    pub fn target(&self) -> Option<&str> {
        let langs = self.languages();
        langs
            .get(self.target.min(langs.len().saturating_sub(1)))
            .map(String::as_str)
    }

    /// What the console may hear: the floors first, then every channel but the booth's own
    /// (the relay refuses those as a loop).
    pub fn input_choices(&self) -> Vec<&ChannelInfo> {
        let own = self.languages();
        let floors = self.channels.iter().filter(|c| c.lang == "floor");
        let others = self
            .channels
            .iter()
            .filter(|c| c.lang != "floor" && !own.contains(&c.id));
        floors.chain(others).collect()
    }

    fn say(&mut self, text: impl Into<String>, error: bool) {
        self.notice = Some(Notice {
            text: text.into(),
            error,
            at: self.now,
        });
    }

    /// What the booth reports: the connection, the relay's messages, the levels.
    pub fn report(&mut self, report: Report, now: Instant) {
        self.now = now;
        match report {
            Report::Connecting => self.link = Link::Connecting,
            Report::Connected => {
                self.link = Link::Connected;
                if self.connected_before {
                    self.reconnects += 1;
                }
                self.connected_before = true;
                self.rtt = None;
                self.last_ping = None;
            }
            Report::Disconnected { reason, retry_in } => {
                self.link = Link::Lost {
                    reason,
                    retry_at: now + retry_in,
                };
                // The relay takes a lost console off air and forgets its cough key and any
                // offer; it comes back muted.
                self.cough = Cough::Up;
                if let Some(me) = &mut self.me {
                    me.live = None;
                    me.cough = false;
                }
                self.offer_from = None;
                self.offering = false;
                self.rtt = None;
            }
            Report::Sent { rms, peak } => self.mic.update(rms, peak, now),
            Report::Overruns(n) => self.overruns = n,
            Report::Heard(header) => self.heard.update(header.rms, header.peak, now),
            Report::Message(msg) => self.message(msg),
        }
    }

    fn message(&mut self, msg: ServerMessage) {
        match msg {
            ServerMessage::Console(me) => {
                let was_live = self.me.as_ref().and_then(|m| m.live.clone());
                if me.live.is_some() {
                    self.offer_from = None;
                }
                if me.live.is_none() || me.live != was_live {
                    self.offering = false;
                }
                if let (Some(now_live), false) = (&me.live, me.live == was_live) {
                    if let Some(i) = me.channels.iter().position(|c| c == now_live) {
                        self.target = i;
                    }
                }
                self.me = Some(me);
                self.place_cursor();
            }
            ServerMessage::Channels { channels } => {
                self.channels = channels;
                // An offer lapses when its console goes off air.
                if let Some(from) = &self.offer_from {
                    let from_live = self.channels.iter().any(|c| {
                        c.live
                            .as_ref()
                            .is_some_and(|l| l.booth == self.booth && &l.console == from)
                    });
                    if !from_live {
                        self.offer_from = None;
                    }
                }
                self.place_cursor();
            }
            ServerMessage::Audience { listeners } => self.audience = listeners,
            ServerMessage::HandoverOffered { from } => {
                self.say(
                    format!("console {from} offers you the microphone: press a to take it"),
                    false,
                );
                self.offer_from = Some(from);
            }
            // Only the answer to the latest ping: an older one would read too long.
            ServerMessage::Pong { t } if self.ping_t == Some(t) => {
                let sent = self.epoch + Duration::from_micros(t);
                self.rtt = Some(self.now.saturating_duration_since(sent));
            }
            ServerMessage::Error { code, message, .. } => {
                if matches!(code, ErrorCode::NoHandover | ErrorCode::NotLive) {
                    self.offering = false;
                }
                if code == ErrorCode::NoHandover {
                    self.offer_from = None;
                }
                self.say(message, true);
            }
            _ => {}
        }
    }

    /// Puts the input selector on the current input, once both are known.
    fn place_cursor(&mut self) {
        if self.cursor_placed {
            return;
        }
        let Some(input) = self.me.as_ref().map(|m| m.input.clone()) else {
            return;
        };
        if let Some(i) = self.input_choices().iter().position(|c| c.id == input) {
            self.cursor = i;
            self.cursor_placed = true;
        }
    }

    /// An action of the interpreter; returns what to send.
    pub fn act(&mut self, action: Action, now: Instant) -> Vec<Do> {
        self.now = now;
        if !matches!(action, Action::Quit) {
            self.quit_armed = None;
        }
        let send = |m| vec![Do::Send(m)];
        match action {
            Action::Live => send(ClientMessage::Live {
                channel: self.target().map(str::to_string),
            }),
            Action::Mute => send(ClientMessage::Mute),
            Action::CoughPress => {
                let until = (!self.release_events).then_some(now + COUGH_RELEASE);
                match self.cough {
                    Cough::Up => {
                        self.cough = Cough::Held { until };
                        send(ClientMessage::Cough { down: true })
                    }
                    Cough::Held { .. } => {
                        self.cough = Cough::Held { until };
                        vec![]
                    }
                    Cough::Latched => vec![],
                }
            }
            Action::CoughRelease => match self.cough {
                Cough::Held { .. } => {
                    self.cough = Cough::Up;
                    send(ClientMessage::Cough { down: false })
                }
                _ => vec![],
            },
            Action::CoughToggle => match self.cough {
                Cough::Up => {
                    self.cough = Cough::Latched;
                    send(ClientMessage::Cough { down: true })
                }
                Cough::Held { .. } => {
                    self.cough = Cough::Latched;
                    vec![]
                }
                Cough::Latched => {
                    self.cough = Cough::Up;
                    send(ClientMessage::Cough { down: false })
                }
            },
            Action::Handover => {
                if self.live().is_some() {
                    self.offering = true;
                }
                send(ClientMessage::Handover)
            }
            Action::Accept => send(ClientMessage::Accept),
            Action::Up => {
                self.cursor = self.cursor.saturating_sub(1);
                vec![]
            }
            Action::Down => {
                let n = self.input_choices().len();
                self.cursor = (self.cursor + 1).min(n.saturating_sub(1));
                vec![]
            }
            Action::Choose => match self.input_choices().get(self.cursor) {
                Some(c) => send(ClientMessage::Input {
                    channel: c.id.clone(),
                }),
                None => vec![],
            },
            Action::NextLanguage => {
                let n = self.languages().len().max(1);
                self.target = (self.target + 1) % n;
                vec![]
            }
            Action::VolumeUp | Action::VolumeDown => {
                let step = if action == Action::VolumeUp {
                    VOLUME_STEP
                } else {
                    -VOLUME_STEP
                };
                match &self.phones {
                    // Whole steps, so that up and down come back to the same figure.
                    Some(v) => {
                        v.set(((v.get() + step) / VOLUME_STEP).round() * VOLUME_STEP);
                    }
                    None => self.say(
                        "no headphones: start the booth with --output-device or --default-output",
                        true,
                    ),
                }
                vec![]
            }
            Action::Quit => {
                let armed = self
                    .quit_armed
                    .is_some_and(|t| now.duration_since(t) < QUIT_CONFIRM);
                if self.live().is_some() && !armed {
                    self.quit_armed = Some(now);
                    self.say(
                        "you are live: press q again to leave (the channel goes off air)",
                        true,
                    );
                    vec![]
                } else {
                    vec![Do::Quit]
                }
            }
            Action::ForceQuit => vec![Do::Quit],
        }
    }

    /// Time passes: the cough key lets go, a ping is due, notices and meters age.
    pub fn tick(&mut self, now: Instant) -> Vec<Do> {
        self.now = now;
        let mut out = Vec::new();
        if let Cough::Held { until: Some(t) } = self.cough {
            if now >= t {
                self.cough = Cough::Up;
                out.push(Do::Send(ClientMessage::Cough { down: false }));
            }
        }
        let due = self
            .last_ping
            .is_none_or(|p| now.duration_since(p) >= PING_EVERY);
        if self.link == Link::Connected && due {
            self.last_ping = Some(now);
            let t = now.duration_since(self.epoch).as_micros() as u64;
            self.ping_t = Some(t);
            out.push(Do::Send(ClientMessage::Ping { t }));
        }
        if self
            .notice
            .as_ref()
            .is_some_and(|n| now.duration_since(n.at) >= NOTICE_FOR)
        {
            self.notice = None;
        }
        if self
            .quit_armed
            .is_some_and(|t| now.duration_since(t) >= QUIT_CONFIRM)
        {
            self.quit_armed = None;
        }
        out
    }
}

/// A three-line block font for the state word, read across a booth.
fn glyph(c: char) -> [&'static str; 3] {
    match c {
        'L' => ["█  ", "█  ", "█▄▄"],
        'I' => ["█", "█", "█"],
        'V' => ["█ █", "█ █", "▀▄▀"],
        'E' => ["█▀▀", "█▀▀", "█▄▄"],
        'M' => ["█▄ ▄█", "█ ▀ █", "█   █"],
        'U' => ["█ █", "█ █", "█▄█"],
        'T' => ["▀█▀", " █ ", " █ "],
        'D' => ["█▀▄", "█ █", "█▄▀"],
        'C' => ["█▀▀", "█  ", "█▄▄"],
        'O' => ["█▀█", "█ █", "█▄█"],
        'G' => ["█▀▀", "█ ▄", "█▄█"],
        'H' => ["█ █", "█▀█", "█ █"],
        'F' => ["█▀▀", "█▀ ", "█  "],
        'N' => ["█▄ █", "█ ▀█", "█  █"],
        _ => [" ", " ", " "],
    }
}

fn big(word: &str) -> [String; 3] {
    let mut rows = [String::new(), String::new(), String::new()];
    for c in word.chars() {
        for (row, part) in rows.iter_mut().zip(glyph(c)) {
            row.push_str(part);
            row.push(' ');
        }
    }
    rows
}

/// A bar of `width` cells from -60 dBFS to 0: RMS solid, peak shaded, the peak hold a tick.
fn meter_bar(level: Option<(u8, u8, u8)>, width: usize) -> Line<'static> {
    let cells = |db: u8| {
        let db = db.min(METER_FLOOR_DB) as usize;
        (METER_FLOOR_DB as usize - db) * width / METER_FLOOR_DB as usize
    };
    let (rms, peak, hold) = match level {
        Some((r, p, h)) => (cells(r), cells(p), cells(h)),
        None => (0, 0, 0),
    };
    // Green up to -18 dBFS, amber to -6, red above: speech sits in the green and amber.
    let zone = |i: usize| {
        let db = METER_FLOOR_DB as usize - (i + 1) * METER_FLOOR_DB as usize / width;
        if db <= 6 {
            Color::Red
        } else if db <= 18 {
            Color::Yellow
        } else {
            Color::Green
        }
    };
    let mut spans = vec![Span::raw("▕")];
    for i in 0..width {
        let (ch, style) = if i < rms {
            ("█", Style::new().fg(zone(i)))
        } else if i < peak {
            ("▒", Style::new().fg(zone(i)))
        } else if hold > 0 && i + 1 == hold {
            ("│", Style::new().fg(zone(i)))
        } else {
            ("·", Style::new().fg(Color::DarkGray))
        };
        spans.push(Span::styled(ch, style));
    }
    spans.push(Span::raw("▏"));
    Line::from(spans)
}

fn level_text(level: Option<(u8, u8, u8)>) -> String {
    match level {
        Some((rms, peak, _)) => format!("peak -{peak:>2} dB  rms -{rms:>2} dB"),
        None => "silent".to_string(),
    }
}

/// Where a channel's sound comes from, in words.
fn carrying_text(c: &ChannelInfo) -> String {
    match (c.carrying, &c.live) {
        (Carrying::Floor, _) if c.lang == "floor" => "the floor".into(),
        (Carrying::Floor, _) => "floor (no interpreter)".into(),
        (Carrying::Silence, _) => "silence".into(),
        (Carrying::Interpreter, Some(l)) => format!("booth {} console {}", l.booth, l.console),
        (Carrying::Relay, Some(l)) => format!(
            "booth {} console {}, relay of {}",
            l.booth,
            l.console,
            c.relay_chain.first().map(String::as_str).unwrap_or("?")
        ),
        (_, None) => "an interpreter".into(),
    }
}

fn plural(n: u32, one: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {one}s")
    }
}

/// Draws the console.
pub fn render(state: &State, frame: &mut Frame) {
    let booth = booth_lines(state);
    let [top, big_area, mic, heard, booth_area, inputs, notice, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(5),
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(booth.len() as u16 + 2),
        Constraint::Min(3),
        Constraint::Length(1),
        Constraint::Length(2),
    ])
    .areas(frame.area());
    render_top(state, frame, top);
    render_state(state, frame, big_area);
    render_meters(state, frame, mic, heard);
    let block = Block::bordered().title(format!(" Booth {} ", state.booth));
    frame.render_widget(Paragraph::new(booth).block(block), booth_area);
    render_inputs(state, frame, inputs);
    if let Some(n) = &state.notice {
        let style = if n.error {
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
        } else {
            Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD)
        };
        frame.render_widget(
            Paragraph::new(Span::styled(format!(" {}", n.text), style)),
            notice,
        );
    }
    render_keys(state, frame, keys);
}

fn render_top(state: &State, frame: &mut Frame, area: Rect) {
    let title = format!(
        " boothcast · booth {} · console {}",
        state.booth, state.console
    );
    let link = match &state.link {
        Link::Connecting => Span::styled("◌ connecting…", Style::new().fg(Color::Yellow)),
        Link::Connected => {
            let rtt = match state.rtt {
                Some(d) => format!("rtt {:.1} ms", d.as_secs_f64() * 1000.0),
                None => "rtt …".into(),
            };
            Span::styled(
                format!("● connected · {rtt}"),
                Style::new().fg(Color::Green),
            )
        }
        Link::Lost { reason, retry_at } => {
            let wait = retry_at.saturating_duration_since(state.now).as_secs_f64();
            Span::styled(
                format!("✕ {reason} · retrying in {wait:.1} s"),
                Style::new().fg(Color::Red),
            )
        }
    };
    let reconnects = if state.reconnects > 0 {
        format!(" · reconnects {}", state.reconnects)
    } else {
        String::new()
    };
    let line = Line::from(vec![link, Span::raw(reconnects), Span::raw(" ")]);
    let [left, right] =
        Layout::horizontal([Constraint::Min(20), Constraint::Length(line.width() as u16)])
            .areas(area);
    frame.render_widget(Paragraph::new(title).bold(), left);
    frame.render_widget(Paragraph::new(line), right);
}

fn render_state(state: &State, frame: &mut Frame, area: Rect) {
    let coughing = state.me.as_ref().is_some_and(|m| m.cough);
    let (word, color, lines): (&str, Color, Vec<String>) = match (state.live(), &state.link) {
        (_, Link::Connecting | Link::Lost { .. }) => (
            "OFFLINE",
            Color::DarkGray,
            vec![
                "OFFLINE: not connected to the relay".into(),
                "reconnecting by itself; you come back muted".into(),
            ],
        ),
        (Some(ch), _) => {
            let name = state
                .channel(ch)
                .map(|c| c.name.clone())
                .unwrap_or_default();
            let who = state
                .listeners(ch)
                .map(|n| plural(n, "listener"))
                .unwrap_or_else(|| "listeners …".into());
            let source = match state.channel(ch) {
                Some(c) if c.carrying == Carrying::Relay => {
                    format!("relay: {}", c.relay_chain.join(" ← "))
                }
                _ => "from the floor".into(),
            };
            if coughing {
                (
                    "COUGH",
                    Color::Yellow,
                    vec![
                        format!("COUGH: live on {ch} ({name}), your sound is held back"),
                        format!("{who} · {source}"),
                    ],
                )
            } else {
                (
                    "LIVE",
                    Color::Red,
                    vec![
                        format!("LIVE on {ch} ({name})"),
                        format!("{who} · {source}"),
                    ],
                )
            }
        }
        (None, _) => {
            let target = state.target().unwrap_or("?");
            let mut lines = vec![
                "MUTED: not on air".to_string(),
                format!("l goes live on {target}"),
            ];
            if let Some(n) = state.listeners(target) {
                lines[1].push_str(&format!(" ({})", plural(n, "listener")));
            }
            if coughing {
                lines[0].push_str(" · cough key held");
            }
            ("MUTED", Color::Blue, lines)
        }
    };
    // On air the whole panel lights up, as the red lamp of a hardware console does.
    let (panel, style) = match word {
        "LIVE" => (
            Style::new().bg(Color::Red).fg(Color::White),
            Style::new().bg(Color::Red).fg(Color::White).bold(),
        ),
        "COUGH" => (
            Style::new().bg(Color::Yellow).fg(Color::Black),
            Style::new().bg(Color::Yellow).fg(Color::Black).bold(),
        ),
        _ => (Style::new().fg(color), Style::new().fg(color).bold()),
    };
    let block = Block::bordered().style(panel);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let rows = big(word);
    let width = rows[0].chars().count() as u16 + 2;
    let [glyphs, text] =
        Layout::horizontal([Constraint::Length(width), Constraint::Min(10)]).areas(inner);
    let big_lines: Vec<Line> = rows
        .into_iter()
        .map(|r| Line::styled(format!(" {r}"), style))
        .collect();
    frame.render_widget(Paragraph::new(big_lines), glyphs);
    let mut text_lines: Vec<Line> = vec![Line::raw("")];
    let mut it = lines.into_iter();
    if let Some(first) = it.next() {
        text_lines[0] = Line::styled(first, style);
    }
    text_lines.extend(it.map(Line::raw));
    frame.render_widget(Paragraph::new(text_lines), text);
}

fn render_meters(state: &State, frame: &mut Frame, mic: Rect, heard: Rect) {
    let width = 32;
    let level = state.mic.read(state.now);
    let mut line = vec![Span::raw(" Microphone  ")];
    line.extend(meter_bar(level, width).spans);
    line.push(Span::raw(format!(" {}", level_text(level))));
    if state.mic.clipped(state.now) {
        line.push(Span::styled(
            "  CLIP",
            Style::new().fg(Color::White).bg(Color::Red).bold(),
        ));
    }
    if state.overruns > 0 {
        line.push(Span::styled(
            format!("  overruns {}", state.overruns),
            Style::new().fg(Color::Yellow).bold(),
        ));
    }
    frame.render_widget(Paragraph::new(Line::from(line)), mic);

    let level = state.heard.read(state.now);
    let input = state.me.as_ref().map(|m| m.input.as_str()).unwrap_or("…");
    let mut line = vec![Span::raw(" Hearing     ")];
    line.extend(meter_bar(level, width).spans);
    line.push(Span::raw(format!(" {} · {input}", level_text(level))));
    if let Some(v) = &state.phones {
        line.push(Span::raw(format!(" · phones {:.0} %", v.get() * 100.0)));
    }
    frame.render_widget(Paragraph::new(Line::from(line)), heard);
}

fn render_inputs(state: &State, frame: &mut Frame, area: Rect) {
    let input = state.me.as_ref().map(|m| m.input.as_str());
    let items: Vec<ListItem> = state
        .input_choices()
        .into_iter()
        .map(|c| {
            let mark = if Some(c.id.as_str()) == input {
                "● "
            } else {
                "  "
            };
            let what = match c.carrying {
                _ if c.lang == "floor" => "floor".to_string(),
                Carrying::Relay => format!("relay of relay (via {})", c.relay_chain.join(" ← ")),
                Carrying::Interpreter => "relay".into(),
                Carrying::Floor => "relay (carries the floor now)".into(),
                Carrying::Silence => "relay (silent now)".into(),
            };
            let style = if c.carrying == Carrying::Relay && c.lang != "floor" {
                Style::new().fg(Color::Yellow)
            } else {
                Style::new()
            };
            ListItem::new(Line::styled(
                format!("{mark}{} {}: {what}", c.id, c.name),
                style,
            ))
        })
        .collect();
    let list = List::new(items)
        .block(Block::bordered().title(" Input (↑↓, Enter) "))
        .highlight_symbol("› ")
        .highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut list_state = ListState::default().with_selected(Some(state.cursor));
    frame.render_stateful_widget(list, area, &mut list_state);
}

/// The booth's languages with who is live on each, and the handover in progress.
fn booth_lines(state: &State) -> Vec<Line<'static>> {
    let mut lines: Vec<Line> = Vec::new();
    let target = state.target();
    for id in state.languages() {
        let Some(c) = state.channel(id) else { continue };
        let arrow = if Some(id.as_str()) == target {
            "▸ "
        } else {
            "  "
        };
        let who = match &c.live {
            Some(l) if l.booth == state.booth && l.console == state.console => {
                "live: you".to_string()
            }
            Some(l) if l.booth == state.booth => format!("live: console {}", l.console),
            _ => carrying_text(c),
        };
        let n = state
            .listeners(id)
            .map(|n| format!(" · {}", plural(n, "listener")))
            .unwrap_or_default();
        lines.push(Line::raw(format!("{arrow}{id} {}: {who}{n}", c.name)));
    }
    if let Some(from) = &state.offer_from {
        lines.push(Line::styled(
            format!("  console {from} offers the microphone: a to accept"),
            Style::new().fg(Color::Cyan).bold(),
        ));
    }
    if state.offering {
        lines.push(Line::styled(
            "  you offered the microphone; on air until a partner takes it",
            Style::new().fg(Color::Cyan),
        ));
    }
    lines
}

fn render_keys(state: &State, frame: &mut Frame, area: Rect) {
    let cough = match (state.cough, state.release_events) {
        (Cough::Latched, _) => "c cough: latched, C releases",
        (_, true) => "c cough (held while pressed)  C cough on/off",
        (_, false) => "c cough (hold: lets go 0.7 s after the key)  C cough on/off",
    };
    let quit = if state.quit_armed.is_some() {
        "q again to leave"
    } else {
        "q quit"
    };
    let key = Style::new().add_modifier(Modifier::BOLD);
    let phones = if state.phones.is_some() {
        "  +- phones"
    } else {
        ""
    };
    let lines = vec![
        Line::styled(format!(" l live  m mute  {cough}"), key),
        Line::styled(
            format!(" h hand over  a accept  ↑↓ Enter input  n next language{phones}  {quit}"),
            key,
        ),
    ];
    frame.render_widget(Paragraph::new(lines), area);
}

/// The terminal while the console owns it; restored when dropped (also on unwinding).
struct Screen {
    terminal: ratatui::DefaultTerminal,
    enhanced: bool,
}

impl Screen {
    fn open() -> std::io::Result<Screen> {
        // Installs a panic hook that restores the terminal before the message is printed.
        let terminal = ratatui::try_init()?;
        // Terminals that speak the progressive keyboard protocol report key releases, so the
        // cough key can be held for real; the others (tmux among them) only repeat keys.
        let enhanced = crossterm::terminal::supports_keyboard_enhancement().unwrap_or(false);
        if enhanced {
            crossterm::execute!(
                std::io::stdout(),
                PushKeyboardEnhancementFlags(
                    KeyboardEnhancementFlags::DISAMBIGUATE_ESCAPE_CODES
                        | KeyboardEnhancementFlags::REPORT_EVENT_TYPES
                )
            )?;
            let hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let _ = crossterm::execute!(std::io::stdout(), PopKeyboardEnhancementFlags);
                hook(info);
            }));
        }
        Ok(Screen { terminal, enhanced })
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        if self.enhanced {
            let _ = crossterm::execute!(std::io::stdout(), PopKeyboardEnhancementFlags);
        }
        ratatui::restore();
    }
}

/// Longest wait, after the interpreter quits, for the booth to close its connection.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Runs the booth console with the terminal as its face, until the interpreter quits, the
/// input file ends or the relay refuses it for good.
pub async fn run(mut opts: BoothOptions) -> Result<(), Error> {
    let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
    let (report_tx, mut reports) = mpsc::channel(REPORT_QUEUE);
    opts.commands = None;
    opts.ui = Some(Ui {
        commands: command_rx,
        reports: report_tx,
    });
    let mut screen = Screen::open()?;
    let mut state = State::new(&opts.booth, &opts.console, screen.enhanced, Instant::now());
    state.phones = opts.monitor.as_ref().map(|m| m.volume.clone());
    let booth = client::booth(opts);
    tokio::pin!(booth);
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut commands = Some(commands);
    loop {
        let todo = tokio::select! {
            result = &mut booth => {
                drop(screen);
                return Ok(result?);
            }
            Some(report) = reports.recv() => {
                let meter = matches!(report, Report::Sent { .. } | Report::Heard(_));
                state.report(report, Instant::now());
                if meter {
                    // Meters are redrawn with the tick.
                    continue;
                }
                Vec::new()
            }
            key = keys.next() => match key {
                Some(Ok(Event::Key(key))) => match action(&key) {
                    Some(a) => state.act(a, Instant::now()),
                    None => continue,
                },
                Some(Ok(_)) => Vec::new(),
                // The terminal is gone: nobody is at the console any more.
                Some(Err(_)) | None => vec![Do::Quit],
            },
            _ = tick.tick() => state.tick(Instant::now()),
        };
        for d in todo {
            match d {
                Do::Send(msg) => {
                    if let Some(tx) = &commands {
                        if tx.try_send(msg).is_err() {
                            state.say("the booth is not taking commands; is it stuck?", true);
                        }
                    }
                }
                // Closing the command queue tells the booth to close its connection.
                Do::Quit => commands = None,
            }
        }
        if commands.is_none() {
            break;
        }
        screen.terminal.draw(|f| render(&state, f))?;
    }
    drop(screen);
    match tokio::time::timeout(CLOSE_WAIT, booth).await {
        Ok(result) => Ok(result?),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{FrameHeader, LiveConsole, Source};
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn channel(id: &str, index: u16, carrying: Carrying) -> ChannelInfo {
        let (room, lang) = id.split_once('/').unwrap();
        ChannelInfo {
            id: id.into(),
            index,
            room: room.into(),
            lang: lang.into(),
            name: match lang {
                "floor" => "Floor",
                "en" => "English",
                "ar" => "Arabic",
                "ru" => "Russian",
                _ => "Other",
            }
            .into(),
            native: lang.into(),
            carrying,
            live: None,
            relay_chain: Vec::new(),
        }
    }

    fn channels() -> Vec<ChannelInfo> {
        vec![
            channel("plenary/floor", 0, Carrying::Floor),
            channel("plenary/en", 1, Carrying::Floor),
            channel("plenary/ru", 2, Carrying::Floor),
            channel("plenary/ar", 3, Carrying::Floor),
        ]
    }

    fn me(live: Option<&str>, cough: bool) -> ServerMessage {
        ServerMessage::Console(ConsoleState {
            booth: "en".into(),
            console: "1".into(),
            live: live.map(str::to_string),
            cough,
            input: "plenary/floor".into(),
            channels: vec!["plenary/en".into()],
        })
    }

    /// A console of booth `en`, connected, muted, hearing the floor.
    fn connected(t0: Instant) -> State {
        let mut s = State::new("en", "1", false, t0);
        s.report(Report::Connecting, t0);
        s.report(Report::Connected, t0);
        s.report(
            Report::Message(ServerMessage::Channels {
                channels: channels(),
            }),
            t0,
        );
        s.report(Report::Message(me(None, false)), t0);
        s.report(
            Report::Message(ServerMessage::Audience {
                listeners: vec![("plenary/en".into(), 12), ("plenary/ru".into(), 1)],
            }),
            t0,
        );
        s
    }

    fn live_channels(console: &str) -> ServerMessage {
        let mut list = channels();
        list[1].carrying = Carrying::Interpreter;
        list[1].live = Some(LiveConsole {
            booth: "en".into(),
            console: console.into(),
            cough: false,
        });
        ServerMessage::Channels { channels: list }
    }

    fn screen(state: &State) -> String {
        let mut terminal = Terminal::new(TestBackend::new(100, 30)).unwrap();
        terminal.draw(|f| render(state, f)).unwrap();
        let buffer = terminal.backend().buffer();
        let mut out = String::new();
        for y in 0..buffer.area.height {
            for x in 0..buffer.area.width {
                out.push_str(buffer[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    fn key(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
    }

    #[test]
    fn keys_map_to_console_actions() {
        assert_eq!(action(&key('l')), Some(Action::Live));
        assert_eq!(action(&key('m')), Some(Action::Mute));
        assert_eq!(action(&key('c')), Some(Action::CoughPress));
        let mut release = key('c');
        release.kind = KeyEventKind::Release;
        assert_eq!(action(&release), Some(Action::CoughRelease));
        let mut repeat = key('c');
        repeat.kind = KeyEventKind::Repeat;
        assert_eq!(action(&repeat), Some(Action::CoughPress));
        assert_eq!(action(&key('C')), Some(Action::CoughToggle));
        assert_eq!(
            action(&KeyEvent::new(KeyCode::Char('c'), KeyModifiers::SHIFT)),
            Some(Action::CoughToggle)
        );
        assert_eq!(action(&key('h')), Some(Action::Handover));
        assert_eq!(action(&key('a')), Some(Action::Accept));
        assert_eq!(
            action(&KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE)),
            Some(Action::Choose)
        );
        assert_eq!(
            action(&KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Action::ForceQuit)
        );
        let mut l_up = key('l');
        l_up.kind = KeyEventKind::Release;
        assert_eq!(action(&l_up), None, "releases of other keys mean nothing");
        assert_eq!(action(&key('z')), None);
    }

    #[test]
    fn live_shows_on_screen_with_channel_and_listeners() {
        let t0 = Instant::now();
        let mut s = connected(t0);
        let text = screen(&s);
        assert!(text.contains("MUTED: not on air"), "{text}");
        assert!(
            text.contains("l goes live on plenary/en (12 listeners)"),
            "{text}"
        );
        assert_eq!(
            s.act(Action::Live, t0),
            vec![Do::Send(ClientMessage::Live {
                channel: Some("plenary/en".into())
            })]
        );
        s.report(Report::Message(me(Some("plenary/en"), false)), t0);
        s.report(Report::Message(live_channels("1")), t0);
        let text = screen(&s);
        eprintln!("{text}");
        assert!(text.contains("LIVE on plenary/en (English)"), "{text}");
        assert!(text.contains("12 listeners · from the floor"), "{text}");
        assert!(text.contains("plenary/en English: live: you"), "{text}");
        // The big word: the first row of the block letters L, I, V, E.
        assert!(text.contains("█   █ █ █ █▀▀"), "{text}");
        assert!(!text.contains("MUTED"), "{text}");
    }

    #[test]
    fn the_cough_key_held_by_repeats_lets_go_after_the_timeout() {
        let t0 = Instant::now();
        let mut s = connected(t0);
        // Only the cough key matters here, not the pings a connected console sends.
        s.link = Link::Connecting;
        let down = Do::Send(ClientMessage::Cough { down: true });
        let up = Do::Send(ClientMessage::Cough { down: false });
        assert_eq!(s.act(Action::CoughPress, t0), vec![down.clone()]);
        // Key repeats keep it down and send nothing more.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(s.act(Action::CoughPress, t1), vec![]);
        assert_eq!(
            s.tick(t1 + COUGH_RELEASE - Duration::from_millis(1)),
            vec![]
        );
        assert_eq!(s.tick(t1 + COUGH_RELEASE), vec![up.clone()]);
        assert_eq!(s.tick(t1 + COUGH_RELEASE * 2), vec![]);
        // The latch stays on until toggled off.
        assert_eq!(s.act(Action::CoughToggle, t0), vec![down.clone()]);
        assert_eq!(s.tick(t0 + Duration::from_millis(900)), vec![]);
        assert_eq!(s.act(Action::CoughToggle, t0), vec![up.clone()]);
        // Where the terminal reports releases, the key is held as long as it is down.
        let mut s = State::new("en", "1", true, t0);
        assert_eq!(s.act(Action::CoughPress, t0), vec![down]);
        assert_eq!(s.tick(t0 + Duration::from_secs(5)), vec![]);
        assert_eq!(
            s.act(Action::CoughRelease, t0 + Duration::from_secs(5)),
            vec![up]
        );
    }

    #[test]
    fn cough_shows_while_the_relay_holds_the_sound_back() {
        let t0 = Instant::now();
        let mut s = connected(t0);
        s.report(Report::Message(me(Some("plenary/en"), true)), t0);
        let text = screen(&s);
        assert!(text.contains("COUGH: live on plenary/en"), "{text}");
        assert!(
            text.contains("c cough (hold: lets go 0.7 s after the key)"),
            "{text}"
        );
    }

    #[test]
    fn plus_and_minus_turn_the_headphones() {
        let t0 = Instant::now();
        let mut s = connected(t0);
        assert_eq!(action(&key('+')), Some(Action::VolumeUp));
        assert_eq!(action(&key('-')), Some(Action::VolumeDown));
        // Without headphones the console says why nothing happens.
        s.act(Action::VolumeUp, t0);
        let text = screen(&s);
        assert!(text.contains("no headphones"), "{text}");
        let phones = device::Volume::new(1.0);
        s.phones = Some(phones.clone());
        s.act(Action::VolumeUp, t0);
        s.act(Action::VolumeUp, t0);
        assert!((phones.get() - 1.2).abs() < 1e-6, "{}", phones.get());
        assert!(screen(&s).contains("phones 120 %"), "{}", screen(&s));
        for _ in 0..30 {
            s.act(Action::VolumeUp, t0);
        }
        assert_eq!(phones.get(), device::MAX_VOLUME);
        for _ in 0..30 {
            s.act(Action::VolumeDown, t0);
        }
        assert_eq!(phones.get(), 0.0);
        assert!(screen(&s).contains("phones 0 %"), "{}", screen(&s));
    }

    #[test]
    fn handover_offer_and_accept_between_partners() {
        let t0 = Instant::now();
        // Console 2 of the booth, muted; console 1 is live and offers.
        let mut s = State::new("en", "2", false, t0);
        s.report(Report::Connected, t0);
        s.report(Report::Message(live_channels("1")), t0);
        s.report(Report::Message(me(None, false)), t0);
        assert!(screen(&s).contains("plenary/en English: live: console 1"));
        s.report(
            Report::Message(ServerMessage::HandoverOffered { from: "1".into() }),
            t0,
        );
        let text = screen(&s);
        assert!(
            text.contains("console 1 offers you the microphone: press a to take it"),
            "{text}"
        );
        assert!(
            text.contains("console 1 offers the microphone: a to accept"),
            "{text}"
        );
        assert_eq!(
            s.act(Action::Accept, t0),
            vec![Do::Send(ClientMessage::Accept)]
        );
        s.report(Report::Message(me(Some("plenary/en"), false)), t0);
        s.report(Report::Message(live_channels("2")), t0);
        let text = screen(&s);
        assert!(text.contains("LIVE on plenary/en"), "{text}");
        assert!(text.contains("plenary/en English: live: you"), "{text}");
        assert!(!text.contains("a to accept"), "{text}");

        // The offerer: waits on air, then is muted when the partner takes over.
        let mut s = connected(t0);
        s.report(Report::Message(me(Some("plenary/en"), false)), t0);
        s.report(Report::Message(live_channels("1")), t0);
        assert_eq!(
            s.act(Action::Handover, t0),
            vec![Do::Send(ClientMessage::Handover)]
        );
        assert!(screen(&s).contains("you offered the microphone"));
        s.report(Report::Message(me(None, false)), t0);
        s.report(Report::Message(live_channels("2")), t0);
        let text = screen(&s);
        assert!(text.contains("MUTED"), "{text}");
        assert!(
            text.contains("plenary/en English: live: console 2"),
            "{text}"
        );
        assert!(!text.contains("you offered"), "{text}");
    }

    #[test]
    fn an_offer_lapses_when_its_console_goes_off_air() {
        let t0 = Instant::now();
        let mut s = State::new("en", "2", false, t0);
        s.report(Report::Connected, t0);
        s.report(Report::Message(live_channels("1")), t0);
        s.report(
            Report::Message(ServerMessage::HandoverOffered { from: "1".into() }),
            t0,
        );
        assert_eq!(s.offer_from.as_deref(), Some("1"));
        s.report(
            Report::Message(ServerMessage::Channels {
                channels: channels(),
            }),
            t0,
        );
        assert_eq!(s.offer_from, None);
    }

    #[test]
    fn the_input_selector_marks_relays_and_relays_of_relays() {
        let t0 = Instant::now();
        let mut s = connected(t0);
        let mut list = channels();
        list[2].carrying = Carrying::Interpreter;
        list[2].live = Some(LiveConsole {
            booth: "ru".into(),
            console: "1".into(),
            cough: false,
        });
        list[3].carrying = Carrying::Relay;
        list[3].relay_chain = vec!["plenary/ru".into(), "plenary/floor".into()];
        list[3].live = Some(LiveConsole {
            booth: "ar".into(),
            console: "1".into(),
            cough: false,
        });
        s.report(
            Report::Message(ServerMessage::Channels { channels: list }),
            t0,
        );
        let ids: Vec<&str> = s.input_choices().iter().map(|c| c.id.as_str()).collect();
        assert_eq!(
            ids,
            ["plenary/floor", "plenary/ru", "plenary/ar"],
            "never the own booth's"
        );
        let text = screen(&s);
        assert!(text.contains("● plenary/floor Floor: floor"), "{text}");
        assert!(text.contains("plenary/ru Russian: relay"), "{text}");
        assert!(
            text.contains("plenary/ar Arabic: relay of relay (via plenary/ru ← plenary/floor)"),
            "{text}"
        );
        assert_eq!(s.act(Action::Down, t0), vec![]);
        assert_eq!(s.act(Action::Down, t0), vec![]);
        assert_eq!(s.act(Action::Down, t0), vec![], "stays on the last");
        assert_eq!(
            s.act(Action::Choose, t0),
            vec![Do::Send(ClientMessage::Input {
                channel: "plenary/ar".into()
            })]
        );
    }

    #[test]
    fn a_lost_connection_shows_offline_and_comes_back_muted() {
        let t0 = Instant::now();
        let mut s = connected(t0);
        s.report(Report::Message(me(Some("plenary/en"), false)), t0);
        s.act(Action::CoughToggle, t0);
        s.report(
            Report::Disconnected {
                reason: "connection lost: reset".into(),
                retry_in: Duration::from_millis(400),
            },
            t0,
        );
        let text = screen(&s);
        assert!(text.contains("OFFLINE: not connected"), "{text}");
        assert!(
            text.contains("✕ connection lost: reset · retrying in 0.4 s"),
            "{text}"
        );
        assert!(!text.contains("LIVE"), "{text}");
        s.report(Report::Connecting, t0);
        s.report(Report::Connected, t0);
        s.report(Report::Message(me(None, false)), t0);
        let text = screen(&s);
        assert!(text.contains("MUTED"), "{text}");
        assert!(text.contains("reconnects 1"), "{text}");
        // The cough latch did not survive: the next C presses it again.
        assert_eq!(
            s.act(Action::CoughToggle, t0),
            vec![Do::Send(ClientMessage::Cough { down: true })]
        );
    }

    #[test]
    fn refusals_are_shown_in_words() {
        let t0 = Instant::now();
        let mut s = connected(t0);
        s.report(
            Report::Message(ServerMessage::Error {
                code: ErrorCode::ChannelTaken,
                message: "plenary/en is live from booth az (console 1); it must go off air first"
                    .into(),
                fatal: false,
            }),
            t0,
        );
        assert!(screen(&s).contains("plenary/en is live from booth az (console 1)"));
        s.tick(t0 + NOTICE_FOR);
        assert!(!screen(&s).contains("booth az"));
    }

    #[test]
    fn pings_measure_the_round_trip() {
        let t0 = Instant::now();
        let mut s = connected(t0);
        // Not a whole number of microseconds after the start, as real instants are not.
        let t1 = t0 + Duration::from_nanos(100_000_123);
        let sent = s.tick(t1);
        let [Do::Send(ClientMessage::Ping { t })] = sent.as_slice() else {
            panic!("expected one ping, got {sent:?}")
        };
        assert_eq!(
            s.tick(t1 + Duration::from_millis(500)),
            vec![],
            "one a second"
        );
        s.report(
            Report::Message(ServerMessage::Pong { t: *t }),
            t1 + Duration::from_micros(1500),
        );
        assert_eq!(s.rtt, Some(Duration::from_nanos(1_500_123)));
        assert!(screen(&s).contains("● connected · rtt 1.5 ms"));
        // No pings while not connected.
        let mut s = State::new("en", "1", false, t0);
        assert_eq!(s.tick(t1), vec![]);
    }

    #[test]
    fn meters_show_levels_clip_and_silence() {
        let t0 = Instant::now();
        let mut s = connected(t0);
        s.report(Report::Sent { rms: 18, peak: 0 }, t0);
        let header = FrameHeader {
            source: Source::Floor,
            channel: 0,
            sequence: 1,
            capture_us: 0,
            relay_us: 0,
            rms: 24,
            peak: 9,
        };
        s.report(Report::Heard(header), t0);
        let text = screen(&s);
        assert!(text.contains("peak - 0 dB  rms -18 dB  CLIP"), "{text}");
        assert!(!text.contains("overruns"), "{text}");
        s.report(Report::Overruns(3), t0);
        assert!(screen(&s).contains("CLIP  overruns 3"));
        assert!(
            text.contains("peak - 9 dB  rms -24 dB · plenary/floor"),
            "{text}"
        );
        s.tick(t0 + LEVEL_HOLD);
        let text = screen(&s);
        assert!(text.contains("silent · plenary/floor"), "{text}");
        assert!(text.contains("CLIP"), "the clip mark stays a while: {text}");
        s.tick(t0 + CLIP_HOLD);
        assert!(!screen(&s).contains("CLIP"));
    }

    #[test]
    fn quitting_while_live_asks_again() {
        let t0 = Instant::now();
        let mut s = connected(t0);
        assert_eq!(
            s.act(Action::Quit, t0),
            vec![Do::Quit],
            "muted: leaves at once"
        );
        s.report(Report::Message(me(Some("plenary/en"), false)), t0);
        assert_eq!(s.act(Action::Quit, t0), vec![]);
        assert!(screen(&s).contains("you are live: press q again"));
        assert_eq!(
            s.act(Action::Quit, t0 + Duration::from_secs(1)),
            vec![Do::Quit]
        );
        assert_eq!(s.act(Action::ForceQuit, t0), vec![Do::Quit]);
    }
}
