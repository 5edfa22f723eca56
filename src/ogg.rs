//! Ogg Opus file writer (RFC 3533 pages, RFC 7845 Opus mapping).
//!
//! Recordings store the Opus packets exactly as they arrived from the booth, so the
//! writer never touches the audio: it only frames packets into Ogg pages and keeps the
//! granule positions right. Gaps in a channel are filled with real Opus silence packets
//! so that recordings of different channels stay aligned sample for sample.
//!
//! Crash behaviour: every page is flushed to the underlying writer as soon as it is
//! complete, but the *last* page is held back until the next packet (or
//! [`Writer::finish`]) arrives, because only then do we know whether it needs the
//! end-of-stream flag. A crash therefore loses at most the last packet (or the last
//! silence page, at most one second), and the file written so far stays playable;
//! only the EOS flag is missing.

use std::io::Write;

/// Sample rate of every Opus granule position, whatever the input rate was.
const RATE: u32 = 48_000;

/// Longest legal Opus packet duration (120 ms) in 48 kHz samples.
const MAX_PACKET_SAMPLES: u32 = 5_760;

/// A page carries at most 255 lacing values. A packet of `n` bytes needs `n / 255 + 1`
/// of them, so the largest packet that fits a single page is 255 * 255 - 1 bytes.
pub const MAX_PACKET_LEN: usize = 255 * 255 - 1;

/// Silence packets per page: one second of 20 ms packets. Grouping keeps long gaps
/// cheap (≈ 200 bytes per second instead of ≈ 1.5 kB with one page per packet) while
/// a crash still loses at most one second of silence.
const SILENCE_PACKETS_PER_PAGE: usize = 50;

/// CELT payload whose first range-coded symbol is the "silence" flag set (RFC 6716
/// section 4.3, table 56). A CELT frame needs at least two payload bytes: libopus
/// treats a frame of 0 or 1 bytes as lost and runs packet-loss concealment, which
/// would extrapolate the previous audio instead of producing silence. This is the
/// same frame WebRTC sends for comfort silence.
pub const SILENCE_FRAME: [u8; 2] = [0xFF, 0xFE];

const OPUS_VENDOR: &str = "boothcast";

const FLAG_BOS: u8 = 0x02;
const FLAG_EOS: u8 = 0x04;

#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error writing Ogg stream: {0}")]
    Io(#[from] std::io::Error),
    /// The packet cannot be laced into a single page (see [`MAX_PACKET_LEN`]).
    #[error("Opus packet of {0} bytes does not fit in one Ogg page")]
    PacketTooLong(usize),
    /// Opus packets are at least one byte (the TOC).
    #[error("empty Opus packet")]
    EmptyPacket,
    /// A packet duration of 0 or more than 120 ms cannot be a valid Opus packet.
    #[error("invalid Opus packet duration: {0} samples at 48 kHz")]
    InvalidDuration(u32),
    /// Channel mapping family 0 only covers mono and stereo.
    #[error("unsupported channel count {0} (mapping family 0 allows 1 or 2)")]
    UnsupportedChannels(u8),
    /// User comments must have the form `KEY=value` (RFC 7845 section 5.2).
    #[error("invalid comment {0:?}: expected KEY=value")]
    InvalidComment(String),
    /// The OpusTags packet must fit one page; it is never split.
    #[error("OpusTags header of {0} bytes is too long")]
    TagsTooLong(usize),
    /// Opus frames last at least 2.5 ms, so gaps can only be filled in 120-sample steps.
    #[error("silence of {0} samples is not a multiple of 120 samples (2.5 ms)")]
    UnalignedSilence(u32),
}

/// Writes one Ogg Opus stream (48 kHz, mono by default) to any `std::io::Write`, page by page.
pub struct Writer<W: Write> {
    out: W,
    serial: u32,
    /// Sequence number of the next page to be written.
    sequence: u32,
    channels: u8,
    /// Audio samples (48 kHz, excluding pre-skip) in all packets accepted so far,
    /// including those in the held-back page.
    samples: u64,
    /// The held-back page: lacing values and body of its packets, plus its granule.
    /// Empty lacing means nothing is pending.
    pending_lacing: Vec<u8>,
    pending_body: Vec<u8>,
    pending_granule: u64,
    /// Scratch buffer for serialising pages, reused to avoid per-packet allocation.
    page: Vec<u8>,
}

impl<W: Write> Writer<W> {
    /// Starts a stream: writes the OpusHead page (RFC 7845 section 5.1: version 1,
    /// `channels`, `pre_skip`, input sample rate 48000, output gain 0, mapping family 0)
    /// and prepares the OpusTags page (vendor "boothcast", `comments` as `KEY=value`).
    ///
    /// `serial` is the Ogg stream serial number. `pre_skip` is the number of decoded
    /// samples to discard at the start; use the encoder's look-ahead
    /// (`OPUS_GET_LOOKAHEAD`), which for libopus at 48 kHz is 312 samples.
    ///
    /// The OpusTags page is held back like any last page, so that a stream that ends
    /// before any audio can still carry the EOS flag on a non-empty page.
    pub fn new(
        out: W,
        serial: u32,
        channels: u8,
        pre_skip: u16,
        comments: &[String],
    ) -> Result<Self, Error> {
        if !(1..=2).contains(&channels) {
            return Err(Error::UnsupportedChannels(channels));
        }
        for c in comments {
            // The field name must be non-empty printable ASCII other than '='.
            let valid = match c.split_once('=') {
                Some((key, _)) => {
                    !key.is_empty() && key.bytes().all(|b| (0x20..=0x7D).contains(&b))
                }
                None => false,
            };
            if !valid {
                return Err(Error::InvalidComment(c.clone()));
            }
        }

        let mut head = Vec::with_capacity(19);
        head.extend_from_slice(b"OpusHead");
        head.push(1); // version
        head.push(channels);
        head.extend_from_slice(&pre_skip.to_le_bytes());
        head.extend_from_slice(&RATE.to_le_bytes()); // original input sample rate
        head.extend_from_slice(&0i16.to_le_bytes()); // output gain
        head.push(0); // mapping family 0: mono or stereo, no mapping table

        let mut tags = Vec::new();
        tags.extend_from_slice(b"OpusTags");
        tags.extend_from_slice(&(OPUS_VENDOR.len() as u32).to_le_bytes());
        tags.extend_from_slice(OPUS_VENDOR.as_bytes());
        tags.extend_from_slice(&(comments.len() as u32).to_le_bytes());
        for c in comments {
            tags.extend_from_slice(&(c.len() as u32).to_le_bytes());
            tags.extend_from_slice(c.as_bytes());
        }
        if tags.len() > MAX_PACKET_LEN {
            return Err(Error::TagsTooLong(tags.len()));
        }

        let mut w = Writer {
            out,
            serial,
            sequence: 0,
            channels,
            samples: 0,
            pending_lacing: Vec::with_capacity(255),
            pending_body: Vec::new(),
            pending_granule: 0,
            page: Vec::new(),
        };
        // The BOS page must hold only the identification header.
        let mut lacing = Vec::new();
        lace(&mut lacing, head.len());
        w.write_page(FLAG_BOS, 0, &lacing, &head)?;
        // Header pages have granule position 0.
        w.push_pending(&tags, 0);
        Ok(w)
    }

    /// Appends one Opus packet lasting `samples` samples at 48 kHz (known to the caller
    /// from the packet's TOC). Each packet gets its own page, whose granule position is
    /// the total duration of all packets up to and including this one: the pre-skip
    /// samples are the start of the first packets, not extra (RFC 7845 section 4).
    ///
    /// The previous page is written and flushed; this packet's page is held back until
    /// the next call or [`finish`](Self::finish) (see the module docs).
    pub fn packet(&mut self, packet: &[u8], samples: u32) -> Result<(), Error> {
        if packet.is_empty() {
            return Err(Error::EmptyPacket);
        }
        if packet.len() > MAX_PACKET_LEN {
            return Err(Error::PacketTooLong(packet.len()));
        }
        if samples == 0 || samples > MAX_PACKET_SAMPLES {
            return Err(Error::InvalidDuration(samples));
        }
        self.flush_pending(0)?;
        self.samples += u64::from(samples);
        self.push_pending(packet, self.granule());
        Ok(())
    }

    /// Appends `samples` of silence (a multiple of 120 samples, 2.5 ms) as Opus packets,
    /// so that recordings of different channels stay aligned across gaps.
    ///
    /// Silence is made of 20 ms CELT packets (TOC config 31, code 0) carrying
    /// [`SILENCE_FRAME`], plus for a remainder shorter than 20 ms one code-3 packet of
    /// equal 10, 5 or 2.5 ms CELT frames (configs 30, 29, 28). Unlike packet-loss
    /// concealment these decode to digital silence. Up to one second of silence
    /// packets share a page.
    pub fn silence(&mut self, samples: u32) -> Result<(), Error> {
        if !samples.is_multiple_of(120) {
            return Err(Error::UnalignedSilence(samples));
        }
        if samples == 0 {
            return Ok(());
        }
        self.flush_pending(0)?;
        let stereo = if self.channels == 2 { 0x04 } else { 0 };
        // Fullband CELT, 20 ms, code 0 (one frame).
        let mut full = [0u8; 3];
        full[0] = (31 << 3) | stereo;
        full[1..].copy_from_slice(&SILENCE_FRAME);

        let mut in_page = 0;
        for _ in 0..samples / 960 {
            if in_page == SILENCE_PACKETS_PER_PAGE {
                self.flush_pending(0)?;
                in_page = 0;
            }
            self.samples += 960;
            let granule = self.granule();
            self.push_pending(&full, granule);
            in_page += 1;
        }

        let rest = samples % 960;
        if rest != 0 {
            // Largest CELT frame size that divides the remainder, so the whole remainder
            // is one code-3 packet of at most 7 equal frames (code 3 with CBR frames
            // needs every frame to be the same size and duration).
            let (config, frame) = [(30u8, 480u32), (29, 240), (28, 120)]
                .into_iter()
                .find(|&(_, f)| rest.is_multiple_of(f))
                .expect("remainder is a multiple of 120");
            let count = (rest / frame) as u8;
            let mut pkt = Vec::with_capacity(2 + SILENCE_FRAME.len() * usize::from(count));
            pkt.push((config << 3) | stereo | 0x03);
            pkt.push(count); // no VBR flag, no padding flag: CBR frames of equal length
            for _ in 0..count {
                pkt.extend_from_slice(&SILENCE_FRAME);
            }
            if in_page == SILENCE_PACKETS_PER_PAGE {
                self.flush_pending(0)?;
            }
            self.samples += u64::from(rest);
            let granule = self.granule();
            self.push_pending(&pkt, granule);
        }
        Ok(())
    }

    /// Audio samples (48 kHz) written so far: the sum of all packet and silence
    /// durations, which is also the stream's current granule position. Pre-skip is not
    /// added; the playable length is `samples() - pre_skip`.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Writes the held-back last page now, without the end-of-stream flag: a live stream has
    /// no end to flag, and a listener should hear each packet as soon as it comes.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.flush_pending(0)
    }

    /// The underlying writer (for a live stream, to take the pages written so far).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// Writes the held-back last page with the end-of-stream flag and returns the
    /// underlying writer. Without this call the stream lacks EOS and its last page.
    pub fn finish(mut self) -> Result<W, Error> {
        self.flush_pending(FLAG_EOS)?;
        Ok(self.out)
    }

    /// RFC 7845 section 4: a page's granule position counts every sample decoded up
    /// to the end of its last packet, the pre-skip samples included. Those samples are
    /// already part of the first packets' durations (they are the encoder's look-ahead),
    /// so the granule is the running sum of packet durations; adding `pre_skip` on top
    /// would claim samples that do not exist and shift the whole timeline (ffmpeg then
    /// reports a start time of +pre_skip).
    fn granule(&self) -> u64 {
        self.samples
    }

    /// Adds a packet to the held-back page. Callers ensure it fits (packets are at most
    /// [`MAX_PACKET_LEN`] bytes and pages are flushed before they could overflow).
    fn push_pending(&mut self, packet: &[u8], granule: u64) {
        lace(&mut self.pending_lacing, packet.len());
        debug_assert!(self.pending_lacing.len() <= 255);
        self.pending_body.extend_from_slice(packet);
        self.pending_granule = granule;
    }

    fn flush_pending(&mut self, flags: u8) -> Result<(), Error> {
        if self.pending_lacing.is_empty() {
            return Ok(());
        }
        let lacing = std::mem::take(&mut self.pending_lacing);
        let body = std::mem::take(&mut self.pending_body);
        let result = self.write_page(flags, self.pending_granule, &lacing, &body);
        // Hand the buffers back (emptied) so their capacity is reused.
        self.pending_lacing = lacing;
        self.pending_body = body;
        self.pending_lacing.clear();
        self.pending_body.clear();
        result
    }

    fn write_page(
        &mut self,
        flags: u8,
        granule: u64,
        lacing: &[u8],
        body: &[u8],
    ) -> Result<(), Error> {
        self.page.clear();
        encode_page(
            &mut self.page,
            flags,
            granule,
            self.serial,
            self.sequence,
            lacing,
            body,
        );
        self.sequence = self.sequence.wrapping_add(1);
        self.out.write_all(&self.page)?;
        self.out.flush()?;
        Ok(())
    }
}

/// Appends the lacing values of one packet of `len` bytes: `len / 255` segments of 255
/// and a final segment of `len % 255`, which is 0 for exact multiples of 255 so that the
/// packet's end is unambiguous.
fn lace(lacing: &mut Vec<u8>, len: usize) {
    lacing.extend(std::iter::repeat_n(255u8, len / 255));
    lacing.push((len % 255) as u8);
}

/// Serialises one complete Ogg page (RFC 3533 section 6) into `out`.
fn encode_page(
    out: &mut Vec<u8>,
    flags: u8,
    granule: u64,
    serial: u32,
    sequence: u32,
    lacing: &[u8],
    body: &[u8],
) {
    debug_assert!(lacing.len() <= 255);
    debug_assert_eq!(
        lacing.iter().map(|&l| usize::from(l)).sum::<usize>(),
        body.len()
    );
    let start = out.len();
    out.extend_from_slice(b"OggS");
    out.push(0); // stream structure version
    out.push(flags);
    out.extend_from_slice(&granule.to_le_bytes());
    out.extend_from_slice(&serial.to_le_bytes());
    out.extend_from_slice(&sequence.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // CRC, computed with this field zeroed
    out.push(lacing.len() as u8);
    out.extend_from_slice(lacing);
    out.extend_from_slice(body);
    let crc = crc32(&out[start..]);
    out[start + 22..start + 26].copy_from_slice(&crc.to_le_bytes());
}

/// Ogg's CRC-32: polynomial 0x04c11db7, MSB first (not reflected), initial value 0,
/// no final XOR. This differs from the zlib/Ethernet CRC, so it is implemented here.
fn crc32(data: &[u8]) -> u32 {
    data.iter().fold(0u32, |crc, &b| {
        (crc << 8) ^ CRC_TABLE[usize::from((crc >> 24) as u8 ^ b)]
    })
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut r = (i as u32) << 24;
        let mut bit = 0;
        while bit < 8 {
            r = if r & 0x8000_0000 != 0 {
                (r << 1) ^ 0x04c1_1db7
            } else {
                r << 1
            };
            bit += 1;
        }
        table[i] = r;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// One page as read back by the test parser.
    #[derive(Debug)]
    struct Page {
        flags: u8,
        granule: u64,
        serial: u32,
        sequence: u32,
        packets: Vec<Vec<u8>>,
    }

    /// Minimal independent Ogg reader: checks capture pattern, version and CRC of every
    /// page and splits bodies into packets by their lacing values. Packets never span
    /// pages in our files, so a page ending in a 255 segment is an error. A truncated
    /// trailing page (crash mid-write) is ignored, as a demuxer would.
    fn parse_pages(mut data: &[u8]) -> Vec<Page> {
        let mut pages = Vec::new();
        while data.len() >= 27 {
            assert_eq!(&data[..4], b"OggS", "capture pattern");
            assert_eq!(data[4], 0, "stream structure version");
            let nseg = usize::from(data[26]);
            if data.len() < 27 + nseg {
                break;
            }
            let lacing = &data[27..27 + nseg];
            let body_len: usize = lacing.iter().map(|&l| usize::from(l)).sum();
            let total = 27 + nseg + body_len;
            if data.len() < total {
                break;
            }
            let mut copy = data[..total].to_vec();
            copy[22..26].fill(0);
            let stored = u32::from_le_bytes(data[22..26].try_into().unwrap());
            assert_eq!(crc32(&copy), stored, "page CRC");

            let mut packets = Vec::new();
            let mut body = &data[27 + nseg..total];
            let mut current = Vec::new();
            for &l in lacing {
                current.extend_from_slice(&body[..usize::from(l)]);
                body = &body[usize::from(l)..];
                if l < 255 {
                    packets.push(std::mem::take(&mut current));
                }
            }
            assert!(current.is_empty(), "packet continues past page end");
            pages.push(Page {
                flags: data[5],
                granule: u64::from_le_bytes(data[6..14].try_into().unwrap()),
                serial: u32::from_le_bytes(data[14..18].try_into().unwrap()),
                sequence: u32::from_le_bytes(data[18..22].try_into().unwrap()),
                packets,
            });
            data = &data[total..];
        }
        pages
    }

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("boothcast-ogg-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    /// Runs a tool and returns (success, stdout, stderr). The tools are required: a
    /// missing tool fails the test rather than silently skipping the check.
    fn run(cmd: &str, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(cmd)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd} (is it installed?): {e}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn opusinfo(path: &Path) -> (bool, String) {
        let (ok, out, err) = run("opusinfo", &[path.to_str().unwrap()]);
        (ok, format!("{out}{err}"))
    }

    fn ffprobe_duration(path: &Path) -> f64 {
        let (ok, out, err) = run(
            "ffprobe",
            &[
                "-v",
                "error",
                "-show_entries",
                "format=duration",
                "-of",
                "csv=p=0",
                path.to_str().unwrap(),
            ],
        );
        assert!(ok && err.trim().is_empty(), "ffprobe failed: {err}");
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("ffprobe output {out:?}"))
    }

    /// Decodes with ffmpeg (its own Opus decoder, independent of libopus) to 48 kHz mono.
    fn ffmpeg_decode(path: &Path) -> Vec<i16> {
        let out = Command::new("ffmpeg")
            .args(["-v", "error", "-i", path.to_str().unwrap()])
            .args(["-f", "s16le", "-ac", "1", "-ar", "48000", "-"])
            .output()
            .expect("cannot run ffmpeg (is it installed?)");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.trim().is_empty(),
            "ffmpeg: {err}"
        );
        out.stdout
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect()
    }

    fn dbfs(pcm: &[i16]) -> f64 {
        let sum: f64 = pcm.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
        let rms = (sum / pcm.len() as f64).sqrt() / 32768.0;
        20.0 * rms.max(1e-12).log10()
    }

    fn sine(n: usize, offset: usize) -> Vec<i16> {
        (0..n)
            .map(|i| {
                let t = (i + offset) as f64 / 48_000.0;
                (0.5 * 32767.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
            })
            .collect()
    }

    /// 20 ms libopus packets of a 440 Hz tone, and the encoder look-ahead.
    fn encode_sine(seconds: usize, channels: opus::Channels) -> (Vec<Vec<u8>>, u16) {
        let mut enc = opus::Encoder::new(48_000, channels, opus::Application::Audio).unwrap();
        let lookahead = enc.get_lookahead().unwrap();
        let ch = if channels == opus::Channels::Stereo {
            2
        } else {
            1
        };
        let mono = sine(48_000 * seconds, 0);
        let pcm: Vec<i16> = mono
            .iter()
            .flat_map(|&s| std::iter::repeat_n(s, ch))
            .collect();
        let packets = pcm
            .chunks_exact(960 * ch)
            .map(|frame| enc.encode_vec(frame, 4000).unwrap())
            .collect();
        (packets, u16::try_from(lookahead).unwrap())
    }

    fn comments() -> Vec<String> {
        vec!["TITLE=Floor".to_string(), "LANGUAGE=fr".to_string()]
    }

    // (1) CRC.

    #[test]
    fn crc_check_value_and_table() {
        // Check value of CRC-32 with poly 0x04c11db7, init 0, no reflection, no xor-out.
        assert_eq!(crc32(b"123456789"), 0x89A1_897F);
        assert_eq!(crc32(b""), 0);
        assert_eq!(CRC_TABLE[0], 0);
        assert_eq!(CRC_TABLE[1], 0x04c1_1db7);
        assert_eq!(CRC_TABLE[255], 0xB1F7_40B4);
    }

    #[test]
    fn crc_of_known_page_and_tools_accept_file() {
        let mut w = Writer::new(Vec::new(), 0x0B00_7CA5, 1, 312, &[]).unwrap();
        w.silence(960).unwrap();
        let bytes = w.finish().unwrap();

        // The BOS page: 27-byte header, 1 lacing value, 19-byte OpusHead.
        let head_page = &bytes[..47];
        assert_eq!(&head_page[28..36], b"OpusHead");
        let crc = u32::from_le_bytes(head_page[22..26].try_into().unwrap());
        // Pinned value; the file below is accepted by opusinfo and ffprobe, which
        // both reject pages with a bad CRC.
        assert_eq!(crc, 0x10D3_1C96, "got {crc:#010x}");

        let path = temp_path("crc.opus");
        std::fs::write(&path, &bytes).unwrap();
        let (ok, info) = opusinfo(&path);
        assert!(ok, "opusinfo: {info}");
        assert!(
            !info.contains("WARNING") && !info.contains("ERROR"),
            "{info}"
        );
        assert!((ffprobe_duration(&path) - 0.02).abs() < 0.001);
    }

    #[test]
    fn crc_verifies_pages_written_by_ffmpeg() {
        // Independent cross-check: every page of an Ogg file muxed by ffmpeg must pass
        // our CRC (parse_pages asserts it).
        let path = temp_path("ffmpeg.opus");
        let (ok, _, err) = run(
            "ffmpeg",
            &[
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:duration=0.5",
                "-c:a",
                "libopus",
                path.to_str().unwrap(),
            ],
        );
        assert!(ok, "ffmpeg: {err}");
        let pages = parse_pages(&std::fs::read(&path).unwrap());
        assert!(pages.len() >= 3);
        assert_eq!(&pages[0].packets[0][..8], b"OpusHead");
    }

    // (2) Full round trip through libopus-encoded audio, silence and external tools.

    #[test]
    fn tone_gap_tone_is_valid_and_aligned() {
        let (packets, pre_skip) = encode_sine(3, opus::Channels::Mono);
        assert_eq!(packets.len(), 150);
        assert_eq!(pre_skip, 312, "libopus look-ahead at 48 kHz");

        let mut w = Writer::new(Vec::new(), 42, 1, pre_skip, &comments()).unwrap();
        for p in &packets[..75] {
            w.packet(p, 960).unwrap();
        }
        w.silence(48_000).unwrap();
        for p in &packets[75..] {
            w.packet(p, 960).unwrap();
        }
        assert_eq!(w.samples(), 4 * 48_000);
        let bytes = w.finish().unwrap();

        // Structure: BOS head page alone, tags on page 1, audio after; EOS only last.
        let pages = parse_pages(&bytes);
        assert_eq!(pages[0].flags, FLAG_BOS);
        assert_eq!(pages[0].packets.len(), 1);
        let head = &pages[0].packets[0];
        assert_eq!(head.len(), 19);
        assert_eq!(&head[..10], b"OpusHead\x01\x01");
        assert_eq!(u16::from_le_bytes([head[10], head[11]]), 312);
        assert_eq!(u32::from_le_bytes(head[12..16].try_into().unwrap()), 48_000);
        assert_eq!(&head[16..], &[0, 0, 0]);
        assert_eq!(pages[1].packets.len(), 1);
        assert_eq!(&pages[1].packets[0][..8], b"OpusTags");
        assert_eq!((pages[0].granule, pages[1].granule), (0, 0));
        for (i, p) in pages.iter().enumerate() {
            assert_eq!(p.sequence, i as u32);
            assert_eq!(p.serial, 42);
            let last = i == pages.len() - 1;
            assert_eq!(p.flags & FLAG_EOS != 0, last);
            assert_eq!(p.flags & FLAG_BOS != 0, i == 0);
        }
        // 150 tone pages + 1 s of silence in one page.
        assert_eq!(pages.len(), 2 + 150 + 1);
        assert_eq!(pages[2].granule, 960);
        assert_eq!(pages[2 + 75].packets.len(), 50);
        assert_eq!(pages[2 + 75].granule, 120_000);
        assert_eq!(pages.last().unwrap().granule, 192_000);

        let path = temp_path("tone-gap-tone.opus");
        std::fs::write(&path, &bytes).unwrap();
        let (ok, info) = opusinfo(&path);
        assert!(ok, "opusinfo: {info}");
        assert!(
            !info.contains("WARNING") && !info.contains("ERROR"),
            "{info}"
        );
        assert!(info.contains("TITLE=Floor"), "{info}");

        let duration = ffprobe_duration(&path);
        assert!((duration - 4.0).abs() <= 0.02, "duration {duration}");

        let pcm = ffmpeg_decode(&path);
        assert_eq!(
            pcm.len(),
            192_000 - 312,
            "decoded length is granule minus pre-skip"
        );
        // Pre-skip trimming makes output sample n match input sample n, so the gap
        // occupies packets 75..125 shifted 312 samples earlier. Leave margins for the
        // MDCT overlap tail of the tone and the decoder settling on the tone again.
        let ms = |m: usize| m * 48;
        let silent = dbfs(&pcm[ms(1520)..ms(2480)]);
        assert!(silent < -60.0, "gap at {silent:.1} dBFS");
        // A 0.5 amplitude sine is about -9 dBFS.
        for (a, b) in [(100, 1400), (2600, 3900)] {
            let loud = dbfs(&pcm[ms(a)..ms(b)]);
            assert!(
                (-12.0..-6.0).contains(&loud),
                "tone {a}..{b} ms at {loud:.1} dBFS"
            );
        }
    }

    // (3) Crash: no finish.

    #[test]
    fn cut_short_file_is_still_readable() {
        let (packets, pre_skip) = encode_sine(2, opus::Channels::Mono);
        let mut bytes = Vec::new();
        {
            let mut w = Writer::new(&mut bytes, 7, 1, pre_skip, &comments()).unwrap();
            for p in &packets[..50] {
                w.packet(p, 960).unwrap();
            }
            w.silence(9_600).unwrap();
            for p in &packets[50..] {
                w.packet(p, 960).unwrap();
            }
            // Dropped without finish: the held-back last packet is lost.
        }
        let pages = parse_pages(&bytes);
        assert_eq!(pages.len(), 2 + 50 + 1 + 49);
        assert!(pages.iter().all(|p| p.flags & FLAG_EOS == 0));
        let written = 2.2 - 0.02;
        assert_eq!(pages.last().unwrap().granule, 104_640);

        let path = temp_path("cut-short.opus");
        std::fs::write(&path, &bytes).unwrap();
        check_cut_short(&path, written);

        // A crash in the middle of writing a page: the torn page is ignored.
        let torn = &bytes[..bytes.len() - 40];
        let path = temp_path("torn.opus");
        std::fs::write(&path, torn).unwrap();
        check_cut_short(&path, written - 0.02);
    }

    fn check_cut_short(path: &Path, written: f64) {
        let duration = ffprobe_duration(path);
        assert!(
            (duration - written).abs() <= 0.001,
            "ffprobe duration {duration}"
        );
        let pcm = ffmpeg_decode(path);
        // Decoders drop the 312 pre-skip samples from the granule-based length.
        let decoded = pcm.len() as f64 / 48_000.0;
        let expected = written - 312.0 / 48_000.0;
        assert!((decoded - expected).abs() <= 0.001, "decoded {decoded} s");

        // opusinfo reads every packet; its only complaint is the missing end of stream:
        //   WARNING: EOS not set on stream 1 (normal for live streams)
        // and, because it printed a warning, it exits with status 1. It still reports
        // the full playback length (granule minus pre-skip). Shown with --nocapture.
        let (ok, info) = opusinfo(path);
        println!("opusinfo {}:\n{info}", path.display());
        let complaints: Vec<&str> = info
            .lines()
            .filter(|l| l.contains("WARNING") || l.contains("ERROR"))
            .collect();
        assert_eq!(
            complaints,
            ["WARNING: EOS not set on stream 1 (normal for live streams)"],
            "{info}"
        );
        assert!(!ok, "opusinfo exits 1 after a warning: {info}");
        let length = info
            .lines()
            .find_map(|l| l.trim().strip_prefix("Playback length: "))
            .unwrap_or_else(|| panic!("no playback length: {info}"));
        let (min, sec) = length.trim_end_matches('s').split_once("m:").unwrap();
        let length = min.parse::<f64>().unwrap() * 60.0 + sec.parse::<f64>().unwrap();
        assert!(
            (length - decoded).abs() <= 0.002,
            "opusinfo length {length}"
        );
    }

    // (4) Lacing.

    #[test]
    fn lacing_round_trips_for_all_small_sizes() {
        for len in 0..=600usize {
            let packet: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let mut lacing = Vec::new();
            lace(&mut lacing, len);
            assert_eq!(lacing.len(), len / 255 + 1, "len {len}");
            assert_eq!(*lacing.last().unwrap() as usize, len % 255);
            let mut page = Vec::new();
            encode_page(&mut page, 0, len as u64, 1, 2, &lacing, &packet);
            let pages = parse_pages(&page);
            assert_eq!(pages.len(), 1);
            assert_eq!(pages[0].packets, vec![packet], "len {len}");
            assert_eq!(pages[0].granule, len as u64);
        }
        // 255 and 510 end with an explicit 0 segment.
        for (len, expected) in [
            (255, vec![255, 0]),
            (510, vec![255, 255, 0]),
            (254, vec![254]),
        ] {
            let mut lacing = Vec::new();
            lace(&mut lacing, len);
            assert_eq!(lacing, expected);
        }
        // Several packets in one page, including empty and 255-byte ones.
        let sizes = [0usize, 255, 1, 510, 254, 0, 3];
        let packets: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![n as u8; n]).collect();
        let mut lacing = Vec::new();
        for p in &packets {
            lace(&mut lacing, p.len());
        }
        let mut page = Vec::new();
        encode_page(&mut page, FLAG_EOS, 9, 1, 2, &lacing, &packets.concat());
        assert_eq!(parse_pages(&page)[0].packets, packets);
    }

    #[test]
    fn largest_packet_fits_one_page() {
        let mut w = Writer::new(Vec::new(), 1, 1, 312, &[]).unwrap();
        let big = vec![0xF8; MAX_PACKET_LEN];
        w.packet(&big, 960).unwrap();
        assert!(matches!(
            w.packet(&vec![0xF8; MAX_PACKET_LEN + 1], 960),
            Err(Error::PacketTooLong(65_025))
        ));
        let pages = parse_pages(&w.finish().unwrap());
        assert_eq!(pages[2].packets, vec![big]);
        assert_eq!(pages[2].flags, FLAG_EOS);
    }

    // Silence packets.

    /// The silence packets the writer emits for `samples`, read back from its output.
    fn silence_packets(channels: u8, samples: u32) -> Vec<Vec<u8>> {
        let mut w = Writer::new(Vec::new(), 1, channels, 312, &[]).unwrap();
        w.silence(samples).unwrap();
        assert_eq!(w.samples(), u64::from(samples));
        let pages = parse_pages(&w.finish().unwrap());
        pages[2..].iter().flat_map(|p| p.packets.clone()).collect()
    }

    #[test]
    fn silence_packet_bytes() {
        assert_eq!(silence_packets(1, 960), vec![vec![0xF8, 0xFF, 0xFE]]);
        assert_eq!(silence_packets(2, 960), vec![vec![0xFC, 0xFF, 0xFE]]);
        assert_eq!(silence_packets(1, 120), vec![vec![0xE3, 1, 0xFF, 0xFE]]);
        assert_eq!(
            silence_packets(1, 960 + 720),
            vec![
                vec![0xF8, 0xFF, 0xFE],
                vec![0xEB, 3, 0xFF, 0xFE, 0xFF, 0xFE, 0xFF, 0xFE]
            ]
        );
        assert_eq!(silence_packets(1, 480), vec![vec![0xF3, 1, 0xFF, 0xFE]]);
        assert!(silence_packets(1, 0).is_empty());
        let mut w = Writer::new(Vec::new(), 1, 1, 312, &[]).unwrap();
        assert!(matches!(w.silence(100), Err(Error::UnalignedSilence(100))));
    }

    #[test]
    fn silence_decodes_to_digital_silence_with_libopus() {
        for (channels, ch) in [(1u8, opus::Channels::Mono), (2, opus::Channels::Stereo)] {
            for samples in (120..=1920).step_by(120) {
                let packets = silence_packets(channels, samples);
                let mut dec = opus::Decoder::new(48_000, ch).unwrap();
                let mut out = vec![0i16; 5760 * usize::from(channels)];
                let mut total = 0;
                for p in &packets {
                    let n = dec.decode(p, &mut out, false).unwrap();
                    assert_eq!(opus::packet::get_nb_samples(p, 48_000).unwrap(), n);
                    assert!(out[..n * usize::from(channels)].iter().all(|&s| s == 0));
                    total += n;
                }
                assert_eq!(total, samples as usize);
            }
        }
    }

    #[test]
    fn silence_after_tone_settles_to_zero_with_libopus() {
        // Mid-stream the first silence frame still carries the tone's overlap tail
        // (2.5 ms MDCT overlap); from the next frame on the output must be silent.
        let (packets, _) = encode_sine(1, opus::Channels::Mono);
        let mut dec = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
        let mut out = vec![0i16; 5760];
        for p in &packets {
            dec.decode(p, &mut out, false).unwrap();
        }
        let silence = silence_packets(1, 960 * 5 + 840);
        let mut decoded = Vec::new();
        for p in &silence {
            let n = dec.decode(p, &mut out, false).unwrap();
            decoded.extend_from_slice(&out[..n]);
        }
        assert_eq!(decoded.len(), 960 * 5 + 840);
        let tail = dbfs(&decoded[960..]);
        assert!(tail < -90.0, "{tail:.1} dBFS");
    }

    #[test]
    fn stereo_file_is_valid() {
        let (packets, pre_skip) = encode_sine(1, opus::Channels::Stereo);
        let mut w = Writer::new(Vec::new(), 3, 2, pre_skip, &[]).unwrap();
        for p in &packets {
            w.packet(p, 960).unwrap();
        }
        w.silence(24_000 + 360).unwrap();
        let path = temp_path("stereo.opus");
        std::fs::write(&path, w.finish().unwrap()).unwrap();
        let (ok, info) = opusinfo(&path);
        assert!(
            ok && !info.contains("WARNING") && !info.contains("ERROR"),
            "{info}"
        );
        let duration = ffprobe_duration(&path);
        assert!((duration - 1.5075).abs() < 0.001, "{duration}");
    }

    #[test]
    fn no_audio_stream_ends_on_tags_page() {
        let bytes = Writer::new(Vec::new(), 5, 1, 312, &comments())
            .unwrap()
            .finish()
            .unwrap();
        let pages = parse_pages(&bytes);
        assert_eq!(pages.len(), 2);
        assert_eq!(pages[1].flags, FLAG_EOS);
        assert_eq!(&pages[1].packets[0][..8], b"OpusTags");
    }

    #[test]
    fn rejects_invalid_input() {
        assert!(matches!(
            Writer::new(Vec::new(), 1, 3, 312, &[]),
            Err(Error::UnsupportedChannels(3))
        ));
        assert!(matches!(
            Writer::new(Vec::new(), 1, 0, 312, &[]),
            Err(Error::UnsupportedChannels(0))
        ));
        for bad in ["novalue", "=x", "KE\u{7e}Y=x"] {
            assert!(matches!(
                Writer::new(Vec::new(), 1, 1, 312, &[bad.to_string()]),
                Err(Error::InvalidComment(_))
            ));
        }
        let mut w = Writer::new(Vec::new(), 1, 1, 312, &[]).unwrap();
        assert!(matches!(w.packet(&[], 960), Err(Error::EmptyPacket)));
        assert!(matches!(
            w.packet(&[0xF8], 0),
            Err(Error::InvalidDuration(0))
        ));
        assert!(matches!(
            w.packet(&[0xF8], 5_761),
            Err(Error::InvalidDuration(5_761))
        ));
        assert_eq!(w.samples(), 0);
    }
}
