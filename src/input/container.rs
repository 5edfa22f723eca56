//! What symphonia does not say of a file's container: whether an MP4/M4A file's index (`moov`)
//! is there, the encoder delay its edit list declares (the AAC encoder's priming, 1,024 or 2,112
//! samples), and whether an Ogg file's last page is cut.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Most boxes looked at in one list: a real file has a handful at each level.
const MAX_BOXES: usize = 64;

/// A box: its type, where its body starts, and how long the body is.
#[derive(Debug, Clone, Copy)]
struct Mp4Box {
    kind: [u8; 4],
    body: u64,
    len: u64,
}

/// The boxes in `from..to` of `file` (at most [`MAX_BOXES`]); a box that runs past `to` ends
/// the list (and is left out).
fn boxes<F: Read + Seek>(file: &mut F, from: u64, to: u64) -> Vec<Mp4Box> {
    let mut out = Vec::new();
    let mut at = from;
    while out.len() < MAX_BOXES && at.saturating_add(8) <= to {
        let mut head = [0u8; 16];
        if file.seek(SeekFrom::Start(at)).is_err() || file.read_exact(&mut head[..8]).is_err() {
            break;
        }
        let size = u64::from(u32::from_be_bytes([head[0], head[1], head[2], head[3]]));
        let kind = [head[4], head[5], head[6], head[7]];
        let (header, size) = match size {
            0 => (8, to - at),
            1 => {
                if file.read_exact(&mut head[8..16]).is_err() {
                    break;
                }
                let large = u64::from_be_bytes(head[8..16].try_into().expect("8 bytes"));
                (16, large)
            }
            n => (8, n),
        };
        if size < header || at.saturating_add(size) > to {
            break;
        }
        out.push(Mp4Box {
            kind,
            body: at + header,
            len: size - header,
        });
        at += size;
    }
    out
}

fn child(list: &[Mp4Box], kind: &[u8; 4]) -> Option<Mp4Box> {
    list.iter().find(|b| &b.kind == kind).copied()
}

fn read_at<F: Read + Seek>(file: &mut F, at: u64, buf: &mut [u8]) -> Option<()> {
    file.seek(SeekFrom::Start(at)).ok()?;
    file.read_exact(buf).ok()
}

/// Whether the file at `path` has the `moov` box at its top level (`None`: not readable).
pub(super) fn mp4_has_index(path: &Path) -> Option<bool> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    Some(child(&boxes(&mut file, 0, len), b"moov").is_some())
}

/// The encoder delay of the first sound track of the MP4/M4A file at `path`, in seconds: the
/// media time at which its edit list starts the track (skipping empty edits). `None` when there
/// is no edit list, or it starts at 0.
pub(super) fn mp4_priming(path: &Path) -> Option<f64> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let moov = child(&boxes(&mut file, 0, len), b"moov")?;
    for trak in boxes(&mut file, moov.body, moov.body + moov.len)
        .into_iter()
        .filter(|b| &b.kind == b"trak")
    {
        let inside = boxes(&mut file, trak.body, trak.body + trak.len);
        let Some(mdia) = child(&inside, b"mdia") else {
            continue;
        };
        let media = boxes(&mut file, mdia.body, mdia.body + mdia.len);
        let (Some(hdlr), Some(mdhd)) = (child(&media, b"hdlr"), child(&media, b"mdhd")) else {
            continue;
        };
        // hdlr: version and flags, pre_defined, then the handler type.
        let mut handler = [0u8; 4];
        read_at(&mut file, hdlr.body + 8, &mut handler)?;
        if &handler != b"soun" {
            continue;
        }
        // mdhd: version 0 has 32-bit times (timescale at 12), version 1 64-bit (at 20).
        let mut version = [0u8; 1];
        read_at(&mut file, mdhd.body, &mut version)?;
        let mut timescale = [0u8; 4];
        let at = if version[0] == 1 { 20 } else { 12 };
        read_at(&mut file, mdhd.body + at, &mut timescale)?;
        let timescale = u32::from_be_bytes(timescale);
        let edts = child(&inside, b"edts")?;
        let elst = child(&boxes(&mut file, edts.body, edts.body + edts.len), b"elst")?;
        let mut head = [0u8; 8];
        read_at(&mut file, elst.body, &mut head)?;
        let version = head[0];
        let entries = u32::from_be_bytes(head[4..8].try_into().expect("4 bytes"));
        let entry = if version == 1 { 20 } else { 12 };
        for i in 0..u64::from(entries).min(MAX_BOXES as u64) {
            let mut e = [0u8; 20];
            read_at(
                &mut file,
                elst.body + 8 + i * entry,
                &mut e[..entry as usize],
            )?;
            let media_time = if version == 1 {
                i64::from_be_bytes(e[8..16].try_into().expect("8 bytes"))
            } else {
                i64::from(i32::from_be_bytes(e[4..8].try_into().expect("4 bytes")))
            };
            // -1 is an empty edit (a pause before the track starts).
            if media_time >= 0 {
                return (media_time > 0 && timescale > 0)
                    .then(|| media_time as f64 / f64::from(timescale));
            }
        }
        return None;
    }
    None
}

/// The longest an Ogg page can be: its header, 255 lacing values, 255 segments of 255 bytes.
const OGG_MAX_PAGE: u64 = 27 + 255 + 255 * 255;

/// Whether the Ogg file at `path` ends inside a page (a recording cut short). symphonia's Ogg
/// reader takes the last whole page for the end, so it cannot tell. A complete file ends with a
/// page that ends exactly at its end: the last capture pattern (`OggS`) that starts such a page
/// is looked for in the longest page's worth of bytes before the end.
pub(super) fn ogg_cut(path: &Path) -> bool {
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    let Ok(len) = file.metadata().map(|m| m.len()) else {
        return false;
    };
    let from = len.saturating_sub(OGG_MAX_PAGE);
    let mut tail = Vec::new();
    if file.seek(SeekFrom::Start(from)).is_err() || file.read_to_end(&mut tail).is_err() {
        return false;
    }
    let mut pages = 0;
    for at in (0..tail.len().saturating_sub(26)).rev() {
        let page = &tail[at..];
        if !page.starts_with(b"OggS") || page[4] != 0 {
            continue;
        }
        pages += 1;
        let segments = usize::from(page[26]);
        let Some(lacing) = page.get(27..27 + segments) else {
            continue;
        };
        let size = 27 + segments + lacing.iter().map(|&l| usize::from(l)).sum::<usize>();
        if size == page.len() {
            return false;
        }
    }
    // No page ends at the end: cut, if there were pages at all.
    pages > 0
}
