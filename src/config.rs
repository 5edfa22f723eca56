//! The event: rooms, their channels and booths, and the secrets of each role.
//!
//! Read from TOML (see `config/default.toml`, which is also compiled in as the default event).
//! Every error names the file, the line and the field, so a sound engineer can fix it without
//! reading code.

use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

/// The default event, used when `serve` gets no `--config`.
pub const DEFAULT_EVENT: &str = include_str!("../config/default.toml");
/// Name shown in errors for the built-in event.
pub const DEFAULT_EVENT_NAME: &str = "<built-in default event>";

/// Default wait between an interpreter going off air and the floor coming in.
pub const DEFAULT_HOLD_MS: u64 = 1500;
/// Bounds on what one event may declare; every map in the relay is sized from these.
pub const MAX_ROOMS: usize = 32;
pub const MAX_CHANNELS_PER_ROOM: usize = 64;
pub const MAX_BOOTHS_PER_ROOM: usize = 64;
pub const MAX_HOLD_MS: u64 = 60_000;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot read config file {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}: {field}: {message}")]
    Invalid {
        file: String,
        line: usize,
        field: String,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    event: RawEvent,
    #[serde(default)]
    secrets: RawSecrets,
    #[serde(default)]
    rooms: Vec<RawRoom>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    name: String,
    #[serde(default)]
    access_code: Option<String>,
    /// Extra delay suggested to listeners, to line up with a delayed video.
    #[serde(default)]
    listener_delay_ms: Option<Spanned<u32>>,
    /// The delegate page's language when the browser's languages have none of the page's.
    #[serde(default)]
    page_language: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecrets {
    floor: Option<String>,
    engineer: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoom {
    id: Spanned<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    channels: Vec<RawChannel>,
    #[serde(default)]
    booths: Vec<RawBooth>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannel {
    lang: Spanned<String>,
    name: String,
    native: String,
    #[serde(default = "default_true")]
    auto_floor: bool,
    #[serde(default)]
    hold_ms: Option<Spanned<u64>>,
    #[serde(default)]
    takeover: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBooth {
    id: Spanned<String>,
    languages: Spanned<Vec<String>>,
    #[serde(default)]
    secret: Option<String>,
}

fn default_true() -> bool {
    true
}

/// Longest extra delay a listener may be asked to add (a video delay is rarely above a second
/// or two).
pub const MAX_LISTENER_DELAY_MS: u32 = 5000;

/// A validated event.
#[derive(Debug, Clone)]
pub struct Event {
    pub name: String,
    pub access_code: Option<String>,
    /// Extra delay suggested to listeners (milliseconds), to line up with a delayed video.
    pub listener_delay_ms: u32,
    /// The delegate page's default language (a language tag such as `az`, `fr` or `pt-br`),
    /// used when none of the browser's languages is one of the page's; `None`: English.
    pub page_language: Option<String>,
    pub floor_secret: String,
    pub engineer_secret: String,
    pub rooms: Vec<Room>,
    /// Every channel of every room, floors included; a channel's position is its wire index.
    pub channels: Vec<Channel>,
    pub booths: Vec<Booth>,
    /// Secrets that were generated at start (role, secret), to be printed once by `serve`.
    pub generated: Vec<(String, String)>,
    /// What a person should know about the event (weak secrets), without the secrets.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Room {
    pub id: String,
    pub name: String,
    /// Index of the room's floor channel.
    pub floor: u16,
}

#[derive(Debug, Clone)]
pub struct Channel {
    /// `room/lang`; the floor is `room/floor`.
    pub id: String,
    pub room: String,
    pub lang: String,
    pub name: String,
    pub native: String,
    pub is_floor: bool,
    /// Carry the floor when no interpreter is live.
    pub auto_floor: bool,
    pub hold: Duration,
    /// A booth asking for this channel while another booth is live on it takes it over
    /// instead of being refused.
    pub takeover: bool,
}

#[derive(Debug, Clone)]
pub struct Booth {
    pub id: String,
    pub room: String,
    /// Channel indices it may go live on, its main language first.
    pub channels: Vec<u16>,
    pub secret: String,
}

impl Event {
    /// The built-in default event.
    pub fn default_event() -> Event {
        Event::parse(DEFAULT_EVENT, DEFAULT_EVENT_NAME, &|_| None)
            .expect("the built-in default event is valid")
    }

    /// Reads and validates an event file; secrets may come from the environment.
    pub fn load(path: &Path) -> Result<Event, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            file: path.display().to_string(),
            source,
        })?;
        Event::parse(&text, &path.display().to_string(), &|k| {
            std::env::var(k).ok()
        })
    }

    /// The built-in default event, secrets from the environment.
    pub fn default_with_env() -> Event {
        Event::parse(DEFAULT_EVENT, DEFAULT_EVENT_NAME, &|k| {
            std::env::var(k).ok()
        })
        .expect("the built-in default event is valid")
    }

    /// Parses `text`; `file` names it in errors; `env` looks up environment variables.
    pub fn parse(
        text: &str,
        file: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Event, Error> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
            Error::Invalid {
                file: file.to_string(),
                line,
                field: field_of_toml_error(&e, text),
                message: toml_message(&e, text),
            }
        })?;
        Validator { text, file }.build(raw, env)
    }

    pub fn channel_index(&self, id: &str) -> Option<u16> {
        self.channels
            .iter()
            .position(|c| c.id == id)
            .map(|i| i as u16)
    }

    /// The floor of the room that channel `index` belongs to, unless it is that floor itself.
    pub fn floor_under(&self, index: u16) -> Option<u16> {
        let ch = self.channels.get(index as usize)?;
        if ch.is_floor {
            return None;
        }
        self.channels
            .iter()
            .position(|c| c.is_floor && c.room == ch.room)
            .map(|i| i as u16)
    }

    /// Resolves what a user typed: a full id (`plenary/en`) or, where unique, a language
    /// code (`en`) or `floor`.
    pub fn resolve_channel(&self, name: &str) -> Option<u16> {
        if let Some(i) = self.channel_index(name) {
            return Some(i);
        }
        let mut matches = self
            .channels
            .iter()
            .enumerate()
            .filter(|(_, c)| c.lang == name);
        match (matches.next(), matches.next()) {
            (Some((i, _)), None) => Some(i as u16),
            _ => None,
        }
    }

    pub fn booth(&self, id: &str) -> Option<&Booth> {
        self.booths.iter().find(|b| b.id == id)
    }
}

/// A language tag as the page takes it: `az`, `fr`, `pt-BR`, `zh-Hant` (letters first, then
/// parts of 1 to 8 letters or digits), at most 35 characters.
fn is_language_tag(tag: &str) -> bool {
    let mut parts = tag.split('-');
    let first = parts.next().unwrap_or("");
    tag.len() <= 35
        && (2..=8).contains(&first.len())
        && first.bytes().all(|b| b.is_ascii_alphabetic())
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// What is wrong, from a TOML/serde error. toml gives some syntax errors (a control character in
/// a comment) no message at all: name the character it stopped at instead.
fn toml_message(e: &toml::de::Error, text: &str) -> String {
    if !e.message().trim().is_empty() {
        return e.message().to_string();
    }
    let at = e.span().and_then(|s| text.get(s.start..)?.chars().next());
    match at {
        Some(c) => format!("invalid TOML: unexpected character {c:?}"),
        None => "invalid TOML: unexpected end of file".to_string(),
    }
}

/// Names the field of a TOML/serde error: the one the message quotes ("unknown field `x`",
/// "missing field `y`"), else the key on the line the error points at.
fn field_of_toml_error(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message();
    if let Some(start) = msg.find('`') {
        if let Some(len) = msg[start + 1..].find('`') {
            return match &msg[start + 1..start + 1 + len] {
                // The empty key (`'' = 1`), spelled as in TOML rather than left blank.
                "" => "\"\"".to_string(),
                field => field.to_string(),
            };
        }
    }
    let line = e
        .span()
        .and_then(|s| {
            text[..s.start.min(text.len())]
                .lines()
                .last()
                .map(str::to_string)
        })
        .unwrap_or_default();
    match line.split_once('=') {
        Some((key, _)) if !key.trim().is_empty() => key.trim().to_string(),
        _ => "syntax".to_string(),
    }
}

struct Validator<'a> {
    text: &'a str,
    file: &'a str,
}

impl Validator<'_> {
    fn err(&self, span: std::ops::Range<usize>, field: String, message: String) -> Error {
        Error::Invalid {
            file: self.file.to_string(),
            line: line_of(self.text, span.start),
            field,
            message,
        }
    }

    fn build(&self, raw: RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Event, Error> {
        if raw.rooms.is_empty() {
            return Err(Error::Invalid {
                file: self.file.to_string(),
                line: 1,
                field: "rooms".into(),
                message: "the event has no room: add a [[rooms]] table with its channels".into(),
            });
        }
        if raw.rooms.len() > MAX_ROOMS {
            return Err(Error::Invalid {
                file: self.file.to_string(),
                line: 1,
                field: "rooms".into(),
                message: format!("{} rooms; at most {MAX_ROOMS} are allowed", raw.rooms.len()),
            });
        }
        let mut generated = Vec::new();
        let mut warnings = Vec::new();
        let mut secret = |role: String, env_key: &str, from_file: Option<String>| -> String {
            let given = env(env_key)
                .filter(|s| !s.is_empty())
                .map(|s| (s, env_key.to_string()))
                .or_else(|| {
                    from_file
                        .filter(|s| !s.is_empty())
                        .map(|s| (s, self.file.to_string()))
                });
            if let Some((s, from)) = given {
                if let Some(why) = weak_secret(&s) {
                    warnings.push(format!(
                        "the secret for {role} (from {from}) is weak: {why}; use {MIN_SECRET_LEN} or more characters, not only digits, or leave it out to have one generated"
                    ));
                }
                return s;
            }
            let s = generate_secret();
            generated.push((role, s.clone()));
            s
        };
        let floor_secret = secret("floor".into(), "BOOTHCAST_FLOOR_SECRET", raw.secrets.floor);
        let engineer_secret = secret(
            "engineer".into(),
            "BOOTHCAST_ENGINEER_SECRET",
            raw.secrets.engineer,
        );
        let access_code = env("BOOTHCAST_ACCESS_CODE")
            .or(raw.event.access_code)
            .filter(|s| !s.is_empty());
        let listener_delay_ms = match raw.event.listener_delay_ms {
            Some(d) if *d.get_ref() > MAX_LISTENER_DELAY_MS => {
                return Err(self.err(
                    d.span(),
                    "event.listener_delay_ms".into(),
                    format!("at most {MAX_LISTENER_DELAY_MS} ms"),
                ))
            }
            Some(d) => d.into_inner(),
            None => 0,
        };
        let page_language = match raw.event.page_language {
            Some(l) if !is_language_tag(l.get_ref()) => {
                return Err(self.err(
                    l.span(),
                    "event.page_language".into(),
                    "a language tag such as \"az\" or \"pt-br\": 2 to 8 letters, then \
                     optional parts of letters and digits after a -"
                        .into(),
                ))
            }
            Some(l) => Some(l.into_inner().to_ascii_lowercase()),
            None => None,
        };

        let mut rooms = Vec::new();
        let mut channels: Vec<Channel> = Vec::new();
        let mut booths: Vec<Booth> = Vec::new();
        let mut room_ids = HashSet::new();
        let mut booth_ids = HashSet::new();
        for (ri, room) in raw.rooms.into_iter().enumerate() {
            let rid = room.id.get_ref().clone();
            let field = format!("rooms[{ri}].id");
            check_id(&rid).map_err(|m| self.err(room.id.span(), field.clone(), m))?;
            if !room_ids.insert(rid.clone()) {
                return Err(self.err(
                    room.id.span(),
                    field,
                    format!("room `{rid}` is declared twice"),
                ));
            }
            if room.channels.is_empty() {
                return Err(self.err(
                    room.id.span(),
                    format!("rooms[{ri}].channels"),
                    format!("room `{rid}` has no channel: add [[rooms.channels]] tables"),
                ));
            }
            if room.channels.len() > MAX_CHANNELS_PER_ROOM {
                return Err(self.err(
                    room.id.span(),
                    format!("rooms[{ri}].channels"),
                    format!(
                        "{} channels; at most {MAX_CHANNELS_PER_ROOM} per room",
                        room.channels.len()
                    ),
                ));
            }
            if room.booths.len() > MAX_BOOTHS_PER_ROOM {
                return Err(self.err(
                    room.id.span(),
                    format!("rooms[{ri}].booths"),
                    format!(
                        "{} booths; at most {MAX_BOOTHS_PER_ROOM} per room",
                        room.booths.len()
                    ),
                ));
            }
            let floor = channels.len() as u16;
            channels.push(Channel {
                id: format!("{rid}/floor"),
                room: rid.clone(),
                lang: "floor".into(),
                name: "Floor".into(),
                native: "Floor".into(),
                is_floor: true,
                auto_floor: false,
                hold: Duration::ZERO,
                takeover: false,
            });
            let mut langs: HashMap<String, u16> = HashMap::new();
            for (ci, ch) in room.channels.into_iter().enumerate() {
                let lang = ch.lang.get_ref().clone();
                let field = format!("rooms[{ri}].channels[{ci}].lang");
                check_id(&lang).map_err(|m| self.err(ch.lang.span(), field.clone(), m))?;
                if lang == "floor" {
                    return Err(self.err(
                        ch.lang.span(),
                        field,
                        "`floor` is reserved: every room has its floor channel already".into(),
                    ));
                }
                if langs.contains_key(&lang) {
                    return Err(self.err(
                        ch.lang.span(),
                        field,
                        format!("language `{lang}` is declared twice in room `{rid}`"),
                    ));
                }
                let hold_ms = match &ch.hold_ms {
                    Some(h) if *h.get_ref() > MAX_HOLD_MS => {
                        return Err(self.err(
                            h.span(),
                            format!("rooms[{ri}].channels[{ci}].hold_ms"),
                            format!(
                                "{} ms is longer than the {MAX_HOLD_MS} ms allowed",
                                h.get_ref()
                            ),
                        ))
                    }
                    Some(h) => *h.get_ref(),
                    None => DEFAULT_HOLD_MS,
                };
                langs.insert(lang.clone(), channels.len() as u16);
                channels.push(Channel {
                    id: format!("{rid}/{lang}"),
                    room: rid.clone(),
                    lang,
                    name: ch.name,
                    native: ch.native,
                    is_floor: false,
                    auto_floor: ch.auto_floor,
                    hold: Duration::from_millis(hold_ms),
                    takeover: ch.takeover,
                });
            }
            for (bi, b) in room.booths.into_iter().enumerate() {
                let bid = b.id.get_ref().clone();
                let field = format!("rooms[{ri}].booths[{bi}].id");
                check_id(&bid).map_err(|m| self.err(b.id.span(), field.clone(), m))?;
                if !booth_ids.insert(bid.clone()) {
                    return Err(self.err(
                        b.id.span(),
                        field,
                        format!("booth `{bid}` is declared twice"),
                    ));
                }
                let field = format!("rooms[{ri}].booths[{bi}].languages");
                let list = b.languages.get_ref();
                if list.is_empty() || list.len() > 2 {
                    return Err(self.err(
                        b.languages.span(),
                        field,
                        format!(
                            "booth `{bid}` lists {} languages; a booth works into one, or two when bi-active",
                            list.len()
                        ),
                    ));
                }
                let mut idx = Vec::new();
                for l in list {
                    match langs.get(l) {
                        Some(&i) if !idx.contains(&i) => idx.push(i),
                        Some(_) => {
                            return Err(self.err(
                                b.languages.span(),
                                field,
                                format!("booth `{bid}` lists `{l}` twice"),
                            ))
                        }
                        None => {
                            return Err(self.err(
                                b.languages.span(),
                                field,
                                format!("booth `{bid}` works into `{l}`, which is not a channel of room `{rid}`"),
                            ))
                        }
                    }
                }
                let env_key = format!(
                    "BOOTHCAST_BOOTH_SECRET_{}",
                    bid.to_uppercase().replace('-', "_")
                );
                let secret = secret(format!("booth {bid}"), &env_key, b.secret);
                booths.push(Booth {
                    id: bid,
                    room: rid.clone(),
                    channels: idx,
                    secret,
                });
            }
            rooms.push(Room {
                id: rid.clone(),
                name: room.name.unwrap_or(rid),
                floor,
            });
        }
        Ok(Event {
            name: raw.event.name,
            access_code,
            listener_delay_ms,
            page_language,
            floor_secret,
            engineer_secret,
            rooms,
            channels,
            booths,
            generated,
            warnings,
        })
    }
}

/// Secrets shorter than this get a warning: a person-made secret of a few characters falls to
/// guessing in hours even at the relay's slowed-down pace (see `attempts.rs`).
pub const MIN_SECRET_LEN: usize = 12;

/// Why a secret a person chose is easy to guess, if it is.
pub fn weak_secret(secret: &str) -> Option<String> {
    let len = secret.chars().count();
    if secret.chars().all(|c| c.is_ascii_digit()) {
        Some(format!("it is {len} digits only"))
    } else if len < MIN_SECRET_LEN {
        Some(format!("it is {len} characters long"))
    } else {
        None
    }
}

/// Ids appear in channel ids, URLs and environment variable names: keep them plain.
fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 32
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{id}` is not a valid id: use 1 to 32 lowercase letters, digits, `-` or `_`"
        ))
    }
}

/// 128 random bits, hex: long enough not to be guessed, short enough to type from a screen.
pub fn generate_secret() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Compares secrets in time independent of where they differ.
pub fn secret_matches(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    let mut diff = (a.len() ^ b.len()) as u8 | (a.len() != b.len()) as u8;
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Event, Error> {
        Event::parse(text, "event.toml", &|_| None)
    }

    #[test]
    fn default_event_has_floor_five_languages_and_a_bi_active_booth() {
        let e = Event::default_event();
        assert_eq!(e.rooms.len(), 1);
        assert!(e.channels[0].is_floor);
        assert_eq!(e.channels[0].id, "plenary/floor");
        assert!(e.channels.len() >= 6);
        assert!(e.booths.iter().any(|b| b.channels.len() == 2));
        assert_eq!(e.resolve_channel("en"), Some(2));
        assert_eq!(e.resolve_channel("plenary/ru"), Some(3));
        assert_eq!(e.resolve_channel("floor"), Some(0));
        assert_eq!(e.channels[3].native, "Русский");
        // Every secret was generated, and each differs.
        assert_eq!(e.generated.len(), 2 + e.booths.len());
        let set: HashSet<_> = e.generated.iter().map(|(_, s)| s.clone()).collect();
        assert_eq!(set.len(), e.generated.len());
    }

    #[test]
    fn environment_overrides_secrets() {
        let env = |k: &str| match k {
            "BOOTHCAST_BOOTH_SECRET_EN" => Some("from-env".to_string()),
            "BOOTHCAST_ACCESS_CODE" => Some("1234".to_string()),
            _ => None,
        };
        let e = Event::parse(DEFAULT_EVENT, "x", &env).unwrap();
        assert_eq!(e.booth("en").unwrap().secret, "from-env");
        assert_eq!(e.access_code.as_deref(), Some("1234"));
        assert!(!e.generated.iter().any(|(r, _)| r == "booth en"));
    }

    #[test]
    fn short_or_digit_secrets_are_warned_about_without_showing_them() {
        let env = |k: &str| match k {
            "BOOTHCAST_BOOTH_SECRET_EN" => Some("483920".to_string()),
            "BOOTHCAST_BOOTH_SECRET_RU" => Some("pass".to_string()),
            "BOOTHCAST_BOOTH_SECRET_FR" => Some("correct-horse-battery".to_string()),
            _ => None,
        };
        let e = Event::parse(DEFAULT_EVENT, "x", &env).unwrap();
        assert_eq!(e.warnings.len(), 2, "{:?}", e.warnings);
        assert!(e.warnings[0].contains("booth en") && e.warnings[0].contains("6 digits only"));
        assert!(e.warnings[1].contains("booth ru") && e.warnings[1].contains("4 characters"));
        assert!(e
            .warnings
            .iter()
            .all(|w| !w.contains("483920") && !w.contains("pass")));
        // Generated secrets are never warned about.
        assert!(Event::parse(DEFAULT_EVENT, "x", &|_| None)
            .unwrap()
            .warnings
            .is_empty());
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let text = "[event]\nname = \"x\"\n\n[[rooms]]\nid = \"main\"\n[[rooms.channels]]\nlang = \"en\"\nname = \"English\"\nnative = \"English\"\n[[rooms.booths]]\nid = \"de\"\nlanguages = [\"de\"]\n";
        let err = parse(text).unwrap_err().to_string();
        assert_eq!(
            err,
            "event.toml:12: rooms[0].booths[0].languages: booth `de` works into `de`, which is not a channel of room `main`"
        );

        let text = "[event]\nname = \"x\"\ncolour = 3\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(err.starts_with("event.toml:3: colour:"), "{err}");

        let text = "[event]\nname = \"x\"\n[[rooms]]\nid = \"Main Hall\"\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(
            err.starts_with("event.toml:4: rooms[0].id: `Main Hall` is not a valid id"),
            "{err}"
        );

        let text = "[event]\nname = \"x\"\n[[rooms]]\nid = \"m\"\n[[rooms.channels]]\nlang = \"en\"\nname = \"E\"\nnative = \"E\"\nhold_ms = 999999\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(
            err.starts_with("event.toml:9: rooms[0].channels[0].hold_ms:"),
            "{err}"
        );

        let err = parse("[event\n").unwrap_err().to_string();
        assert!(err.starts_with("event.toml:1:"), "{err}");
    }

    #[test]
    fn page_language_is_a_language_tag() {
        let rooms = "[[rooms]]\nid = \"m\"\n[[rooms.channels]]\nlang = \"en\"\nname = \"E\"\nnative = \"E\"\n";
        let parse = |head: &str| parse(&format!("{head}{rooms}"));
        let text = "[event]\nname = \"x\"\npage_language = \"AZ\"\n";
        assert_eq!(parse(text).unwrap().page_language.as_deref(), Some("az"));
        let text = "[event]\nname = \"x\"\npage_language = \"pt-BR\"\n";
        assert_eq!(parse(text).unwrap().page_language.as_deref(), Some("pt-br"));
        assert_eq!(
            parse("[event]\nname = \"x\"\n").unwrap().page_language,
            None
        );
        let text = "[event]\nname = \"x\"\npage_language = \"Azerbaijani!\"\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(
            err.starts_with("event.toml:3: event.page_language: a language tag"),
            "{err}"
        );
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(secret_matches("abc", "abc"));
        assert!(!secret_matches("abc", "abd"));
        assert!(!secret_matches("abc", "ab"));
        assert!(!secret_matches("abc", "abcd"));
        assert!(!secret_matches("abc", ""));
    }
}
