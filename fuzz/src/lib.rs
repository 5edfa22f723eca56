//! The properties the fuzz targets check, one function per decoder of outside input.
//!
//! Each function takes raw bytes as they would arrive from outside (a socket, a file), feeds
//! them to one decoder of `boothcast` and panics if a property fails. The fuzz targets in
//! `fuzz/fuzz_targets/` call them on generated input; `tests/fuzz_regressions.rs` includes this
//! file and calls them on the committed seeds and on every input a fuzzer has ever failed on.

use boothcast::audio;
use boothcast::config::{self, Event};
use boothcast::input;
use boothcast::ogg;
use boothcast::protocol::{
    ClientMessage, FrameError, FrameHeader, MessageError, ServerMessage, Source, HEADER_LEN,
    MAX_CONTROL_LEN, MAX_FRAME_LEN,
};
use boothcast::relay::{self, MAX_PACKET_SAMPLES};
use std::collections::HashSet;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};

/// A binary audio frame from a booth console or a floor feed, as the relay checks it
/// (`relay::check_frame`), and as listeners and the recorder read what the relay sends on
/// (`FrameHeader::parse`).
///
/// - A header that parses re-encodes to the same bytes.
/// - `check_frame` refuses whatever `FrameHeader::parse` refuses, with the same error.
/// - A frame the relay accepts carries an Opus packet of 2.5 to 60 ms by its TOC, and the
///   recorder writes it into an Ogg page unchanged.
pub fn frame(data: &[u8]) {
    let parsed = FrameHeader::parse(data);
    let checked = relay::check_frame(data);
    let header = match parsed {
        Ok(h) => h,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            assert_eq!(
                checked,
                Err(e),
                "check_frame must refuse a bad header alike"
            );
            return;
        }
    };
    assert!(data.len() > HEADER_LEN && data.len() <= MAX_FRAME_LEN);
    let packet = &data[HEADER_LEN..];
    assert_eq!(
        &header.frame(packet)[..],
        data,
        "a parsed frame re-encodes to the same bytes"
    );
    match checked {
        Ok(h) => {
            assert_eq!(h, header);
            // What the recorder does with each frame of a channel (record::take_frames).
            let samples = opus::packet::get_nb_samples(packet, 48_000)
                .expect("the relay only carries packets whose duration it could read");
            assert!(
                (1..=MAX_PACKET_SAMPLES).contains(&samples),
                "the relay carried a packet of {samples} samples"
            );
            let mut writer = ogg::Writer::new(Vec::new(), 1, 1, 312, &[]).expect("mono");
            writer
                .packet(packet, samples as u32)
                .expect("the recorder writes every packet the relay carries");
            let file = writer.finish().expect("a Vec does not fail");
            assert!(file.ends_with(packet), "the packet is stored unchanged");
        }
        Err(FrameError::Opus(reason)) => assert!(!reason.is_empty()),
        Err(e) => panic!("the header parsed, yet check_frame refused it: {e}"),
    }
}

/// An Opus packet as a listener receives it from the relay and decodes it (`listen`, the
/// device player): `audio::packet_samples` and `audio::Decoder`.
///
/// - A packet `packet_samples` accepts lasts a whole number of 2.5 ms steps, at most 120 ms,
///   and decodes (and recovers from FEC) to exactly that many finite samples.
/// - A packet it refuses is refused by the decoder too, as malformed.
/// - A packet it accepts of at most 60 ms is one the relay carries.
pub fn opus_packet(packet: &[u8]) {
    let mut decoder = audio::Decoder::new().expect("a decoder");
    let samples = match audio::packet_samples(packet) {
        Ok(n) => n,
        Err(e) => {
            assert!(matches!(e, audio::Error::MalformedPacket { .. }), "{e}");
            let d = decoder.decode(packet);
            assert!(
                matches!(d, Err(audio::Error::MalformedPacket { .. })),
                "{d:?}"
            );
            return;
        }
    };
    assert!(
        samples > 0 && samples % 120 == 0 && samples <= 5760,
        "{samples} samples"
    );
    let recovered = decoder
        .recover(packet, samples)
        .expect("a valid packet recovers");
    assert_eq!(recovered.len(), samples);
    let pcm = decoder.decode(packet).expect("a valid packet decodes");
    assert_eq!(pcm.len(), samples);
    assert!(pcm.iter().chain(&recovered).all(|s| s.is_finite()));
    if samples <= MAX_PACKET_SAMPLES && packet.len() + HEADER_LEN <= MAX_FRAME_LEN {
        let header = FrameHeader {
            source: Source::Interpreter,
            channel: u16::MAX,
            sequence: 1,
            capture_us: 1,
            relay_us: 0,
            rms: 20,
            peak: 10,
        };
        assert_eq!(relay::check_frame(&header.frame(packet)), Ok(header));
    }
}

/// A JSON control message from a client, as the relay reads it (`ClientMessage::parse`).
///
/// - A message that parses serializes and parses again to the same value.
/// - What it logs of a `hello` does not depend on the secret.
/// - A refusal is `TooLong` exactly for text over the limit.
pub fn client_message(data: &[u8]) {
    // The WebSocket layer only hands over text frames that are valid UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ClientMessage::parse(text) {
        Ok(m) => {
            assert!(text.len() <= MAX_CONTROL_LEN);
            let json = m.to_json();
            let again = ClientMessage::parse(&json)
                .unwrap_or_else(|e| panic!("{json} does not parse again: {e}"));
            assert_eq!(again, m, "{json}");
            if let ClientMessage::Hello { secret, .. } = &m {
                let mut other = m.clone();
                if let ClientMessage::Hello { secret: s, .. } = &mut other {
                    *s = Some(format!("{}-other", secret.as_deref().unwrap_or("")));
                }
                if secret.is_some() {
                    assert_eq!(m.to_string(), other.to_string(), "the secret is redacted");
                }
            }
        }
        Err(MessageError::TooLong(n)) => assert!(n == text.len() && n > MAX_CONTROL_LEN),
        Err(e) => {
            assert!(text.len() <= MAX_CONTROL_LEN);
            assert!(e.to_string().len() > "control message is not valid: ".len());
        }
    }
}

/// A JSON message from the relay, as clients read it (`ServerMessage::parse`).
///
/// - A message that parses serializes and parses again to the same value.
pub fn server_message(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = ServerMessage::parse(text) {
        let json = m.to_json();
        let again = ServerMessage::parse(&json)
            .unwrap_or_else(|e| panic!("{json} does not parse again: {e}"));
        assert_eq!(again, m, "{json}");
    }
}

/// An event file (`Event::parse`), read once with no environment and once with every
/// variable set.
///
/// - Both readings agree on whether the file is valid; a refusal names the file, a line of
///   it, a field and what is wrong.
/// - A valid event keeps its bounds and is consistent: ids are plain and unique, every room's
///   floor and every booth's languages point at channels of that room, channel ids resolve to
///   their index, and secrets are never empty (from the environment first when it has them).
pub fn event(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    const FILE: &str = "fuzz.toml";
    const FROM_ENV: &str = "from-env";
    let bare = Event::parse(text, FILE, &|_| None);
    let with_env = Event::parse(text, FILE, &|_| Some(FROM_ENV.to_string()));
    match (bare, with_env) {
        (Ok(bare), Ok(with_env)) => {
            check_event(&bare);
            check_event(&with_env);
            assert_eq!(bare.channels.len(), with_env.channels.len());
            assert_eq!(bare.booths.len(), with_env.booths.len());
            assert!(with_env.generated.is_empty());
            assert_eq!(with_env.access_code.as_deref(), Some(FROM_ENV));
            assert_eq!(with_env.floor_secret, FROM_ENV);
            assert_eq!(with_env.engineer_secret, FROM_ENV);
            assert!(with_env.booths.iter().all(|b| b.secret == FROM_ENV));
            for (role, secret) in &bare.generated {
                assert_eq!(secret.len(), 32, "{role}");
            }
        }
        (Err(a), Err(b)) => {
            assert_eq!(a.to_string(), b.to_string());
            let config::Error::Invalid {
                file,
                line,
                field,
                message,
            } = &a
            else {
                panic!("parsing text is never a read error: {a}");
            };
            assert_eq!(file, FILE);
            assert!(
                *line >= 1 && *line <= text.lines().count().max(1) + 1,
                "{a}"
            );
            assert!(!field.is_empty() && !message.is_empty(), "{a}");
        }
        (a, b) => panic!(
            "the environment changed whether the event is valid: {:?} / {:?}",
            a.err().map(|e| e.to_string()),
            b.err().map(|e| e.to_string())
        ),
    }
}

fn check_event(ev: &Event) {
    let plain = |id: &str| {
        !id.is_empty()
            && id.len() <= 32
            && id
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
    };
    assert!((1..=config::MAX_ROOMS).contains(&ev.rooms.len()));
    assert!(ev.listener_delay_ms <= config::MAX_LISTENER_DELAY_MS);
    assert!(!ev.floor_secret.is_empty() && !ev.engineer_secret.is_empty());
    assert_ne!(ev.access_code.as_deref(), Some(""));
    let mut ids = HashSet::new();
    for (i, ch) in ev.channels.iter().enumerate() {
        assert!(ids.insert(ch.id.as_str()), "channel {} twice", ch.id);
        assert_eq!(ch.id, format!("{}/{}", ch.room, ch.lang));
        assert!(plain(&ch.room) && plain(&ch.lang), "{}", ch.id);
        assert_eq!(ch.is_floor, ch.lang == "floor");
        assert!(!(ch.is_floor && ch.auto_floor));
        assert!(ch.hold.as_millis() <= u128::from(config::MAX_HOLD_MS));
        assert_eq!(ev.channel_index(&ch.id), Some(i as u16));
        assert_eq!(ev.resolve_channel(&ch.id), Some(i as u16));
    }
    let mut rooms = HashSet::new();
    for room in &ev.rooms {
        assert!(rooms.insert(room.id.as_str()) && plain(&room.id));
        let floor = &ev.channels[usize::from(room.floor)];
        assert!(floor.is_floor && floor.room == room.id);
        let langs = ev.channels.iter().filter(|c| c.room == room.id).count() - 1;
        assert!((1..=config::MAX_CHANNELS_PER_ROOM).contains(&langs));
        let booths = ev.booths.iter().filter(|b| b.room == room.id).count();
        assert!(booths <= config::MAX_BOOTHS_PER_ROOM);
    }
    assert!(ev.channels.iter().all(|c| rooms.contains(c.room.as_str())));
    let mut booths = HashSet::new();
    for b in &ev.booths {
        assert!(booths.insert(b.id.as_str()) && plain(&b.id));
        assert!(ev.booth(&b.id).is_some_and(|found| std::ptr::eq(found, b)));
        assert!(!b.secret.is_empty());
        assert!((1..=2).contains(&b.channels.len()));
        assert!(b.channels.len() == 1 || b.channels[0] != b.channels[1]);
        for &c in &b.channels {
            let ch = &ev.channels[usize::from(c)];
            assert!(
                !ch.is_floor && ch.room == b.room,
                "booth {} into {}",
                b.id,
                ch.id
            );
        }
    }
}

/// The first bytes of a Matroska (EBML) file.
const EBML_MAGIC: [u8; 4] = [0x1a, 0x45, 0xdf, 0xa3];

/// At most this much sound is decoded from one input of the `input_file` target: 10 s.
pub const INPUT_MAX_SAMPLES: usize = 10 * 48_000;

/// A sound file as `boothcast floor` / `booth --input-file` decode it (`input::decode_file`:
/// symphonia's demuxers and decoders, libopus for Ogg Opus, the resampler to 48 kHz mono).
///
/// - Never panics, whatever the bytes, and never hands out more than asked for.
/// - A file it decodes gives finite samples.
/// - A file it refuses is refused by name, saying what it is and what would be accepted.
pub fn input_file(data: &[u8]) {
    // symphonia-format-mkv 0.6.1 can loop for ever in `next_packet` on a damaged Matroska file
    // (tests/fuzz-seeds/known-upstream/): until it is fixed upstream, Matroska stays out of this
    // target, so that a time-bounded run finds what else there is.
    if data.windows(4).any(|w| w == EBML_MAGIC) {
        return;
    }
    let path = temp_file(data);
    let result = input::decode_file(&path, INPUT_MAX_SAMPLES);
    let _ = std::fs::remove_file(&path);
    match result {
        Ok(samples) => {
            assert!(samples.len() <= INPUT_MAX_SAMPLES);
            assert!(samples.iter().all(|s| s.is_finite()));
        }
        Err(e @ input::Error::Unsupported { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&*path.to_string_lossy()), "{text}");
            assert!(text.contains(input::ACCEPTED), "{text}");
        }
        Err(e) => panic!("a file that exists is opened: {e}"),
    }
}

/// Writes `data` to a temporary file of its own (no extension: the format is told from the
/// bytes), for readers that take a path as the command line gives it.
fn temp_file(data: &[u8]) -> std::path::PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "boothcast-fuzz-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, data).expect("a temporary file");
    path
}

/// A WAV file as `audio::read_wav` reads it (the library's WAV reader; the clients' input
/// files go through `input`, fuzzed by `input_file`).
///
/// - Never panics, whatever the bytes.
/// - A file it reads gives finite samples in `-1.0..=1.0`, exactly as many as the file's
///   whole frames last at 48 kHz, so never more than its bytes could hold.
pub fn wav(data: &[u8]) {
    let path = temp_file(data);
    let result = audio::read_wav(&path);
    let _ = std::fs::remove_file(&path);
    let samples = match result {
        Ok(s) => s,
        Err(e) => {
            assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}");
            return;
        }
    };
    assert!(samples.iter().all(|s| (-1.0..=1.0).contains(s)));
    let reader = hound::WavReader::new(Cursor::new(data)).expect("it was read from a file");
    let spec = reader.spec();
    let channels = u64::from(spec.channels);
    let frames = u64::from(reader.len()) / channels;
    let bytes_per_frame = channels * u64::from(spec.bits_per_sample).div_ceil(8);
    assert!(frames * bytes_per_frame <= data.len() as u64);
    let rate = u64::from(spec.sample_rate);
    let expected = (frames * u64::from(audio::SAMPLE_RATE) + rate / 2) / rate;
    assert_eq!(samples.len() as u64, expected, "{spec:?}, {frames} frames");
}
