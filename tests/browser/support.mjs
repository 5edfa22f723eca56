// Shared by the browser tests: a real relay and real booth and floor clients on loopback, WAV
// test signals made by sox, headless Chromium through playwright-core, and probes of the page's
// own audio graph. Every wait has a timeout; every child process is killed on exit, also on
// failure.

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const BIN = process.env.BOOTHCAST_BIN || join(ROOT, 'target', 'debug', 'boothcast');
const require = createRequire(join(ROOT, 'web-client', 'package.json'));
const { chromium } = require('playwright-core');

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const SCREENSHOTS = join(ROOT, 'target', 'browser-screenshots');

// A distinct sine per channel, far enough apart that a 2048-point FFT (23 Hz bins) tells them
// apart, and none a harmonic of another.
export const TONES = {
  'plenary/floor': 330,
  'plenary/az': 470,
  'plenary/en': 610,
  'plenary/ru': 750,
  'plenary/ar': 890,
  'plenary/fr': 1030,
};

export const SECRETS = {
  floor: 'floor-secret',
  az: 'secret-az',
  en: 'secret-en',
  ru: 'secret-ru',
  ar: 'secret-ar',
  fr: 'secret-fr',
};

// The built-in event's channels with known secrets and short holds.
export const EVENT = `
[event]
name = "Test Forum"

[secrets]
floor = "${SECRETS.floor}"
engineer = "engineer-secret"

[[rooms]]
id = "plenary"

[[rooms.channels]]
lang = "az"
name = "Azerbaijani"
native = "Azərbaycanca"
hold_ms = 300

[[rooms.channels]]
lang = "en"
name = "English"
native = "English"
hold_ms = 300

[[rooms.channels]]
lang = "ru"
name = "Russian"
native = "Русский"
hold_ms = 300

[[rooms.channels]]
lang = "ar"
name = "Arabic"
native = "العربية"
hold_ms = 300

[[rooms.channels]]
lang = "fr"
name = "French"
native = "Français"
hold_ms = 300
${['az', 'en', 'ru', 'ar', 'fr']
  .map((b) => `\n[[rooms.booths]]\nid = "${b}"\nlanguages = ["${b}"]\nsecret = "${SECRETS[b]}"\n`)
  .join('')}`;

const children = new Set();
let workDir = null;

export function tmp() {
  workDir ??= mkdtempSync(join(tmpdir(), 'boothcast-browser-'));
  return workDir;
}

const unloads = [];

// Runs `fn` when the script ends, also on failure (a browser's process group, a sink).
export function atExit(fn) {
  unloads.push(fn);
}

function cleanup() {
  for (const u of unloads.splice(0)) {
    try {
      u();
    } catch {}
  }
  for (const c of children) {
    try {
      c.kill('SIGKILL');
    } catch {}
  }
  children.clear();
  if (workDir) rmSync(workDir, { recursive: true, force: true });
  workDir = null;
}
process.on('exit', cleanup);
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    cleanup();
    process.exit(1);
  });
}

// Runs a test body; exit code 0 only if it finished. Whatever happens, children are killed.
export async function run(name, body, { timeoutMs = 110000 } = {}) {
  const timer = setTimeout(() => {
    console.error(`${name}: did not finish within ${timeoutMs / 1000} s`);
    for (const c of children) if (c.tail && c.tail.length) console.error(`--- ${c.label}:\n${c.tail.join('\n')}`);
    cleanup();
    process.exit(1);
  }, timeoutMs);
  let browser = null;
  try {
    await body({ launch: async (opts) => (browser = await launch(opts)) });
    console.log(JSON.stringify({ test: name, ok: true }));
  } catch (e) {
    console.error(`${name}: FAILED: ${e && e.stack ? e.stack : e}`);
    for (const c of children) if (c.tail && c.tail.length) console.error(`--- ${c.label}:\n${c.tail.join('\n')}`);
    process.exitCode = 1;
  } finally {
    clearTimeout(timer);
    if (browser) await browser.close().catch(() => {});
    cleanup();
  }
}

export function figure(obj) {
  console.log(JSON.stringify(obj));
}

export async function waitFor(what, check, timeoutMs = 10000, everyMs = 20) {
  const end = Date.now() + timeoutMs;
  const fail = () => new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
  for (;;) {
    // A check that itself hangs (a browser that stopped answering) times out too.
    let timer;
    const late = new Promise((_, reject) => {
      timer = setTimeout(() => reject(fail()), Math.max(0, end - Date.now()) + 1000);
    });
    let v;
    try {
      v = await Promise.race([check(), late]);
    } finally {
      clearTimeout(timer);
    }
    if (v) return v;
    if (Date.now() > end) throw fail();
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

const started = Date.now();
// `promise`, or an error naming `what` after `ms`: a browser that stops answering a command
// fails the step instead of hanging the test.
export async function within(ms, what, promise) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms to ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

// Notes a step of a long test on standard error, with the seconds since the start: the last
// ones say where a test that failed or hung was.
export function step(text) {
  console.error(`[${((Date.now() - started) / 1000).toFixed(1)} s] ${text}`);
}

export function assert(cond, message) {
  if (!cond) throw new Error(message);
}

function track(proc, label) {
  proc.label = label;
  proc.tail = [];
  children.add(proc);
  const keep = (chunk) => {
    for (const line of chunk.toString().split('\n')) {
      if (!line) continue;
      proc.tail.push(line);
      if (proc.tail.length > 30) proc.tail.shift();
    }
  };
  proc.stderr.on('data', keep);
  proc.exited = new Promise((r) => proc.on('exit', (code, signal) => r({ code, signal })));
  proc.exited.then(() => children.delete(proc));
  return proc;
}

// `boothcast serve` on loopback; resolves once it says where it listens.
// `realtime`: under SCHED_FIFO, as startFloor. `flags`: more options of `serve` (`--record DIR`).
// `webDir`: another page directory.
export async function startRelay({ env = {}, port = 0, event = EVENT, realtime = false, flags = [], webDir = join(ROOT, 'web-client') } = {}) {
  const config = join(tmp(), 'event.toml');
  writeFileSync(config, event);
  const args = ['serve', '--config', config, '--listen', `127.0.0.1:${port}`, '--web-dir', webDir, ...flags];
  const [cmd, argv] = realtime ? ['chrt', ['-f', '10', BIN, ...args]] : [BIN, args];
  const proc = track(spawn(cmd, argv, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] }), 'relay');
  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the relay did not start within 20 s')), 20000);
    let buf = '';
    proc.stdout.on('data', (chunk) => {
      buf += chunk.toString();
      proc.printed = buf;
      const m = buf.match(/listening on http:\/\/(\S+)/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    proc.exited.then(({ code }) => reject(new Error(`the relay exited (${code}) before listening`)));
  });
  return {
    proc,
    addr,
    http: `http://${addr}`,
    ws: `ws://${addr}`,
    async kill() {
      proc.kill('SIGKILL');
      await proc.exited;
    },
  };
}

// A WAV of a sine, 48 kHz mono, at -10 dBFS (under the page's limiter ceiling). With
// `tremolo` its level moves three times a second, as speech's does: the relay sends level
// meters only while they change.
export function sine(freq, seconds = 10, { tremolo = false } = {}) {
  const path = join(tmp(), `sine-${freq}${tremolo ? '-tremolo' : ''}.wav`);
  if (!existsSync(path)) {
    const effects = tremolo ? ['tremolo', '3', '60'] : [];
    execFileSync('sox', ['-n', '-r', '48000', '-c', '1', '-b', '16', path, 'synth', `${seconds}`, 'sine', `${freq}`, 'vol', '0.3', ...effects]);
  }
  return path;
}

// The floor feed, looping its sine. `realtime` runs it under SCHED_FIFO (chrt), as on a
// dedicated machine at the mixing desk, so that a busy test machine does not make its frames
// late: for measuring the page, not the sender.
// `wav`: another file to loop instead of the sine.
export function startFloor(relay, freq = TONES['plenary/floor'], { realtime = false, tremolo = false, wav = null, room = null } = {}) {
  const args = ['floor', '--server', relay.ws, '--input-file', wav || sine(freq, 10, { tremolo }), '--loop',
    ...(room ? ['--room', room] : [])];
  const [cmd, argv] = realtime ? ['chrt', ['-f', '10', BIN, ...args]] : [BIN, args];
  const proc = spawn(cmd, argv, {
    env: { ...process.env, BOOTHCAST_SECRET: SECRETS.floor },
    // Its JSON lines (every `channels` change) go nowhere: a pipe nobody reads fills up and
    // stalls the floor's sending.
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  return track(proc, 'floor');
}

// A booth console looping its sine, live at once unless `live: false`; commands go to its
// standard input, its JSON lines collect in `lines`.
export function startBooth(relay, booth, freq = TONES[`plenary/${booth}`], { live = true, tremolo = false, secret = SECRETS[booth] } = {}) {
  const proc = spawn(
    BIN,
    ['booth', '--server', relay.ws, '--booth', booth, '--input-file', sine(freq, 10, { tremolo }), '--loop',
      ...(live ? ['--live'] : [])],
    { env: { ...process.env, BOOTHCAST_SECRET: secret }, stdio: ['pipe', 'pipe', 'pipe'] },
  );
  track(proc, `booth ${booth}`);
  proc.lines = [];
  proc.stdout.on('data', (c) => proc.lines.push(...c.toString().split('\n').filter(Boolean)));
  proc.command = (line) => proc.stdin.write(line + '\n');
  return proc;
}

// Waits until the relay says a booth's console is live.
export async function boothLive(booth, timeoutMs = 15000) {
  await waitFor(
    `booth ${booth.label} to go live`,
    () => booth.lines.some((l) => l.includes('"type":"console"') && /"live":"[a-z0-9_-]+\//.test(l)),
    timeoutMs,
  );
}

// `realtime`: Chromium under SCHED_RR (chrt, through a wrapper script), as the audio of a
// phone or laptop runs with real-time priority; for measuring on a machine busy with other work.
export async function launch({ realtime = false, args = [] } = {}) {
  let executablePath = CHROMIUM;
  if (realtime) {
    executablePath = join(tmp(), 'chromium-rt');
    writeFileSync(executablePath, `#!/bin/sh\nexec chrt -r 5 ${CHROMIUM} "$@"\n`, { mode: 0o755 });
  }
  return chromium.launch({
    executablePath,
    env: { ...process.env, ...audioOutput() },
    headless: true,
    args: [
      '--no-sandbox',
      '--autoplay-policy=no-user-gesture-required',
      '--disable-gpu',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      // The page keeps playing when its tab is not in front.
      '--disable-background-timer-throttling',
      '--disable-renderer-backgrounding',
      ...args,
    ],
  });
}

// Where Chromium's sound goes: a PulseAudio null sink of this script's own, so that the pages'
// test tones never reach the default sink, which the device tests use as the booth's
// microphone. Without PulseAudio, Chromium plays into its own silent output at the same pace.
function audioOutput() {
  try {
    const name = `boothcast_browser_${process.pid}`;
    const module = execFileSync('pactl', ['load-module', 'module-null-sink', `sink_name=${name}`, 'rate=48000'], {
      stdio: ['ignore', 'pipe', 'ignore'],
    })
      .toString()
      .trim();
    unloads.push(() => execFileSync('pactl', ['unload-module', module], { stdio: 'ignore' }));
    return { PULSE_SINK: name };
  } catch {
    return { PULSE_SERVER: 'unix:/nonexistent' };
  }
}

// Installs an AnalyserNode on the page's current player output (window.boothcast.player).
export async function probe(page) {
  await page.evaluate(() => {
    const p = window.boothcast.player;
    if (window.__probe && window.__probe.player === p) return;
    const analyser = p.context.createAnalyser();
    analyser.fftSize = 2048;
    analyser.smoothingTimeConstant = 0;
    p.output.connect(analyser);
    const bins = new Float32Array(analyser.frequencyBinCount);
    const time = new Float32Array(analyser.fftSize);
    window.__probe = {
      player: p,
      // The strongest frequency of the last 43 ms of output, and the output's RMS level.
      read() {
        analyser.getFloatFrequencyData(bins);
        analyser.getFloatTimeDomainData(time);
        let best = 0;
        for (let i = 1; i < bins.length; i++) if (bins[i] > bins[best]) best = i;
        let sum = 0;
        for (const x of time) sum += x * x;
        return { freq: (best * p.context.sampleRate) / analyser.fftSize, rms: Math.sqrt(sum / time.length) };
      },
    };
  });
}

// Whether the page's sound is now the given tone (within one FFT bin and audible).
export function isTone(reading, freq) {
  return reading.rms > 0.02 && Math.abs(reading.freq - freq) < 30;
}

// Polls the page's output every few ms, in the page, until it carries `freq`; resolves to the
// time in ms since `t0` (performance.now() in the page) or throws after `timeoutMs`.
export async function waitTone(page, freq, timeoutMs, t0 = null) {
  const r = await page.evaluate(
    ({ freq, timeoutMs, t0 }) =>
      new Promise((resolve) => {
        const start = t0 ?? performance.now();
        const end = performance.now() + timeoutMs;
        let last = null;
        const tick = () => {
          last = window.__probe.read();
          if (last.rms > 0.02 && Math.abs(last.freq - freq) < 30) {
            resolve({ ok: true, ms: performance.now() - start });
          } else if (performance.now() > end) {
            resolve({ ok: false, last });
          } else {
            setTimeout(tick, 2);
          }
        };
        tick();
      }),
    { freq, timeoutMs, t0 },
  );
  if (!r.ok) {
    throw new Error(
      `the page did not play ${freq} Hz within ${timeoutMs} ms (last heard ${r.last.freq.toFixed(0)} Hz at RMS ${r.last.rms.toFixed(3)})`,
    );
  }
  return r.ms;
}

export function percentile(xs, p) {
  if (!xs.length) return null;
  const s = xs.slice().sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}
