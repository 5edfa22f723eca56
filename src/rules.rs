//! The rules of simultaneous interpretation, as a state machine that does no I/O.
//!
//! Events (a console connects, a command, a frame arrives, time passes) go in with the time
//! `now`; decisions come out: which channel a frame goes to, which commands are refused and
//! why, what changed. The relay (`relay.rs`) feeds it and carries out what it says, so every
//! rule here is tested deterministically without sockets or sleeps.
//!
//! The rules:
//! - auto-floor: a channel with no live interpreter carries the floor, but only once it has
//!   been without one for its hold time, so a pause between two sentences never lets the floor
//!   in. Decisions are taken per frame, so a switch always falls on a frame boundary.
//! - interlock: one live console per channel; another booth asking for it is refused, or
//!   takes it over where the channel is configured so.
//! - handover: the live console offers, a partner accepts, and the channel passes from one
//!   to the other between two frames: no gap, no overlap.
//! - cough: the console stays live (the floor does not come in) but its sound is not carried.
//! - relay: a console hears the floor or any other channel; a loop of relays is refused.
//! - bi-active booths are live in one of their languages at a time.
//! - a console starts muted, whether it connects for the first time or reconnects.

use crate::config::Event;
use crate::protocol::{Carrying, ChannelInfo, ConsoleState, ErrorCode, LiveConsole};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A connection, as numbered by the relay.
pub type Session = u64;

/// Consoles one booth may have connected at once (two or three interpreters share a booth;
/// the bound keeps a misbehaving client from filling memory with console names).
pub const MAX_CONSOLES_PER_BOOTH: usize = 4;

/// A refused command: the code and the sentence the console shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

fn refuse<T>(code: ErrorCode, message: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        code,
        message: message.into(),
    })
}

/// What the relay must do after an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The channel list (what each channel carries, who is live) changed.
    ChannelsChanged,
    /// This console's own state changed: send it `console`, and resubscribe it to its input.
    ConsoleChanged(Session),
    /// Tell these consoles that `from` offers the microphone.
    HandoverOffered { to: Vec<Session>, from: String },
    /// Tell a console something happened to it (force-mute, take-over); not fatal.
    Notify(Session, Refusal),
    /// Close a connection (it was replaced by a newer one for the same console or floor).
    Close(Session, Refusal),
}

/// A console command, as the rules see it (channels already resolved to indices).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Live(Option<u16>),
    Mute,
    Cough(bool),
    Handover,
    Accept,
    Input(u16),
}

#[derive(Debug, Clone)]
struct Console {
    booth: usize,
    name: String,
    live: Option<u16>,
    cough: bool,
    /// Channel index the console hears (a floor channel or a relay).
    input: u16,
}

#[derive(Debug, Clone)]
struct ChannelState {
    live: Option<Session>,
    /// When the channel last lost its live console; `None` if it never had one.
    off_since: Option<Instant>,
    /// What it carried at the last decision, to notice changes.
    carrying: Carrying,
}

#[derive(Debug, Default, Clone)]
struct BoothState {
    consoles: Vec<Session>,
    /// The live console that offered the microphone to its partners.
    offer: Option<Session>,
}

/// The state of one event.
pub struct Rules {
    event: Arc<Event>,
    channels: Vec<ChannelState>,
    booths: Vec<BoothState>,
    consoles: HashMap<Session, Console>,
    /// Floor source session per room.
    floors: Vec<Option<Session>>,
}

impl Rules {
    pub fn new(event: Arc<Event>, now: Instant) -> Rules {
        let mut rules = Rules {
            channels: vec![
                ChannelState {
                    live: None,
                    off_since: None,
                    carrying: Carrying::Silence,
                };
                event.channels.len()
            ],
            booths: vec![BoothState::default(); event.booths.len()],
            consoles: HashMap::new(),
            floors: vec![None; event.rooms.len()],
            event,
        };
        for i in 0..rules.channels.len() {
            rules.channels[i].carrying = rules.carrying(i as u16, now);
        }
        rules
    }

    pub fn event(&self) -> &Arc<Event> {
        &self.event
    }

    fn room_of_channel(&self, channel: u16) -> usize {
        let room = &self.event.channels[channel as usize].room;
        self.event
            .rooms
            .iter()
            .position(|r| &r.id == room)
            .expect("every channel belongs to a room")
    }

    fn floor_of_booth(&self, booth: usize) -> u16 {
        let room = &self.event.booths[booth].room;
        self.event
            .rooms
            .iter()
            .find(|r| &r.id == room)
            .expect("every booth belongs to a room")
            .floor
    }

    /// What `channel` carries at `now`, from the current state.
    fn carrying(&self, channel: u16, now: Instant) -> Carrying {
        let cfg = &self.event.channels[channel as usize];
        if cfg.is_floor {
            return Carrying::Floor;
        }
        let st = &self.channels[channel as usize];
        if let Some(session) = st.live {
            let console = &self.consoles[&session];
            return if self.event.channels[console.input as usize].is_floor {
                Carrying::Interpreter
            } else {
                Carrying::Relay
            };
        }
        let held = st
            .off_since
            .is_some_and(|t| now.saturating_duration_since(t) < cfg.hold);
        if cfg.auto_floor && !held {
            Carrying::Floor
        } else {
            Carrying::Silence
        }
    }

    /// Recomputes every channel's carrying; reports a change.
    fn refresh(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let mut changed = false;
        for i in 0..self.channels.len() {
            let c = self.carrying(i as u16, now);
            if c != self.channels[i].carrying {
                self.channels[i].carrying = c;
                changed = true;
            }
        }
        if changed && !actions.contains(&Action::ChannelsChanged) {
            actions.push(Action::ChannelsChanged);
        }
    }

    /// Time passes with no frame: a hold may have run out. Call every ~100 ms.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        self.refresh(now, &mut actions);
        actions
    }

    /// A console of `booth` (index into `event.booths`) connects. It starts muted, hearing
    /// its room's floor. An earlier connection of the same console is closed.
    pub fn console_connect(
        &mut self,
        session: Session,
        booth: usize,
        name: &str,
        now: Instant,
    ) -> Result<Vec<Action>, Refusal> {
        let mut actions = Vec::new();
        let existing = self.booths[booth]
            .consoles
            .iter()
            .copied()
            .find(|s| self.consoles[s].name == name);
        if let Some(old) = existing {
            self.remove_console(old, now, &mut actions);
            actions.push(Action::Close(
                old,
                Refusal {
                    code: ErrorCode::Replaced,
                    message: format!("console {name} connected again from elsewhere"),
                },
            ));
        } else if self.booths[booth].consoles.len() >= MAX_CONSOLES_PER_BOOTH {
            return refuse(
                ErrorCode::Forbidden,
                format!(
                    "booth {} already has {MAX_CONSOLES_PER_BOOTH} consoles connected",
                    self.event.booths[booth].id
                ),
            );
        }
        let input = self.floor_of_booth(booth);
        self.consoles.insert(
            session,
            Console {
                booth,
                name: name.to_string(),
                live: None,
                cough: false,
                input,
            },
        );
        self.booths[booth].consoles.push(session);
        actions.push(Action::ConsoleChanged(session));
        Ok(actions)
    }

    /// A connection ended (console or floor; anything else is ignored).
    pub fn disconnect(&mut self, session: Session, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.consoles.contains_key(&session) {
            self.remove_console(session, now, &mut actions);
        }
        for f in self.floors.iter_mut() {
            if *f == Some(session) {
                *f = None;
            }
        }
        actions
    }

    fn remove_console(&mut self, session: Session, now: Instant, actions: &mut Vec<Action>) {
        self.go_off_air(session, now, actions);
        if let Some(console) = self.consoles.remove(&session) {
            let booth = &mut self.booths[console.booth];
            booth.consoles.retain(|s| *s != session);
        }
        self.refresh(now, actions);
    }

    fn go_off_air(&mut self, session: Session, now: Instant, actions: &mut Vec<Action>) {
        let Some(console) = self.consoles.get_mut(&session) else {
            return;
        };
        if let Some(ch) = console.live.take() {
            let st = &mut self.channels[ch as usize];
            if st.live == Some(session) {
                st.live = None;
                st.off_since = Some(now);
            }
            actions.push(Action::ConsoleChanged(session));
        }
        let booth = console.booth;
        if self.booths[booth].offer == Some(session) {
            self.booths[booth].offer = None;
        }
        self.refresh(now, actions);
    }

    /// The floor source of `room`, if one is connected.
    pub fn floor_session(&self, room: usize) -> Option<Session> {
        self.floors.get(room).copied().flatten()
    }

    /// The floor source of `room` connects; an earlier one is closed.
    pub fn floor_connect(&mut self, session: Session, room: usize) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Some(old) = self.floors[room].replace(session) {
            actions.push(Action::Close(
                old,
                Refusal {
                    code: ErrorCode::Replaced,
                    message: "another floor source connected for this room".into(),
                },
            ));
        }
        actions
    }

    /// A floor frame arrives from `session`: the channels it goes to (the room's floor channel
    /// first, then every channel carrying the floor), or nothing if `session` is not the
    /// room's current floor source.
    pub fn floor_frame(
        &mut self,
        session: Session,
        now: Instant,
        actions: &mut Vec<Action>,
    ) -> Vec<u16> {
        let Some(room) = self.floors.iter().position(|f| *f == Some(session)) else {
            return Vec::new();
        };
        self.refresh(now, actions);
        let room_id = &self.event.rooms[room].id;
        let floor = self.event.rooms[room].floor;
        let mut out = vec![floor];
        for (i, ch) in self.event.channels.iter().enumerate() {
            if &ch.room == room_id && !ch.is_floor && self.channels[i].carrying == Carrying::Floor {
                out.push(i as u16);
            }
        }
        out
    }

    /// An interpreter frame arrives from a console: the channel it goes to, if any.
    pub fn console_frame(&self, session: Session) -> Option<u16> {
        let console = self.consoles.get(&session)?;
        if console.cough {
            return None;
        }
        let ch = console.live?;
        (self.channels[ch as usize].live == Some(session)).then_some(ch)
    }

    /// A command from a console.
    pub fn command(
        &mut self,
        session: Session,
        cmd: Command,
        now: Instant,
    ) -> Result<Vec<Action>, Refusal> {
        let Some(console) = self.consoles.get(&session).cloned() else {
            return refuse(
                ErrorCode::Forbidden,
                "only a booth console may send this command",
            );
        };
        let booth_cfg = &self.event.booths[console.booth];
        let mut actions = Vec::new();
        match cmd {
            Command::Live(channel) => {
                let channel = channel.unwrap_or(booth_cfg.channels[0]);
                if !booth_cfg.channels.contains(&channel) {
                    return refuse(
                        ErrorCode::NotBoothLanguage,
                        format!(
                            "booth {} does not work into {}",
                            booth_cfg.id, self.event.channels[channel as usize].id
                        ),
                    );
                }
                if console.live == Some(channel) {
                    return Ok(actions);
                }
                if let Some(partner) = self.booths[console.booth]
                    .consoles
                    .iter()
                    .find(|s| **s != session && self.consoles[s].live.is_some())
                {
                    return refuse(
                        ErrorCode::PartnerLive,
                        format!(
                            "your partner at console {} is live: ask for a handover",
                            self.consoles[partner].name
                        ),
                    );
                }
                if let Some(loop_at) = self.loop_through(console.input, channel) {
                    return refuse(
                        ErrorCode::RelayLoop,
                        format!(
                            "you hear {} which is a relay of {}: going live there would make a loop",
                            self.event.channels[console.input as usize].id,
                            self.event.channels[loop_at as usize].id
                        ),
                    );
                }
                if let Some(holder) = self.channels[channel as usize].live {
                    let h = &self.consoles[&holder];
                    let hb = &self.event.booths[h.booth].id;
                    if !self.event.channels[channel as usize].takeover {
                        return refuse(
                            ErrorCode::ChannelTaken,
                            format!(
                                "{} is live from booth {hb} (console {}); it must go off air first",
                                self.event.channels[channel as usize].id, h.name
                            ),
                        );
                    }
                    actions.push(Action::Notify(
                        holder,
                        Refusal {
                            code: ErrorCode::ChannelTaken,
                            message: format!(
                                "booth {} took over {}",
                                booth_cfg.id, self.event.channels[channel as usize].id
                            ),
                        },
                    ));
                    self.go_off_air(holder, now, &mut actions);
                }
                // Bi-active booth: leaving the other language first.
                self.go_off_air(session, now, &mut actions);
                let c = self.consoles.get_mut(&session).expect("checked above");
                c.live = Some(channel);
                self.channels[channel as usize].live = Some(session);
                actions.push(Action::ConsoleChanged(session));
            }
            Command::Mute => {
                self.go_off_air(session, now, &mut actions);
            }
            Command::Cough(down) => {
                let c = self.consoles.get_mut(&session).expect("checked above");
                if c.cough != down {
                    c.cough = down;
                    actions.push(Action::ConsoleChanged(session));
                    if c.live.is_some() {
                        actions.push(Action::ChannelsChanged);
                    }
                }
            }
            Command::Handover => {
                if console.live.is_none() {
                    return refuse(ErrorCode::NotLive, "only the live console can hand over");
                }
                let to: Vec<Session> = self.booths[console.booth]
                    .consoles
                    .iter()
                    .copied()
                    .filter(|s| *s != session)
                    .collect();
                if to.is_empty() {
                    return refuse(
                        ErrorCode::NoHandover,
                        format!("no partner console is connected in booth {}", booth_cfg.id),
                    );
                }
                self.booths[console.booth].offer = Some(session);
                actions.push(Action::HandoverOffered {
                    to,
                    from: console.name.clone(),
                });
            }
            Command::Accept => {
                let booth = console.booth;
                let Some(from) = self.booths[booth].offer.filter(|s| *s != session) else {
                    return refuse(
                        ErrorCode::NoHandover,
                        "no partner has offered the microphone",
                    );
                };
                let channel = self.consoles[&from]
                    .live
                    .expect("an offer is cleared when its console goes off air");
                if let Some(loop_at) = self.loop_through(console.input, channel) {
                    return refuse(
                        ErrorCode::RelayLoop,
                        format!(
                            "you hear {} which is a relay of {}: taking the microphone would make a loop",
                            self.event.channels[console.input as usize].id,
                            self.event.channels[loop_at as usize].id
                        ),
                    );
                }
                // The channel passes between two frames: the partner's next frame is the
                // first carried; the channel is never without a live console.
                self.booths[booth].offer = None;
                self.consoles.get_mut(&from).expect("offer is live").live = None;
                self.consoles.get_mut(&session).expect("checked").live = Some(channel);
                self.channels[channel as usize].live = Some(session);
                actions.push(Action::ConsoleChanged(from));
                actions.push(Action::ConsoleChanged(session));
                actions.push(Action::ChannelsChanged);
            }
            Command::Input(channel) => {
                if booth_cfg.channels.contains(&channel) {
                    return refuse(
                        ErrorCode::RelayLoop,
                        format!(
                            "{} is your own booth's channel",
                            self.event.channels[channel as usize].id
                        ),
                    );
                }
                if let Some(live) = console.live {
                    if let Some(loop_at) = self.loop_through(channel, live) {
                        return refuse(
                            ErrorCode::RelayLoop,
                            format!(
                                "{} is a relay of {}: hearing it while live there would make a loop",
                                self.event.channels[channel as usize].id,
                                self.event.channels[loop_at as usize].id
                            ),
                        );
                    }
                }
                let c = self.consoles.get_mut(&session).expect("checked above");
                if c.input != channel {
                    c.input = channel;
                    actions.push(Action::ConsoleChanged(session));
                    if c.live.is_some() {
                        actions.push(Action::ChannelsChanged);
                    }
                }
            }
        }
        self.refresh(now, &mut actions);
        Ok(actions)
    }

    /// Puts back a console that was connected before this state was made: another place
    /// decided for the event until now (a cluster's decider died or stepped down). The console
    /// hears `input` and is live on `live` with its cough flag as it was, unless that is no
    /// longer allowed (the channel has a live console already, a partner is live, it would
    /// make a loop): then it comes back muted and is told why. Never takes a channel over.
    /// Returns the actions, `ConsoleChanged(session)` among them; a console refused outright
    /// (its booth is full) gets `Close`.
    pub fn restore_console(
        &mut self,
        session: Session,
        booth: usize,
        name: &str,
        state: (Option<u16>, u16, bool),
        now: Instant,
    ) -> Vec<Action> {
        let (live, input, cough) = state;
        let mut actions = match self.console_connect(session, booth, name, now) {
            Ok(a) => a,
            Err(r) => return vec![Action::Close(session, r)],
        };
        let n = self.event.channels.len();
        let valid = |c: u16| (c as usize) < n;
        if valid(input) && input != self.consoles[&session].input {
            if let Ok(a) = self.command(session, Command::Input(input), now) {
                actions.extend(a);
            }
        }
        if let Some(ch) = live.filter(|c| valid(*c)) {
            let result = match self.channels[ch as usize].live {
                Some(holder) => {
                    let h = &self.consoles[&holder];
                    refuse(
                        ErrorCode::ChannelTaken,
                        format!(
                            "{} is live from booth {} (console {}); you are muted",
                            self.event.channels[ch as usize].id,
                            self.event.booths[h.booth].id,
                            h.name
                        ),
                    )
                }
                None => self.command(session, Command::Live(Some(ch)), now),
            };
            match result {
                Ok(a) => actions.extend(a),
                Err(r) => actions.push(Action::Notify(session, r)),
            }
        }
        if cough {
            if let Ok(a) = self.command(session, Command::Cough(true), now) {
                actions.extend(a);
            }
        }
        actions
    }

    /// Engineer: takes a console off air.
    pub fn force_mute(
        &mut self,
        booth: &str,
        console: &str,
        now: Instant,
    ) -> Result<Vec<Action>, Refusal> {
        let Some(b) = self.event.booths.iter().position(|b| b.id == booth) else {
            return refuse(
                ErrorCode::UnknownBooth,
                format!("there is no booth {booth}"),
            );
        };
        let Some(session) = self.booths[b]
            .consoles
            .iter()
            .copied()
            .find(|s| self.consoles[s].name == console)
        else {
            return refuse(
                ErrorCode::NotLive,
                format!("console {console} of booth {booth} is not connected"),
            );
        };
        let mut actions = Vec::new();
        if self.consoles[&session].live.is_some() {
            actions.push(Action::Notify(
                session,
                Refusal {
                    code: ErrorCode::Forbidden,
                    message: "the sound engineer muted this console".into(),
                },
            ));
        }
        self.go_off_air(session, now, &mut actions);
        Ok(actions)
    }

    /// If hearing `input` while live on `target` would make a loop, the channel where the
    /// chain of relays comes back to `target`.
    fn loop_through(&self, input: u16, target: u16) -> Option<u16> {
        if input == target {
            return Some(target);
        }
        let chain = self.chain(input);
        chain.contains(&target).then_some(input)
    }

    /// Channels a channel's sound comes through: for a relay, the channel its live console
    /// hears, and so on, ending at the floor. Bounded by the number of channels.
    fn chain(&self, channel: u16) -> Vec<u16> {
        let mut out = Vec::new();
        let mut at = channel;
        for _ in 0..self.channels.len() {
            let Some(s) = self.channels[at as usize].live else {
                break;
            };
            let input = self.consoles[&s].input;
            if out.contains(&input) || input == channel {
                break;
            }
            out.push(input);
            if self.event.channels[input as usize].is_floor {
                break;
            }
            at = input;
        }
        out
    }

    /// The state of a console, as sent to it.
    pub fn console_state(&self, session: Session) -> Option<ConsoleState> {
        let c = self.consoles.get(&session)?;
        let booth = &self.event.booths[c.booth];
        Some(ConsoleState {
            booth: booth.id.clone(),
            console: c.name.clone(),
            live: c.live.map(|i| self.event.channels[i as usize].id.clone()),
            cough: c.cough,
            input: self.event.channels[c.input as usize].id.clone(),
            channels: booth
                .channels
                .iter()
                .map(|i| self.event.channels[*i as usize].id.clone())
                .collect(),
        })
    }

    /// The channel index a console hears.
    pub fn console_input(&self, session: Session) -> Option<u16> {
        self.consoles.get(&session).map(|c| c.input)
    }

    /// Sessions of the connected consoles of a booth.
    pub fn booth_consoles(&self, booth: usize) -> &[Session] {
        &self.booths[booth].consoles
    }

    /// Every channel as listed to clients.
    pub fn channel_infos(&self) -> Vec<ChannelInfo> {
        self.event
            .channels
            .iter()
            .enumerate()
            .map(|(i, cfg)| {
                let st = &self.channels[i];
                let live = st.live.map(|s| {
                    let c = &self.consoles[&s];
                    LiveConsole {
                        booth: self.event.booths[c.booth].id.clone(),
                        console: c.name.clone(),
                        cough: c.cough,
                    }
                });
                let relay_chain = if st.carrying == Carrying::Relay {
                    let mut chain: Vec<String> = self
                        .chain(i as u16)
                        .iter()
                        .map(|c| self.event.channels[*c as usize].id.clone())
                        .collect();
                    let floor = &self.event.rooms[self.room_of_channel(i as u16)];
                    let floor_id = &self.event.channels[floor.floor as usize].id;
                    if chain.last() != Some(floor_id) {
                        chain.push(floor_id.clone());
                    }
                    chain
                } else {
                    Vec::new()
                };
                ChannelInfo {
                    id: cfg.id.clone(),
                    index: i as u16,
                    room: cfg.room.clone(),
                    lang: cfg.lang.clone(),
                    name: cfg.name.clone(),
                    native: cfg.native.clone(),
                    carrying: st.carrying,
                    live,
                    relay_chain,
                }
            })
            .collect()
    }

    /// Hold time of a channel (for tests and the engineer's view).
    pub fn hold(&self, channel: u16) -> Duration {
        self.event.channels[channel as usize].hold
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Event;

    const EVENT: &str = r#"
[event]
name = "test"
[[rooms]]
id = "p"
[[rooms.channels]]
lang = "az"
name = "Azerbaijani"
native = "Azərbaycanca"
[[rooms.channels]]
lang = "en"
name = "English"
native = "English"
hold_ms = 1000
[[rooms.channels]]
lang = "ru"
name = "Russian"
native = "Русский"
takeover = true
[[rooms.channels]]
lang = "ar"
name = "Arabic"
native = "العربية"
auto_floor = false
[[rooms.booths]]
id = "az"
languages = ["az", "en"]
[[rooms.booths]]
id = "en"
languages = ["en"]
[[rooms.booths]]
id = "ru"
languages = ["ru"]
[[rooms.booths]]
id = "ru2"
languages = ["ru"]
[[rooms.booths]]
id = "ar"
languages = ["ar"]
"#;
    // Channel indices: 0 floor, 1 az, 2 en, 3 ru, 4 ar. Booths: 0 az, 1 en, 2 ru, 3 ru2, 4 ar.
    const FLOOR: u16 = 0;
    const AZ: u16 = 1;
    const EN: u16 = 2;
    const RU: u16 = 3;
    const AR: u16 = 4;

    struct T {
        rules: Rules,
        t0: Instant,
    }

    impl T {
        fn new() -> T {
            let event = Arc::new(Event::parse(EVENT, "t", &|_| None).unwrap());
            let t0 = Instant::now();
            let mut rules = Rules::new(event, t0);
            rules.floor_connect(100, 0);
            T { rules, t0 }
        }
        fn at(&self, ms: u64) -> Instant {
            self.t0 + Duration::from_millis(ms)
        }
        fn connect(&mut self, session: Session, booth: usize, name: &str) {
            self.rules
                .console_connect(session, booth, name, self.t0)
                .unwrap();
        }
        fn cmd(&mut self, session: Session, cmd: Command, ms: u64) -> Result<Vec<Action>, Refusal> {
            let now = self.at(ms);
            self.rules.command(session, cmd, now)
        }
        fn floor_to(&mut self, ms: u64) -> Vec<u16> {
            let now = self.at(ms);
            let mut a = Vec::new();
            self.rules.floor_frame(100, now, &mut a)
        }
        fn carrying(&self, ch: u16) -> Carrying {
            self.rules.channel_infos()[ch as usize].carrying
        }
    }

    #[test]
    fn floor_goes_to_floor_and_every_auto_floor_channel_but_not_silent_ones() {
        let mut t = T::new();
        assert_eq!(t.floor_to(0), vec![FLOOR, AZ, EN, RU]);
        assert_eq!(t.carrying(AR), Carrying::Silence);
        // A frame from anyone but the floor source is not carried.
        let mut a = Vec::new();
        assert!(t.rules.floor_frame(5, t.at(0), &mut a).is_empty());
    }

    #[test]
    fn live_takes_the_channel_and_mute_lets_the_floor_back_after_the_hold() {
        let mut t = T::new();
        t.connect(1, 1, "1");
        assert_eq!(t.rules.console_frame(1), None, "a console starts muted");
        t.cmd(1, Command::Live(None), 0).unwrap();
        assert_eq!(t.rules.console_frame(1), Some(EN));
        assert_eq!(t.floor_to(20), vec![FLOOR, AZ, RU]);
        assert_eq!(t.carrying(EN), Carrying::Interpreter);

        t.cmd(1, Command::Mute, 1000).unwrap();
        assert_eq!(t.rules.console_frame(1), None);
        // A pause shorter than the hold (1000 ms on en): silence, not the floor.
        assert_eq!(t.floor_to(1020), vec![FLOOR, AZ, RU]);
        assert_eq!(t.carrying(EN), Carrying::Silence);
        assert_eq!(t.floor_to(1980), vec![FLOOR, AZ, RU]);
        // Back live within the hold: the floor never came in.
        t.cmd(1, Command::Live(None), 1990).unwrap();
        t.cmd(1, Command::Mute, 2000).unwrap();
        assert_eq!(t.floor_to(2999), vec![FLOOR, AZ, RU]);
        // The hold ran out: the next floor frame goes to en as well.
        assert_eq!(t.floor_to(3000), vec![FLOOR, AZ, EN, RU]);
        assert_eq!(t.carrying(EN), Carrying::Floor);
    }

    #[test]
    fn hold_expiry_is_reported_by_tick_without_frames() {
        let mut t = T::new();
        t.connect(1, 1, "1");
        t.cmd(1, Command::Live(None), 0).unwrap();
        t.cmd(1, Command::Mute, 100).unwrap();
        assert!(t.rules.tick(t.at(500)).is_empty());
        assert_eq!(t.rules.tick(t.at(1100)), vec![Action::ChannelsChanged]);
        assert_eq!(t.carrying(EN), Carrying::Floor);
    }

    #[test]
    fn a_disconnected_console_leaves_the_floor_and_comes_back_muted() {
        let mut t = T::new();
        t.connect(1, 1, "1");
        t.cmd(1, Command::Live(None), 0).unwrap();
        t.rules.disconnect(1, t.at(500));
        assert_eq!(t.carrying(EN), Carrying::Silence);
        assert_eq!(t.floor_to(1500), vec![FLOOR, AZ, EN, RU]);
        t.connect(2, 1, "1");
        assert_eq!(t.rules.console_frame(2), None);
        assert_eq!(t.rules.console_state(2).unwrap().live, None);
    }

    #[test]
    fn reconnecting_console_replaces_the_old_connection_off_air() {
        let mut t = T::new();
        t.connect(1, 1, "1");
        t.cmd(1, Command::Live(None), 0).unwrap();
        let actions = t.rules.console_connect(2, 1, "1", t.at(10)).unwrap();
        assert!(actions
            .iter()
            .any(|a| matches!(a, Action::Close(1, r) if r.code == ErrorCode::Replaced)));
        assert_eq!(t.rules.console_frame(1), None);
        assert_eq!(t.rules.console_frame(2), None);
        assert_eq!(t.carrying(EN), Carrying::Silence);
    }

    #[test]
    fn interlock_refuses_another_booth_with_the_reason() {
        let mut t = T::new();
        t.connect(1, 1, "1"); // en booth
        t.connect(2, 0, "1"); // az booth, bi-active az+en
        t.cmd(1, Command::Live(None), 0).unwrap();
        let r = t.cmd(2, Command::Live(Some(EN)), 10).unwrap_err();
        assert_eq!(r.code, ErrorCode::ChannelTaken);
        assert_eq!(
            r.message,
            "p/en is live from booth en (console 1); it must go off air first"
        );
        assert_eq!(t.rules.console_frame(1), Some(EN));
        assert_eq!(t.rules.console_frame(2), None);
    }

    #[test]
    fn takeover_channel_passes_to_the_asking_booth() {
        let mut t = T::new();
        t.connect(1, 2, "1"); // ru
        t.connect(2, 3, "1"); // ru2
        t.cmd(1, Command::Live(None), 0).unwrap();
        let actions = t.cmd(2, Command::Live(None), 10).unwrap();
        assert!(actions
            .iter()
            .any(|a| matches!(a, Action::Notify(1, r) if r.code == ErrorCode::ChannelTaken)));
        assert_eq!(t.rules.console_frame(1), None);
        assert_eq!(t.rules.console_frame(2), Some(RU));
    }

    #[test]
    fn a_booth_may_only_go_live_on_its_languages() {
        let mut t = T::new();
        t.connect(1, 1, "1");
        let r = t.cmd(1, Command::Live(Some(RU)), 0).unwrap_err();
        assert_eq!(r.code, ErrorCode::NotBoothLanguage);
        assert_eq!(r.message, "booth en does not work into p/ru");
    }

    #[test]
    fn bi_active_booth_is_live_in_one_language_at_a_time() {
        let mut t = T::new();
        t.connect(1, 0, "1");
        t.connect(2, 0, "2");
        t.cmd(1, Command::Live(Some(AZ)), 0).unwrap();
        t.cmd(1, Command::Live(Some(EN)), 100).unwrap();
        assert_eq!(t.rules.console_frame(1), Some(EN));
        assert_eq!(
            t.carrying(AZ),
            Carrying::Silence,
            "az is holding before the floor"
        );
        assert_eq!(t.floor_to(2000), vec![FLOOR, AZ, RU]);
        // The partner cannot open the other language meanwhile.
        let r = t.cmd(2, Command::Live(Some(AZ)), 2100).unwrap_err();
        assert_eq!(r.code, ErrorCode::PartnerLive);
    }

    #[test]
    fn handover_passes_the_channel_without_a_gap() {
        let mut t = T::new();
        t.connect(1, 1, "1");
        t.connect(2, 1, "2");
        t.cmd(1, Command::Live(None), 0).unwrap();
        assert_eq!(
            t.cmd(2, Command::Accept, 5).unwrap_err().code,
            ErrorCode::NoHandover
        );
        assert_eq!(
            t.cmd(2, Command::Handover, 5).unwrap_err().code,
            ErrorCode::NotLive
        );
        let a = t.cmd(1, Command::Handover, 10).unwrap();
        assert_eq!(
            a,
            vec![Action::HandoverOffered {
                to: vec![2],
                from: "1".into()
            }]
        );
        // Until accepted, console 1 stays on air.
        assert_eq!(t.rules.console_frame(1), Some(EN));
        assert_eq!(t.rules.console_frame(2), None);
        t.cmd(2, Command::Accept, 20).unwrap();
        assert_eq!(t.rules.console_frame(1), None);
        assert_eq!(t.rules.console_frame(2), Some(EN));
        // The channel was never free: the floor does not come in even after the hold.
        assert_eq!(t.floor_to(5000), vec![FLOOR, AZ, RU]);
        assert_eq!(
            t.rules.channel_infos()[EN as usize]
                .live
                .as_ref()
                .unwrap()
                .console,
            "2"
        );
    }

    #[test]
    fn handover_needs_a_partner() {
        let mut t = T::new();
        t.connect(1, 1, "1");
        t.cmd(1, Command::Live(None), 0).unwrap();
        let r = t.cmd(1, Command::Handover, 10).unwrap_err();
        assert_eq!(r.code, ErrorCode::NoHandover);
    }

    #[test]
    fn offer_lapses_when_the_offering_console_mutes() {
        let mut t = T::new();
        t.connect(1, 1, "1");
        t.connect(2, 1, "2");
        t.cmd(1, Command::Live(None), 0).unwrap();
        t.cmd(1, Command::Handover, 10).unwrap();
        t.cmd(1, Command::Mute, 20).unwrap();
        assert_eq!(
            t.cmd(2, Command::Accept, 30).unwrap_err().code,
            ErrorCode::NoHandover
        );
    }

    #[test]
    fn cough_holds_the_channel_but_carries_nothing() {
        let mut t = T::new();
        t.connect(1, 1, "1");
        t.cmd(1, Command::Live(None), 0).unwrap();
        t.cmd(1, Command::Cough(true), 10).unwrap();
        assert_eq!(t.rules.console_frame(1), None);
        assert_eq!(
            t.floor_to(5000),
            vec![FLOOR, AZ, RU],
            "no floor during a cough"
        );
        assert!(
            t.rules.channel_infos()[EN as usize]
                .live
                .as_ref()
                .unwrap()
                .cough
        );
        t.cmd(1, Command::Cough(false), 5010).unwrap();
        assert_eq!(t.rules.console_frame(1), Some(EN));
    }

    #[test]
    fn relay_and_relay_of_relay_are_shown_as_chains() {
        let mut t = T::new();
        t.connect(1, 1, "1"); // en from floor
        t.connect(2, 4, "1"); // ar from en
        t.connect(3, 2, "1"); // ru from ar
        t.cmd(1, Command::Live(None), 0).unwrap();
        t.cmd(2, Command::Input(EN), 0).unwrap();
        t.cmd(2, Command::Live(None), 0).unwrap();
        t.cmd(3, Command::Input(AR), 0).unwrap();
        t.cmd(3, Command::Live(None), 0).unwrap();
        let infos = t.rules.channel_infos();
        assert_eq!(infos[EN as usize].carrying, Carrying::Interpreter);
        assert_eq!(infos[AR as usize].carrying, Carrying::Relay);
        assert_eq!(infos[AR as usize].relay_chain, vec!["p/en", "p/floor"]);
        assert_eq!(infos[RU as usize].carrying, Carrying::Relay);
        assert_eq!(
            infos[RU as usize].relay_chain,
            vec!["p/ar", "p/en", "p/floor"]
        );
        assert_eq!(t.rules.console_input(3), Some(AR));
    }

    #[test]
    fn relay_loops_are_refused() {
        let mut t = T::new();
        t.connect(1, 1, "1"); // en
        t.connect(2, 4, "1"); // ar
        t.cmd(2, Command::Input(EN), 0).unwrap();
        t.cmd(2, Command::Live(None), 0).unwrap();
        // en live hearing ar, which is a relay of en: a loop.
        t.cmd(1, Command::Live(None), 0).unwrap();
        let r = t.cmd(1, Command::Input(AR), 0).unwrap_err();
        assert_eq!(r.code, ErrorCode::RelayLoop);
        // Own channel as input is refused too.
        assert_eq!(
            t.cmd(1, Command::Input(EN), 0).unwrap_err().code,
            ErrorCode::RelayLoop
        );
        // The other order: hearing ar first, then going live on en.
        t.cmd(1, Command::Mute, 0).unwrap();
        t.cmd(1, Command::Input(AR), 0).unwrap();
        assert_eq!(
            t.cmd(1, Command::Live(None), 0).unwrap_err().code,
            ErrorCode::RelayLoop
        );
    }

    #[test]
    fn engineer_force_mute() {
        let mut t = T::new();
        t.connect(1, 1, "1");
        t.cmd(1, Command::Live(None), 0).unwrap();
        let a = t.rules.force_mute("en", "1", t.at(10)).unwrap();
        assert!(a.iter().any(|a| matches!(a, Action::Notify(1, _))));
        assert_eq!(t.rules.console_frame(1), None);
        assert_eq!(
            t.rules.force_mute("xx", "1", t.at(10)).unwrap_err().code,
            ErrorCode::UnknownBooth
        );
        assert_eq!(
            t.rules.force_mute("en", "9", t.at(10)).unwrap_err().code,
            ErrorCode::NotLive
        );
    }

    #[test]
    fn consoles_per_booth_are_bounded() {
        let mut t = T::new();
        for i in 0..MAX_CONSOLES_PER_BOOTH {
            t.connect(i as u64 + 1, 1, &format!("{i}"));
        }
        let r = t.rules.console_connect(99, 1, "extra", t.t0).unwrap_err();
        assert_eq!(r.code, ErrorCode::Forbidden);
        // A reconnect of an existing console is still accepted.
        t.rules.console_connect(98, 1, "0", t.t0).unwrap();
    }
}

#[cfg(test)]
mod restore_tests {
    use super::*;
    use crate::config::Event;

    const EVENT: &str = r#"
[event]
name = "test"
[[rooms]]
id = "p"
[[rooms.channels]]
lang = "en"
name = "English"
native = "English"
[[rooms.channels]]
lang = "ru"
name = "Russian"
native = "Русский"
takeover = true
[[rooms.booths]]
id = "en"
languages = ["en"]
[[rooms.booths]]
id = "ru"
languages = ["ru"]
[[rooms.booths]]
id = "ru2"
languages = ["ru"]
"#;
    // Channels: 0 floor, 1 en, 2 ru. Booths: 0 en, 1 ru, 2 ru2.

    #[test]
    fn a_restored_console_is_live_as_it_was_and_a_second_claim_comes_back_muted() {
        let event = Arc::new(Event::parse(EVENT, "t", &|_| None).unwrap());
        let now = Instant::now();
        let mut rules = Rules::new(event, now);
        let a = rules.restore_console(1, 1, "1", (Some(2), 1, true), now);
        assert!(a.contains(&Action::ConsoleChanged(1)));
        let s = rules.console_state(1).unwrap();
        assert_eq!(s.live.as_deref(), Some("p/ru"));
        assert_eq!(s.input, "p/en");
        assert!(s.cough);
        // A second claim on the channel (even a take-over channel) never takes it.
        let b = rules.restore_console(2, 2, "1", (Some(2), 0, false), now);
        assert!(b
            .iter()
            .any(|a| matches!(a, Action::Notify(2, r) if r.code == ErrorCode::ChannelTaken)));
        assert_eq!(rules.console_state(2).unwrap().live, None);
        assert_eq!(
            rules.console_state(1).unwrap().live.as_deref(),
            Some("p/ru")
        );
    }
}
