// The listener's playout: places decoded frames on the audio output's timeline behind a small
// adaptive jitter margin, conceals short losses, jumps back to live after a stall, and limits
// the level. Pure logic with no Web API, so the same code runs in the AudioWorklet (main path)
// and on the page's thread behind a ScriptProcessorNode (fallback path).

export const SAMPLE_RATE = 48000;

const ms = (v) => Math.round((v * SAMPLE_RATE) / 1000);

// The margin starts where a loopback or a good Wi-Fi needs it and adapts between these bounds:
// below 5 ms the audio thread's own scheduling jitter would cause underruns; above 300 ms the
// delay is no longer useful for following the speaker's lips.
const START_MARGIN = ms(20);
const MIN_MARGIN = ms(5);
const MAX_MARGIN = ms(300);
// Headroom kept above the worst arrival jitter seen in the window before the margin shrinks.
const SAFETY = ms(5);
// Frames over which the worst jitter is taken before the margin may shrink (5 s at 20 ms):
// longer than the period of jitter that recurs every second or so, which the margin must cover.
const WINDOW = 250;
// One late frame grows the margin by at most this (plus SAFETY): a rare stall of the network
// is not worth its length in delay from then on; jitter that keeps coming grows it step by step.
const MAX_GROW = ms(20);
// A frame due further ahead than margin + listener delay + this is part of a backlog (a stall
// released a burst): the timeline jumps back to live at once. Same bound as the `listen` client.
const MAX_AHEAD = ms(200);
// A smaller backlog, more than this beyond margin + delay + one frame, is cut if it lasts for
// BACKLOG_HOLD of output: a hiccup of the audio thread catches up by itself within that time,
// the backlog of a network or sender stall does not.
const BACKLOG = ms(15);
const QUANTUM = 128;
const BACKLOG_HOLD = ms(200);
// Up to this many frames missing from the sequence are concealed; a longer gap restarts at live.
const MAX_CONCEAL_FRAMES = 5;
// The listener delay lines the sound up with a delayed video; a minute is already absurd.
export const MAX_DELAY_MS = 60000;
// Peak ceiling of the limiter, 0.5 = -6 dBFS: a sudden full-scale signal is held 6 dB below
// full scale; speech at its usual level (peaks well under -6 dBFS) passes untouched.
const CEILING = 0.5;
// The limiter's gain recovers with a 150 ms time constant, slow enough not to pump on speech.
const RELEASE = 1 - Math.exp(-1 / (0.15 * SAMPLE_RATE));
// Frames queued at most: the longest listener delay plus the backlog bound, in 2.5 ms frames
// (the shortest Opus frame), so a flood cannot grow the queue.
const MAX_QUEUE = Math.ceil(((MAX_DELAY_MS + 1000) / 2.5) | 0);

export class Playout {
  constructor({ delayMs = 0 } = {}) {
    this.delay = ms(clampDelay(delayMs));
    this.margin = START_MARGIN;
    this.head = 0; // output frame of the next sample to be written
    this.block = 0; // samples of the last output block pulled
    this.running = false; // whether pull() has been called: the output clock runs
    this.queue = []; // { start, samples, relayUs, arrivalMs, reported }, by start
    this.expected = null; // { seq, end, channel }: where the next frame of the sequence goes
    this.window = [];
    this.sinceChange = 0;
    this.gain = 1;
    this.backlogFor = 0; // samples of consecutive frames that arrived with a backlog
    this.backlogMin = 0;
    this.last = null; // samples of the last frame placed, for concealment
    this.played = []; // [relayUs, arrivalMs, outputFrame] of frames whose first sample was written
    this.counters = { underruns: 0, concealed: 0, lost: 0, skipped: 0, late: 0, frames: 0 };
  }

  // A decoded frame: { seq, channel, samples: Float32Array (48 kHz mono), relayUs, arrivalMs }.
  push(frame) {
    const len = frame.samples.length;
    if (len === 0) return;
    this.counters.frames++;
    if (!this.running) {
      // The output has not started: a frame queued now would be stale when it does.
      this.counters.skipped++;
      return;
    }
    const live = this.head + this.margin + this.delay;
    let slot;
    let gap = 0;
    const e = this.expected;
    if (e && e.channel === frame.channel) {
      // Sequence numbers wrap at 2^32; a frame "before" the expected one is a restarted relay.
      const ahead = (frame.seq - e.seq) >>> 0;
      if (ahead <= MAX_CONCEAL_FRAMES) {
        gap = ahead;
        slot = e.end + ahead * len;
      }
    }
    if (slot === undefined) {
      slot = this.restart(live);
    } else if (slot < this.head) {
      const quiet = this.queue.length === 0 && this.head - e.end > this.margin + 2 * len;
      if (!quiet) {
        // Arrived after its time with the stream running: grow the margin by what was missing.
        this.counters.underruns++;
        this.margin = Math.min(MAX_MARGIN, this.margin + Math.min(MAX_GROW, this.head - slot) + SAFETY);
        this.sinceChange = 0;
        this.window = [];
      }
      // Otherwise the channel carried nothing for a while (cough, hold): start again at live.
      gap = 0;
      slot = this.restart(this.head + this.margin + this.delay);
    } else if (slot - this.head > this.margin + this.delay + MAX_AHEAD) {
      // A backlog: whatever is queued is stale; keep this newest frame and play it at live.
      this.counters.skipped += this.queue.length;
      this.queue = [];
      gap = 0;
      slot = this.restart(live);
    }
    if (gap > 0) this.conceal(slot - gap * len, gap, len);
    this.queue.push({
      start: slot,
      samples: frame.samples,
      relayUs: frame.relayUs,
      arrivalMs: frame.arrivalMs,
      reported: false,
    });
    if (this.queue.length > MAX_QUEUE) this.queue.shift();
    this.expected = { seq: (frame.seq + 1) >>> 0, end: slot + len, channel: frame.channel };
    this.last = frame.samples;
    this.adapt(slot - this.head - this.delay);
    this.trimBacklog(slot, len);
  }

  restart(slot) {
    this.window = [];
    this.sinceChange = 0;
    return slot;
  }

  // Lost frames: the last frame repeated, fading out over the gap. Better than a hole for a
  // frame or two; longer gaps restart the timeline instead.
  conceal(start, count, len) {
    this.counters.lost += count;
    if (!this.last) return;
    const n = count * len;
    const fill = new Float32Array(n);
    for (let i = 0; i < n; i++) fill[i] = this.last[i % this.last.length] * (1 - i / n);
    this.queue.push({ start, samples: fill, relayUs: 0, arrivalMs: 0, reported: true });
    this.counters.concealed += count;
  }

  // Shrinks the margin when every frame of the last window arrived with time to spare.
  adapt(headroom) {
    this.window.push(headroom);
    if (this.window.length > WINDOW) this.window.shift();
    this.sinceChange++;
    if (this.sinceChange < WINDOW) return;
    const low = Math.min(...this.window);
    const cut = low - SAFETY;
    if (cut > ms(5)) {
      // Move the timeline earlier: the first `cut` samples still queued are dropped. The
      // margin for the next restart is what the window's jitter needed.
      this.shift(-cut);
      const spread = Math.max(...this.window) - low;
      this.margin = Math.min(MAX_MARGIN, Math.max(MIN_MARGIN, spread + SAFETY));
    }
    this.sinceChange = 0;
    this.window = [];
  }

  // Cuts a backlog that lasts: every frame for BACKLOG_HOLD arrived with more than BACKLOG of
  // headroom beyond margin + delay; the timeline moves earlier by the least of those excesses.
  // `head` moves a whole output block at a time: a frame that comes just before a block is
  // pulled looks that much further ahead than one that comes just after. BACKLOG allows for the
  // render quantum of 128 samples (the AudioWorklet's block); what a larger block (1024
  // samples behind a ScriptProcessor) adds is not counted as backlog either.
  trimBacklog(slot, len) {
    const excess = slot - this.head - this.margin - this.delay - Math.max(0, this.block - QUANTUM);
    if (excess <= BACKLOG) {
      this.backlogFor = 0;
      return;
    }
    this.backlogMin = this.backlogFor ? Math.min(this.backlogMin, excess) : excess;
    this.backlogFor += len;
    if (this.backlogFor < BACKLOG_HOLD) return;
    this.shift(-this.backlogMin);
    this.counters.skipped += Math.round(this.backlogMin / len);
    this.backlogFor = 0;
    this.window = [];
    this.sinceChange = 0;
  }

  shift(by) {
    for (const f of this.queue) f.start += by;
    if (this.expected) this.expected.end += by;
  }

  setDelay(delayMs) {
    const delay = ms(clampDelay(delayMs));
    this.shift(delay - this.delay);
    this.delay = delay;
  }

  // Channel switched: drop everything, the next frame plays at once.
  reset() {
    this.queue = [];
    this.expected = null;
    this.last = null;
    this.window = [];
    this.sinceChange = 0;
  }

  // Fills `out` (mono) with what plays from output frame `start` on.
  pull(out, start) {
    out.fill(0);
    const end = start + out.length;
    let keep = 0;
    for (const f of this.queue) {
      const fEnd = f.start + f.samples.length;
      if (f.start < end && fEnd > start) {
        const from = Math.max(f.start, start);
        const to = Math.min(fEnd, end);
        out.set(f.samples.subarray(from - f.start, to - f.start), from - start);
        if (!f.reported && f.start >= start) {
          this.played.push([f.relayUs, f.arrivalMs, f.start]);
          f.reported = true;
        }
      }
      if (fEnd > end) this.queue[keep++] = f;
      else if (!f.reported) this.counters.late++;
    }
    this.queue.length = keep;
    if (this.played.length > 500) this.played.splice(0, this.played.length - 500);
    this.limit(out);
    this.head = end;
    this.block = out.length;
    this.running = true;
  }

  limit(out) {
    let g = this.gain;
    for (let i = 0; i < out.length; i++) {
      const a = Math.abs(out[i]);
      const target = a > CEILING ? CEILING / a : 1;
      g = target < g ? target : g + (target - g) * RELEASE;
      out[i] *= g;
    }
    this.gain = g;
  }

  // What the frames played since the last call were, and the buffer's state now.
  report() {
    const played = this.played;
    this.played = [];
    let buffered = 0;
    if (this.queue.length) {
      const lastF = this.queue[this.queue.length - 1];
      buffered = Math.max(0, lastF.start + lastF.samples.length - this.head);
    }
    return {
      played,
      marginMs: (this.margin * 1000) / SAMPLE_RATE,
      bufferedMs: (buffered * 1000) / SAMPLE_RATE,
      ...this.counters,
    };
  }
}

function clampDelay(v) {
  const n = Number(v);
  return Number.isFinite(n) ? Math.min(MAX_DELAY_MS, Math.max(0, n)) : 0;
}
