// Listening where a person would: what a browser plays is recorded from the monitor of a
// PulseAudio null sink of the test's own (the browser gets it through PULSE_SINK), and checked
// for discontinuities of the sine and for the delay from the relay to the sink.
//
// The floor sends a marked tone (markedTone): a 1 kHz sine whose level steps between two
// values every 500 ms, always at a zero crossing, so the waveform has no jump and its phase
// runs on; the steps are the markers. A listener of this script's own (relayListener) decodes
// the frames the relay sends and notes at which relay time each step left the relay; the
// recording says when it reached the sink.

import { spawn, execFileSync } from 'node:child_process';
import { writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { ROOT, tmp, waitFor } from './support.mjs';

const require = createRequire(join(ROOT, 'web-client', 'package.json'));
const WebSocket = require('ws');

export const RATE = 48000;
// 48 samples a period: 500 ms holds exactly 500 of them. High enough that one sample skipped
// or repeated turns the phase by 0.13 rad.
export const MARK_FREQ = 1000;
// The steps are small (3.5 dB): the codec smears a level step and its noise is larger right
// after one.
const HIGH = 0.3;
const LOW = 0.2;
const STEP_S = 0.5;
// The analysis works on blocks of two periods of the tone (2 ms).
const PERIODS = 2;
const BLOCK = (PERIODS * RATE) / MARK_FREQ;
// A phase jump between two blocks bigger than this is a discontinuity: 0.08 rad at 1 kHz is
// 0.6 of a sample skipped or repeated; the codec's noise moves a block's phase by a few
// hundredths of a radian at most.
const PHASE_JUMP = 0.08;

const nowMs = () => performance.timeOrigin + performance.now();

// The marked tone as a 16-bit 48 kHz mono WAV of `seconds` (a whole number of steps, so that
// it loops without a seam).
export function markedTone(seconds = 10) {
  const path = join(tmp(), `marked-${MARK_FREQ}.wav`);
  if (existsSync(path)) return path;
  const n = seconds * RATE;
  const buf = Buffer.alloc(44 + 2 * n);
  buf.write('RIFF', 0);
  buf.writeUInt32LE(36 + 2 * n, 4);
  buf.write('WAVEfmt ', 8);
  buf.writeUInt32LE(16, 16);
  buf.writeUInt16LE(1, 20);
  buf.writeUInt16LE(1, 22);
  buf.writeUInt32LE(RATE, 24);
  buf.writeUInt32LE(2 * RATE, 28);
  buf.writeUInt16LE(2, 32);
  buf.writeUInt16LE(16, 34);
  buf.write('data', 36);
  buf.writeUInt32LE(2 * n, 40);
  const step = STEP_S * RATE;
  for (let i = 0; i < n; i++) {
    const level = Math.floor(i / step) % 2 === 0 ? HIGH : LOW;
    const v = level * Math.sin((2 * Math.PI * MARK_FREQ * i) / RATE);
    buf.writeInt16LE(Math.round(v * 32767), 44 + 2 * i);
  }
  writeFileSync(path, buf);
  return path;
}

// A null sink for one browser; unloaded by `close`. It does not rewind: a rewound null sink
// has already passed the sound to its monitor, which would then hold part of it twice.
export function nullSink(label) {
  const name = `boothcast_${label}_${process.pid}_${Math.floor(Math.random() * 1e6)}`;
  const module = execFileSync(
    'pactl',
    ['load-module', 'module-null-sink', `sink_name=${name}`, 'rate=48000', 'channels=1', 'norewinds=1'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  )
    .toString()
    .trim();
  return {
    name,
    env: { PULSE_SINK: name },
    close() {
      try {
        execFileSync('pactl', ['unload-module', module], { stdio: 'ignore' });
      } catch {}
    },
  };
}

// Records the sink's monitor. `stop()` gives the samples and the wall-clock time (ms since the
// epoch) at which sample 0 was at the sink: the earliest of (a chunk's arrival − the samples up
// to its end), since delivery can only make a chunk later.
export function record(sink) {
  const proc = spawn(
    'parec',
    ['-d', `${sink.name}.monitor`, '--raw', '--format=float32le', `--rate=${RATE}`, '--channels=1', '--latency-msec=5'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const chunks = [];
  let bytes = 0;
  let t0 = Infinity;
  proc.stdout.on('data', (c) => {
    const at = nowMs();
    chunks.push(c);
    bytes += c.length;
    t0 = Math.min(t0, at - (bytes / 4 / RATE) * 1000);
  });
  let err = '';
  proc.stderr.on('data', (c) => (err += c));
  const exited = new Promise((r) => proc.on('exit', r));
  return {
    seconds: () => bytes / 4 / RATE,
    async stop() {
      proc.kill('SIGTERM');
      await exited;
      const all = Buffer.concat(chunks);
      const samples = new Float32Array(all.buffer, all.byteOffset, Math.floor(all.length / 4));
      // Empty if parec had not yet connected (it may take a while on a busy machine).
      return { samples: Float32Array.from(samples), t0, err };
    },
  };
}

// Amplitude and phase of each block of one period (quadrature demodulation at the tone).
function blocks(samples, freq = MARK_FREQ) {
  const per = Math.round((PERIODS * RATE) / freq);
  const w = (2 * Math.PI * freq) / RATE;
  const out = [];
  for (let b = 0; (b + 1) * per <= samples.length; b++) {
    let i = 0;
    let q = 0;
    for (let k = b * per; k < (b + 1) * per; k++) {
      i += samples[k] * Math.cos(w * k);
      q -= samples[k] * Math.sin(w * k);
    }
    out.push({ amp: (2 * Math.hypot(i, q)) / per, phase: Math.atan2(q, i) });
  }
  return { list: out, per };
}

const wrap = (a) => a - 2 * Math.PI * Math.round(a / (2 * Math.PI));

// Discontinuities of the tone over `seconds` from the first block carrying it (plus `skip`
// seconds to let the start settle): phase jumps between blocks beyond PHASE_JUMP after the
// steady drift (the player's clock may run a little off the sink's) is taken out, and drops
// of the level below a third of the quiet step (a gap). A run of flagged blocks counts once.
export function discontinuities(samples, { seconds = 10, skip = 0.5, freq = MARK_FREQ } = {}) {
  const { list, per } = blocks(samples, freq);
  const audible = LOW / 4;
  const first = list.findIndex((b) => b.amp > audible);
  if (first < 0) return { heard: false, count: null, perSecond: null, seconds: 0, at: [] };
  const from = first + Math.round((skip * RATE) / per);
  const to = Math.min(list.length, from + Math.round((seconds * RATE) / per));
  // A block where the level steps (a marker, smeared by the codec over a block or two) has
  // no clean phase: the phase runs from one steady block (level within 5 % of both
  // neighbours) to the next.
  const steady = (b) =>
    b > 0 && b + 1 < list.length && [list[b - 1], list[b + 1]].every((n) => Math.abs(n.amp - list[b].amp) < 0.05 * list[b].amp);
  const runs = [];
  let prev = null;
  for (let b = from; b < to; b++) {
    if (!steady(b)) continue;
    if (prev !== null && b - prev <= 8) runs.push([prev, b, wrap(list[b].phase - list[prev].phase) / (b - prev)]);
    prev = b;
  }
  // The drift: the median step per block (the tone at the sink may be a little off 400 Hz).
  const sorted = runs.map((r) => r[2]).sort((a, b) => a - b);
  const drift = sorted[Math.floor(sorted.length / 2)] || 0;
  const at = [];
  let lastBad = -2;
  for (const [a, b] of runs) {
    const jump = Math.abs(wrap(list[b].phase - list[a].phase - drift * (b - a)));
    if (jump > PHASE_JUMP) {
      if (a > lastBad + 1) at.push({ s: +(((b - from) * per) / RATE).toFixed(3), jump: +jump.toFixed(3) });
      lastBad = b;
    }
  }
  // Gaps: the level below a third of the quiet step.
  let inGap = false;
  for (let b = from; b < to; b++) {
    const gap = list[b].amp < (LOW * 0.8) / 3;
    if (gap && !inGap) at.push({ s: +(((b - from) * per) / RATE).toFixed(3), gap: true });
    inGap = gap;
  }
  at.sort((x, y) => x.s - y.s);
  const analysed = ((to - from) * per) / RATE;
  return {
    heard: true,
    count: at.length,
    perSecond: +(at.length / analysed).toFixed(2),
    seconds: +analysed.toFixed(2),
    driftHz: +((drift / (2 * Math.PI)) * (RATE / per)).toFixed(3),
    at: at.slice(0, 20),
  };
}

// The level steps in a stream of samples: [{ index, up }], found where the block level crosses
// the middle of the two levels, interpolated within the block.
export function steps(samples, { scale = 1 } = {}) {
  const { list, per } = blocks(samples);
  const mid = ((HIGH + LOW) / 2) * scale;
  const out = [];
  for (let b = 1; b < list.length; b++) {
    const a = list[b - 1].amp;
    const c = list[b].amp;
    if ((a - mid) * (c - mid) < 0 && Math.min(a, c) > LOW * scale * 0.5) {
      const frac = (mid - a) / (c - a);
      // Block b-1 is centred on (b-1)·per + per/2.
      out.push({ index: (b - 1) * per + per / 2 + frac * per, up: c > a });
    }
  }
  return out;
}

// A listener of the relay's own, in this process: decodes the channel's frames and notes the
// relay time (ms since the epoch) at which each step of the marked tone left the relay.
export async function relayListener(relay, channel = 'plenary/floor') {
  const { OpusDecoder } = await import(join(ROOT, 'web-client', 'node_modules', 'opus-decoder', 'index.js'));
  const decoder = new OpusDecoder({ channels: 1, sampleRate: RATE });
  await decoder.ready;
  const ws = new WebSocket(relay.ws + '/ws');
  ws.binaryType = 'arraybuffer';
  // Decoded samples, kept to the last few seconds, with each frame's relay time.
  let pcm = [];
  let frames = [];
  let base = 0; // sample index of pcm[0] in the whole stream
  let total = 0;
  const marks = [];
  let scanned = 0;
  ws.on('open', () => ws.send(JSON.stringify({ type: 'hello', role: 'listener', channel })));
  ws.on('message', (data, isBinary) => {
    if (!isBinary) return;
    const buf = Buffer.from(data);
    const relayMs = Number(buf.readBigUInt64BE(16)) / 1000;
    const out = decoder.decodeFrame(new Uint8Array(buf.buffer, buf.byteOffset + 28, buf.length - 28));
    if (!out.samplesDecoded) return;
    frames.push({ start: total, relayMs });
    pcm.push(out.channelData[0].slice(0, out.samplesDecoded));
    total += out.samplesDecoded;
    // Scan the last 100 ms once 100 ms have come in.
    if (total - scanned < RATE / 10) return;
    const all = Float32Array.from(pcm.flatMap((p) => Array.from(p)));
    for (const st of steps(all)) {
      const index = base + st.index;
      if (index < scanned - BLOCK * 2 || marks.some((m) => Math.abs(m.index - index) < RATE / 10)) continue;
      const f = frames.filter((x) => x.start <= index).pop();
      if (!f) continue;
      marks.push({ index, up: st.up, relayMs: f.relayMs + ((index - f.start) * 1000) / RATE });
    }
    scanned = total;
    // Keep the last 300 ms of decoded sound for the next scan.
    while (pcm.length > 15) {
      base += pcm[0].length;
      pcm.shift();
    }
    frames = frames.filter((x) => x.start >= base - RATE);
    if (marks.length > 200) marks.splice(0, marks.length - 200);
  });
  await waitFor('the relay listener to receive the marked tone', () => marks.length >= 1, 10000);
  return {
    marks,
    close: () => ws.close(),
  };
}

// The delay from the relay to the sink of each step heard at the sink, in ms: matched to the
// step of the same direction that left the relay 0-900 ms before (steps of one direction come
// once a second).
export function sinkDelays(rec, marks, { scale = 1 } = {}) {
  const out = [];
  for (const st of steps(rec.samples, { scale })) {
    const atSink = rec.t0 + (st.index * 1000) / RATE;
    const m = marks
      .filter((x) => x.up === st.up && atSink - x.relayMs > 0 && atSink - x.relayMs < 900)
      .sort((a, b) => b.relayMs - a.relayMs)[0];
    if (m) out.push(atSink - m.relayMs);
  }
  return out;
}

export function median(xs) {
  if (!xs.length) return null;
  const s = xs.slice().sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}
