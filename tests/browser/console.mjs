// The engineer's console (/console) in headless Chromium against a real relay, a floor feed
// and booth consoles sending sine tones (a distinct frequency per sender).
//
// Checks what a sound engineer would notice: a wrong secret is refused and the page says why;
// the channels are listed; a booth going live shows on the page (the delay is measured over
// repeated toggles); force-mute from the page takes the console off air; meters move; recording
// starts and stops from the page and files appear; monitoring plays the chosen channel.
// Figures are printed as JSON lines: node tests/browser/console.mjs [--toggles N]

import { spawn, execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { mkdtempSync, writeFileSync, readdirSync, statSync, existsSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const require = createRequire(join(root, 'web-client', 'package.json'));
const { chromium } = require('playwright-core');

const BIN = process.env.BOOTHCAST_BIN || join(root, 'target', 'debug', 'boothcast');
const ENGINEER = 'engineer-secret-7f3a';
// How long any single expected event may take; generous for a loaded 2-core machine.
const WAIT = 10_000;
const TOGGLES = Number(argValue('--toggles') ?? 20);
const TONES = { floor: 440, en: 1000, ru: 1500, ar: 2200 };

function argValue(name) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const EVENT = `
[event]
name = "Console Test Forum"

[secrets]
floor = "floor-secret"

[[rooms]]
id = "plenary"

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

[[rooms.booths]]
id = "en"
languages = ["en"]
secret = "secret-en"

[[rooms.booths]]
id = "ru"
languages = ["ru"]
secret = "secret-ru"

[[rooms.booths]]
id = "ar"
languages = ["ar"]
secret = "secret-ar"
`;

const children = [];
let browser = null;
const work = mkdtempSync(join(tmpdir(), 'boothcast-console-'));

function report(obj) {
  console.log(JSON.stringify(obj));
}

function fail(msg) {
  throw new Error(msg);
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// A child process whose standard output lines are kept and can be waited for.
function start(args, env = {}) {
  const child = spawn(BIN, args, {
    env: { ...process.env, RUST_LOG: 'warn', ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  children.push(child);
  const proc = { child, lines: [], waiters: [], stderr: '' };
  createInterface({ input: child.stdout }).on('line', (line) => {
    proc.lines.push(line);
    for (const w of [...proc.waiters]) {
      if (w.test(line)) {
        proc.waiters.splice(proc.waiters.indexOf(w), 1);
        w.resolve(line);
      }
    }
  });
  child.stderr.on('data', (d) => { proc.stderr = (proc.stderr + d).slice(-4000); });
  proc.exited = new Promise((resolve) => child.on('exit', resolve));
  // Resolves with the first line from now on that passes `test`.
  proc.next = (test, what) => withTimeout(
    new Promise((resolve) => proc.waiters.push({ test, resolve })), WAIT,
    `${what} from ${args[0]} (stderr: ${proc.stderr.trim().slice(-300)})`);
  // Resolves with the first line so far, or from now on, that passes `test`.
  proc.seen = (test, what) => {
    const line = proc.lines.find(test);
    return line !== undefined ? Promise.resolve(line) : proc.next(test, what);
  };
  proc.send = (line) => child.stdin.write(line + '\n');
  return proc;
}

const json = (line) => { try { return JSON.parse(line); } catch { return {}; } };

function tone(name, hz) {
  const file = join(work, `${name}.wav`);
  // Tremolo keeps the levels moving, as speech does: the relay sends levels while they change.
  execFileSync('sox', ['-n', '-r', '48000', '-c', '1', '-b', '16', file,
    'synth', '4', 'sine', String(hz), 'tremolo', '3', '60', 'vol', '0.5']);
  return file;
}

function cleanup() {
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  }
}
process.on('exit', cleanup);
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { cleanup(); process.exit(130); });

function stats(values) {
  const s = [...values].sort((a, b) => a - b);
  const at = (q) => s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)];
  return { median: at(0.5), p95: at(0.95), max: s[s.length - 1], n: s.length };
}

async function main() {
  writeFileSync(join(work, 'event.toml'), EVENT);
  const recordDir = join(work, 'recordings');
  mkdirSync(recordDir);

  const serve = async (listen) => {
    const relay = start(['serve', '--config', join(work, 'event.toml'), '--listen', listen,
      '--web-dir', join(root, 'web-client'), '--record', recordDir],
    { BOOTHCAST_ENGINEER_SECRET: ENGINEER });
    const listening = await relay.seen((l) => l.includes('http://'), 'the relay\'s address');
    return { relay, base: listening.slice(listening.indexOf('http://')).trim() };
  };
  const { relay, base } = await serve('127.0.0.1:0');
  const ws = base.replace('http://', 'ws://');

  const floor = start(['floor', '--server', ws, '--input-file', tone('floor', TONES.floor), '--loop'],
    { BOOTHCAST_SECRET: 'floor-secret' });
  const booth = (id) => start(['booth', '--server', ws, '--booth', id, '--input-file',
    tone(id, TONES[id]), '--loop'], { BOOTHCAST_SECRET: `secret-${id}` });
  const en = booth('en');
  const ru = booth('ru');
  const ar = booth('ar');
  for (const [name, p] of [['floor', floor], ['en', en], ['ru', ru], ['ar', ar]]) {
    await p.seen((l) => json(l).type === 'welcome', `${name}'s welcome`);
  }

  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--autoplay-policy=no-user-gesture-required'],
  });
  // A laptop's screen, in the dark scheme a dim control room asks for.
  const page = await browser.newPage({ viewport: { width: 1366, height: 768 }, colorScheme: 'dark' });
  page.setDefaultTimeout(WAIT);
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  const requested = [];
  page.on('request', (r) => requested.push(r.url()));

  // The relay serves the page at /console.
  const response = await page.goto(`${base}/console`);
  if (!response.ok()) fail(`GET /console answered ${response.status()}`);

  // A wrong secret: refused, and the page says why.
  await page.fill('#secret', 'not-the-secret');
  await page.click('#login button[type=submit]');
  await page.waitForFunction(() => document.querySelector('#refusal').textContent.length > 0);
  const why = await page.textContent('#refusal');
  if (!/refused/i.test(why) || !/engineer secret/.test(why)) fail(`refusal says: ${why}`);
  if (!(await page.isVisible('#login'))) fail('the secret form is gone after a refusal');
  report({ check: 'wrong secret refused', shown: why });

  // The right secret: every channel listed, with what it carries.
  await page.fill('#secret', ENGINEER);
  await page.click('#login button[type=submit]');
  await page.waitForSelector('#channels tbody tr[data-channel="plenary/ar"]');
  const rows = await page.$$eval('#channels tbody tr', (trs) => trs.map((tr) => tr.dataset.channel));
  const expected = ['plenary/floor', 'plenary/en', 'plenary/ru', 'plenary/ar'];
  if (rows.join() !== expected.join()) fail(`channels listed: ${rows}`);
  if (await page.isVisible('#login')) fail('the secret form is still shown after connecting');
  if (requested.some((u) => u.includes(ENGINEER))) fail('the secret appeared in a URL');
  report({ check: 'channels listed', channels: rows });

  // A booth going live shows on the page: delay from the command to the page rendering it.
  const liveOn = (id, who) => page.waitForFunction(([c, w]) =>
    document.querySelector(`#channels tr[data-channel="${c}"]`).dataset.live === w, [id, who]);
  const delays = [];
  for (let i = 0; i < TOGGLES; i++) {
    const t0 = Date.now();
    en.send('live');
    await liveOn('plenary/en', 'en/1');
    const shown = await page.evaluate(() => window.boothcastConsole.stats.shownAt.get('plenary/en'));
    delays.push(shown - t0);
    en.send('mute');
    await liveOn('plenary/en', '');
  }
  report({ figure: 'live_to_console_ms', ...stats(delays) });

  // Force-mute from the page: the console is told and goes off air, the channel leaves it.
  en.send('live');
  await liveOn('plenary/en', 'en/1');
  const enMuted = en.next((l) => json(l).type === 'console' && json(l).live === null, 'en off air');
  const enNotice = en.next((l) => json(l).code === 'forbidden', 'en\'s force-mute notice');
  await page.click('#channels tr[data-channel="plenary/en"] button.force-mute');
  await enMuted;
  const noticeText = json(await enNotice).message;
  await liveOn('plenary/en', '');
  await page.waitForFunction(() =>
    document.querySelector('#channels tr[data-channel="plenary/en"]').dataset.carrying === 'floor');
  report({ check: 'force-mute from the page', console_told: noticeText });

  // Meters: the console update rate, counted over 3 s of a live booth and the floor.
  en.send('live');
  await liveOn('plenary/en', 'en/1');
  await page.waitForFunction(() =>
    document.querySelector('#channels tr[data-channel="plenary/en"]').dataset.signal === 'true');
  const c0 = await page.evaluate(() => [window.boothcastConsole.stats.levels, performance.now()]);
  await page.waitForTimeout(3000);
  const c1 = await page.evaluate(() => [window.boothcastConsole.stats.levels, performance.now()]);
  const rate = (c1[0] - c0[0]) / ((c1[1] - c0[1]) / 1000);
  if (!(c1[0] > c0[0])) fail('the level meters did not update');
  const meter = await page.$eval('#channels tr[data-channel="plenary/en"] .meter', (m) => Number(m.getAttribute('aria-valuenow')));
  if (!(meter > -60)) fail(`English meter shows ${meter} dBFS with a booth live`);
  report({ figure: 'console_levels_per_s', value: Number(rate.toFixed(2)) });

  // A relay and a cough for the picture: Russian works from English, Arabic coughs.
  ru.send('input en');
  await ru.next((l) => json(l).type === 'console' && json(l).input === 'plenary/en', 'ru hearing en');
  ru.send('live');
  ar.send('live');
  ar.send('cough on');
  await page.waitForFunction(() => {
    const row = (c) => document.querySelector(`#channels tr[data-channel="${c}"]`);
    return row('plenary/ru').dataset.carrying === 'relay' && row('plenary/ar').dataset.cough === 'true';
  });
  const ruCarries = await page.textContent('#channels tr[data-channel="plenary/ru"] td.carries');
  if (!/relay via English/.test(ruCarries)) fail(`Russian shows: ${ruCarries}`);
  await page.waitForSelector('#health tbody tr[data-who="en/1"]');

  // Recording from the page. `serve --record DIR` records from the start: the page shows
  // where; stopping and starting again from the page closes that session and opens another.
  const recording = () => page.$eval('#rec', (r) => r.dataset.active === 'true');
  await page.waitForFunction(() => document.querySelector('#rec').dataset.active === 'true');
  const firstDir = await page.getAttribute('#rec-state', 'title');
  if (!firstDir.startsWith(recordDir)) fail(`recording shown in ${firstDir}, not under ${recordDir}`);
  await page.click('#rec-btn');
  await page.waitForFunction(() => document.querySelector('#rec').dataset.active === 'false');
  const first = checkSession(recordDir, 1, expected.length);
  if (!firstDir.endsWith(first.session)) fail(`the page showed ${firstDir}, recorded ${first.session}`);
  await page.click('#rec-btn');
  await page.waitForFunction(() => document.querySelector('#rec').dataset.active === 'true');
  const secondDir = await page.getAttribute('#rec-state', 'title');
  if (secondDir === firstDir || !(await recording())) fail(`recording shown in: ${secondDir}`);
  // Let about a second of audio be written.
  const l0 = await page.evaluate(() => window.boothcastConsole.stats.levels);
  await page.waitForFunction((n) => window.boothcastConsole.stats.levels >= n + 10, l0);

  // Monitoring: one click plays that channel (distinct tones tell which).
  const monitor = await monitoring(page);

  await mkdirP(join(root, 'target', 'browser-screenshots'));
  const shot = join(root, 'target', 'browser-screenshots', 'console.png');
  await page.screenshot({ path: shot });
  report({ screenshot: shot });

  await page.click('#rec-btn');
  await page.waitForFunction(() => document.querySelector('#rec').dataset.active === 'false');
  const second = checkSession(recordDir, 2, expected.length);
  if (!secondDir.endsWith(second.session)) fail(`the page showed ${secondDir}, recorded ${second.session}`);
  report({ check: 'recording from the page', sessions: [first.session, second.session], files: second.files });
  if (monitor) report(monitor);

  // The event log lists what happened, newest first.
  const log = await page.$$eval('#log li', (lis) => lis.map((li) => ({
    kind: li.dataset.kind, t: Date.parse(li.querySelector('time').dateTime), text: li.textContent,
  })));
  if (!log.some((e) => e.kind === 'force_mute' && e.text.includes('en/1'))) fail('the log has no force-mute of en/1');
  if (!log.some((e) => e.kind === 'recording')) fail('the log has no recording entry');
  if (log.some((e, i) => i > 0 && e.t > log[i - 1].t)) fail('the log is not newest first');
  report({ check: 'event log', entries: log.length, kinds: [...new Set(log.map((e) => e.kind))] });

  // The relay restarts: the page says the connection is lost and comes back by itself.
  relay.child.kill('SIGKILL');
  await withTimeout(relay.exited, WAIT, 'the relay to exit');
  await page.waitForFunction(() => document.querySelector('#conn').dataset.state === 'reconnecting');
  const lost = (await page.textContent('#conn')).trim();
  await serve(base.replace('http://', ''));
  await page.waitForFunction(() => window.boothcastConsole.stats.connects === 2
    && document.querySelector('#conn').dataset.state === 'connected'
    && document.querySelectorAll('#channels tbody tr').length === 4);
  report({ check: 'reconnects by itself', shown_meanwhile: lost });

  if (pageErrors.length) fail(`errors in the page: ${pageErrors.join('; ')}`);
}

// The recording sessions under `dir` must number `n`, the newest with its index and one Ogg
// Opus file per channel.
function checkSession(dir, n, channels) {
  const sessions = readdirSync(dir).filter((d) => d.startsWith('session-')).sort();
  if (sessions.length !== n) fail(`recording sessions in ${dir}: ${sessions}`);
  const files = readdirSync(join(dir, sessions[n - 1])).sort();
  const opus = files.filter((f) => f.endsWith('.opus'));
  if (!files.includes('index.json') || opus.length !== channels) fail(`recorded: ${files}`);
  // The floor carries audio all along (a coughing booth's channel holds only silence packets).
  if (statSync(join(dir, sessions[n - 1], 'plenary-floor.opus')).size < 2000) {
    fail(`the floor's recording in ${sessions[n - 1]} is nearly empty`);
  }
  return { session: sessions[n - 1], files };
}

async function mkdirP(dir) {
  if (!existsSync(dir)) mkdirSync(dir, { recursive: true });
}

// Monitors English, then the floor, checking by the dominant frequency of what the player
// outputs that each click switched to the right channel. Skipped (reported) without player.js.
async function monitoring(page) {
  if (!existsSync(join(root, 'web-client', 'player.js'))) {
    return { check: 'monitoring', skipped: 'web-client/player.js is not there yet' };
  }
  const heard = {};
  for (const [id, hz] of [['plenary/en', TONES.en], ['plenary/floor', TONES.floor]]) {
    const t0 = Date.now();
    await page.click(`#channels tr[data-channel="${id}"] button.monitor`);
    await page.waitForFunction(() => window.boothcastConsole.player);
    await page.evaluate(() => {
      const c = window.boothcastConsole;
      if (c.analyser) return;
      c.analyser = c.player.context.createAnalyser();
      c.analyser.fftSize = 8192;
      c.player.output.connect(c.analyser);
    });
    // The dominant frequency of what the player outputs, until it is this channel's tone.
    await page.waitForFunction((want) => {
      const a = window.boothcastConsole.analyser;
      const bins = new Float32Array(a.frequencyBinCount);
      a.getFloatFrequencyData(bins);
      let best = 0;
      for (let i = 1; i < bins.length; i++) if (bins[i] > bins[best]) best = i;
      const hz = best * a.context.sampleRate / a.fftSize;
      window.boothcastConsole.heardHz = hz;
      return bins[best] > -70 && Math.abs(hz - want) < 30;
    }, hz, { polling: 50 });
    heard[id] = { tone_hz: hz, heard_after_ms: Date.now() - t0 };
  }
  return { check: 'monitoring', heard };
}

try {
  await withTimeout(main(), 180_000, 'the whole console test');
  await browser?.close();
  cleanup();
  rmSync(work, { recursive: true, force: true });
  process.exit(0);
} catch (e) {
  console.error(`FAIL: ${e.message}`);
  try {
    if (browser) {
      const [page] = browser.contexts()[0]?.pages() ?? [];
      if (page) {
        mkdirSync(join(root, 'target', 'browser-screenshots'), { recursive: true });
        await page.screenshot({ path: join(root, 'target', 'browser-screenshots', 'console-failure.png') });
      }
      await browser.close();
    }
  } catch { /* the failure above is what matters */ }
  cleanup();
  rmSync(work, { recursive: true, force: true });
  process.exit(1);
}
