//! What an input that does not decode is, in words for its refusal: from its first bytes, its
//! length when known, and symphonia's error (a WAV header is read chunk by chunk to name what
//! is wrong with it).

use super::container;
use super::decode::{ends_early, HEAD};
use super::Kind;
use std::path::Path;
use symphonia::core::errors::Error as SymError;

/// Says what an input that does not decode is, from its first bytes (`head`, for a stream)
/// and symphonia's error.
pub(super) fn describe(path: &Path, kind: Kind, head: Vec<u8>, error: &SymError) -> String {
    match kind {
        Kind::File => {
            use std::io::Read;
            let mut bytes = Vec::new();
            let read = std::fs::File::open(path)
                .and_then(|f| f.take(DESCRIBE as u64).read_to_end(&mut bytes));
            let len = std::fs::metadata(path).map(|m| m.len()).ok();
            match read {
                Ok(_) => sniff(&bytes, len, error, Some(path)),
                Err(_) => format!("not a file that can be decoded ({error})"),
            }
        }
        Kind::Live if head.is_empty() => {
            "an empty stream: it ended before anything came (did the program writing it fail?)"
                .into()
        }
        Kind::Live => {
            // The whole stream was read when it ended within the bytes kept.
            let len = (ends_early(error) && head.len() < HEAD).then_some(head.len() as u64);
            format!(
                "a stream whose first bytes look like {}",
                sniff(&head, len, error, None)
            )
        }
    }
}

/// Bytes of a file's beginning read to say what it is: a WAV header with its chunks (a `bext`
/// of coding history, an `iXML`) fits.
const DESCRIBE: usize = 1 << 20;

/// A few words on what a file whose first bytes are `head` is ("a text file"); `len` is the
/// length of the whole input when it is known, `path` the file's when it is one.
fn sniff(head: &[u8], len: Option<u64>, error: &SymError, path: Option<&Path>) -> String {
    let starts = |magic: &[u8]| head.starts_with(magic);
    if head.is_empty() {
        return "an empty file".into();
    }
    if (starts(b"RIFF") || starts(b"RF64") || starts(b"BW64")) && head.get(8..12) == Some(b"WAVE") {
        return wav(head, len, error);
    }
    if starts(b"OggS") {
        if contains(head, b"OpusHead")
            || contains(head, b"\x01vorbis")
            || contains(head, b"\x7fFLAC")
        {
            return if ends_early(error) {
                "an Ogg file cut short before its first page of sound ends (Ogg is read a page \
                 at a time; ffmpeg's pages hold 1 s)"
                    .into()
            } else {
                format!("a damaged Ogg file ({error})")
            };
        }
        let codec = if contains(head, b"Speex") {
            "Speex"
        } else if contains(head, b"\x80theora") {
            "Theora video"
        } else {
            "a codec that cannot be decoded here"
        };
        return format!("an Ogg file of {codec}");
    }
    if head.get(4..8) == Some(b"ftyp") {
        return match path.map(container::mp4_has_index) {
            Some(Some(false)) => "an MP4/M4A file without its index (it has no `moov` box): \
                cut short, or a recording that was never finished"
                .into(),
            Some(_) => format!("an MP4/M4A file that cannot be read ({error})"),
            None => format!(
                "an MP4/M4A stream, which cannot be read from a pipe here ({error}): have the \
                 program writing it write WAV (ffmpeg -f wav)"
            ),
        };
    }
    for (magic, what) in [
        (&b"\x89PNG"[..], "a PNG image"),
        (b"\xFF\xD8\xFF", "a JPEG image"),
        (b"%PDF", "a PDF document"),
        (b"PK\x03\x04", "a ZIP archive"),
        (b"\x7FELF", "a program (ELF)"),
        (b"#!", "a script"),
        (b"MThd", "a MIDI file (notes, not sound)"),
        (b"fLaC", "a damaged FLAC file"),
        (b"ID3", "an MP3 file with damaged audio"),
        (b".snd", "a Sun/NeXT .au file"),
    ] {
        if starts(magic) {
            return what.into();
        }
    }
    if head
        .iter()
        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
    {
        return "a text file".into();
    }
    let hex: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("a file of unknown type (it starts {})", hex.join(" "))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// WAV format tags symphonia decodes: PCM, ADPCM (Microsoft, IMA), IEEE float, A-law, µ-law,
/// extensible.
const WAV_DECODED: [u16; 7] = [0x0001, 0x0002, 0x0011, 0x0003, 0x0006, 0x0007, 0xFFFE];

/// The most channels a WAV file may have here: one per speaker position symphonia knows.
fn wav_max_channels() -> u32 {
    (1..=64)
        .take_while(|n| symphonia::core::audio::Position::from_count(*n).is_some())
        .last()
        .unwrap_or(1)
}

/// What is wrong with a WAV file that does not decode, from its header: cut short, a chunk
/// longer than the file says it is, a channel count or rate that cannot be, a codec that has
/// no decoder here. `head` is its beginning, `len` the whole file's length when known.
fn wav(head: &[u8], len: Option<u64>, error: &SymError) -> String {
    let u16_at = |i: usize| head.get(i..i + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |i: usize| {
        head.get(i..i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    // Everything there is was read: what is missing is missing from the file.
    let whole = len.is_some_and(|l| l == head.len() as u64);
    let cut = |what: &str| {
        format!(
            "a WAV file cut short in its header: it ends after {} bytes, {what}",
            head.len()
        )
    };
    // RIFF and RF64 give the size of what follows the form type; 0xFFFFFFFF means "until the
    // end" (ffmpeg to a pipe, RF64).
    let riff = u32_at(4)
        .filter(|&l| l != u32::MAX && head.starts_with(b"RIFF"))
        .map(u64::from);
    let mut pos = 12usize;
    let mut fmt = false;
    for _ in 0..256 {
        let (Some(id), Some(chunk)) = (head.get(pos..pos + 4), u32_at(pos + 4)) else {
            if whole {
                return cut("before its sound begins");
            }
            break;
        };
        let id_text = String::from_utf8_lossy(id).trim_end().to_string();
        if let Some(riff) = riff {
            // As symphonia checks it: the chunk must fit in what the RIFF size leaves.
            if riff.saturating_sub(pos as u64) < u64::from(chunk) {
                return format!(
                    "a damaged WAV file: its `{id_text}` chunk says it holds {chunk} bytes, more \
                     than the {riff} bytes its RIFF header gives the whole file"
                );
            }
        }
        if id == b"fmt " {
            fmt = true;
            let (Some(tag), Some(channels), Some(rate)) =
                (u16_at(pos + 8), u16_at(pos + 10), u32_at(pos + 12))
            else {
                return if whole {
                    cut("in its format chunk")
                } else {
                    "a damaged WAV file: its format chunk is too short".into()
                };
            };
            if channels == 0 {
                return "a damaged WAV file: its header says it has 0 channels".into();
            }
            let max = wav_max_channels();
            if u32::from(channels) > max {
                return format!(
                    "a WAV file of {channels} channels: at most {max} can be read here (one per \
                     speaker position); have the program writing it mix down, or pick channels \
                     with ffmpeg -af pan"
                );
            }
            if rate == 0 {
                return "a damaged WAV file: its header says its sample rate is 0 Hz".into();
            }
            if !WAV_DECODED.contains(&tag) {
                let name = match tag {
                    0x0031 => " (GSM 6.10)",
                    0x0050 => " (MPEG audio)",
                    0x0055 => " (MP3)",
                    0x0042 | 0x0022 => " (a speech codec)",
                    0x0092 | 0x2000 => " (Dolby AC-3)",
                    _ => "",
                };
                return format!("a WAV file whose audio is coded as format {tag:#06x}{name}");
            }
        }
        if id == b"data" {
            if !fmt {
                return "a damaged WAV file: its sound comes before its format chunk".into();
            }
            if whole && head.len() <= pos + 8 {
                return cut("at the start of its sound");
            }
            break;
        }
        pos = pos.saturating_add(8 + chunk as usize + (chunk as usize & 1));
    }
    if !fmt && whole {
        return cut("before its format chunk");
    }
    format!("a damaged WAV file ({error})")
}
