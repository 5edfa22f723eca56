// The page's playout (web-client/playout.js) on a simulated clock, no browser: frames arrive on
// a schedule, the output pulls 128 samples at a time, and what was played when is checked.
// Deterministic: the same schedule gives the same result every run.

import { Playout } from '../../web-client/playout.js';
import * as s from './support.mjs';

const FRAME = 960; // 20 ms at 48 kHz
const QUANTUM = 128;
const toMs = (samples) => samples / 48;

// Runs a schedule: `arrivals[k]` is the output sample at which frame k arrives, each frame a
// 750 Hz sine of `amplitude`. Returns per-frame delays (ms from the frame's arrival to its first
// sample at the output), the output's peak and the playout's counters.
function simulate(arrivals, { seqs = null, delayMs = 0, amplitude = 0.1, onStep = null } = {}) {
  const p = new Playout({ delayMs });
  const out = new Float32Array(QUANTUM);
  let head = 0;
  let next = 0;
  let peak = 0;
  const delays = [];
  const end = Math.max(...arrivals) + 48000;
  let report = null;
  while (head < end) {
    while (next < arrivals.length && arrivals[next] <= head) {
      const samples = new Float32Array(FRAME);
      for (let i = 0; i < FRAME; i++) samples[i] = amplitude * Math.sin((2 * Math.PI * 750 * (next * FRAME + i)) / 48000);
      const seq = seqs ? seqs[next] : next;
      p.push({ seq, channel: 1, samples, relayUs: next, arrivalMs: arrivals[next] });
      next++;
    }
    if (onStep) onStep(p, head);
    p.pull(out, head);
    for (const x of out) peak = Math.max(peak, Math.abs(x));
    head += QUANTUM;
    report = p.report();
    for (const [k, arrival, at] of report.played) delays.push(toMs(at - arrival));
  }
  return { delays, peak, ...report };
}

const steady = (n, start = 3000) => Array.from({ length: n }, (_, k) => start + k * FRAME);
const median = (xs) => s.percentile(xs, 50);

await s.run('playout', async () => {
  // A steady stream: the margin shrinks from 20 ms to a few ms; nothing lost or skipped.
  let r = simulate(steady(1500));
  s.assert(r.underruns === 0 && r.skipped === 0 && r.lost === 0, `steady: ${JSON.stringify(r)}`);
  s.assert(median(r.delays.slice(-250)) <= 12, `steady: settles near the minimum margin, got ${median(r.delays.slice(-250))} ms`);

  // One frame in fifty 24 ms late (the next one right behind it): the margin learns to cover
  // it and stops dropping out; the delay stays far below the listen client's 40 ms + a frame.
  const lateEachSecond = steady(1500).map((t, k) => t + (k % 50 === 49 ? 24 * 48 : 0));
  for (let k = 1; k < lateEachSecond.length; k++) lateEachSecond[k] = Math.max(lateEachSecond[k], lateEachSecond[k - 1]);
  r = simulate(lateEachSecond);
  s.assert(r.underruns <= 2, `recurring late frame: the margin should learn it, ${r.underruns} underruns`);
  s.assert(s.percentile(r.delays.slice(-500), 95) <= 60, `recurring late frame: p95 ${s.percentile(r.delays.slice(-500), 95)} ms`);

  // A 260 ms stall every 5 s, released as a burst: never a backlog; back at live.
  const stalls = steady(1500).map((t, k) => {
    const c = k % 250;
    return c >= 100 && c < 113 ? t + (113 - c) * FRAME : t;
  });
  r = simulate(stalls);
  s.assert(r.skipped > 0, 'stalls: the backlog is skipped');
  s.assert(median(r.delays) <= 30, `stalls: back to live after each, median ${median(r.delays)} ms`);
  s.assert(Math.max(...r.delays.slice(-200)) <= 60, `stalls: no lasting backlog, max ${Math.max(...r.delays.slice(-200))} ms`);

  // Jitter of 0-30 ms on every frame (seeded): no underruns once the margin has grown.
  let seed = 7;
  const rand = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
  const jittery = steady(1500).map((t) => t + Math.floor(rand() * 30 * 48));
  r = simulate(jittery);
  const afterWarmUp = simulate(jittery.slice(0, 250)).underruns;
  s.assert(r.underruns === afterWarmUp, `jitter: underruns only while learning (${afterWarmUp}), got ${r.underruns}`);
  s.assert(s.percentile(r.delays, 95) <= 60, `jitter: p95 ${s.percentile(r.delays, 95)} ms`);

  // Two frames lost: concealed in place, the timeline goes on.
  const seqs = Array.from({ length: 300 }, (_, k) => (k < 100 ? k : k + 2));
  r = simulate(steady(300), { seqs });
  s.assert(r.lost === 2 && r.concealed === 2 && r.underruns === 0, `loss: ${JSON.stringify({ lost: r.lost, concealed: r.concealed })}`);

  // The relay restarted: sequence numbers begin again at 0; playback goes on at live.
  const restarted = Array.from({ length: 300 }, (_, k) => (k < 150 ? k + 5000 : k - 150));
  r = simulate(steady(300), { seqs: restarted });
  s.assert(r.delays.length >= 298 && Math.max(...r.delays.slice(-100)) <= 30, 'restart: plays on at live');

  // Listener delay: 500 ms on top of the margin.
  r = simulate(steady(400), { delayMs: 500 });
  s.assert(Math.abs(median(r.delays.slice(-100)) - 500) <= 25, `delay: ${median(r.delays.slice(-100))} ms for 500`);

  // Channel switch: reset() drops what is queued; the next frame plays at once.
  let resetAt = null;
  r = simulate(steady(300), {
    onStep: (p, head) => {
      if (resetAt === null && head >= 3000 + 150 * FRAME + 10) {
        p.reset();
        resetAt = head;
      }
    },
  });
  s.assert(r.delays.length > 0 && r.underruns === 0, 'switch: plays on after a reset');

  // The limiter: a full-scale signal comes out at no more than -6 dBFS; speech-level audio
  // (-10 dBFS) passes untouched.
  r = simulate(steady(100), { amplitude: 1.0 });
  s.assert(r.peak <= 0.5 + 1e-6, `limiter: full scale comes out at ${r.peak}`);
  r = simulate(steady(100), { amplitude: 0.3 });
  s.assert(Math.abs(r.peak - 0.3) < 0.01, `limiter: -10 dBFS comes out at ${r.peak}`);
});
