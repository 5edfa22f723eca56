// "Original underneath" on the delegate page, heard at a PulseAudio null sink of the test's own
// (Chromium): the floor sends a 440 Hz sine, the English booth a 660 Hz one, both at the same
// level. Off by default, only 660 Hz reaches the sink. On at -12 dB, then -24 dB, both do, the
// floor's level (Goertzel with a Hann window over a second of the recording) that many dB
// under the interpretation's, within LEVEL_TOLERANCE_DB. A reconnection's hello asks for the
// floor again; turned off, 440 Hz is gone; turned on again, it is back. Then on the fallback
// path (ScriptProcessor and the WASM decoder), after a reload: the option and its level come
// back from localStorage and sound the same; while English is on auto-floor (its booth off
// air) the floor is heard once, at its own level, not twice; the option is hidden while the
// floor channel is chosen; turned off, 440 Hz is gone.
//
//   node tests/browser/under.mjs

import { execFileSync } from 'node:child_process';
import * as s from './support.mjs';
import * as engines from './engines.mjs';
import * as sink from './sink.mjs';

const FLOOR_FREQ = 440;
const EN_FREQ = 660;
// How far the floor's level under the interpretation may be from the level chosen: the codec
// and the output move a pure tone's level by a fraction of a dB.
const LEVEL_TOLERANCE_DB = 2;
// A tone this far under the interpretation is not heard: the codec's own noise at 440 Hz
// under a 660 Hz sine is far lower still.
const GONE_DB = -45;
// Each measurement: 1.2 s of sound, after the first 200 ms of the recording (what the output
// already held when it started), in blocks of 100 ms (10 Hz apart, the tones 220 Hz), of which
// the median counts: a block where a sender's frame came late (the English booth runs at the
// machine's ordinary priority) is a dropout that sound.mjs looks for, not a level.
const MEASURE_S = 1.2;
// A block whose English level is this close to the median of the measurement is steady: a
// steady tone measures the same to 0.1 dB in every block, and a dropout of a few ms inside a
// block lowers it by more (0.8 dB seen with its click at -57 dBFS on 440 Hz).
const STEADY_DB = 0.3;
const SKIP_S = 0.2;
const BLOCK_S = 0.1;

const db = (a) => 20 * Math.log10(Math.max(a, 1e-9));
const r1 = (x) => Math.round(x * 10) / 10;

// The amplitude of a sine of `freq` in `x` (Goertzel with a Hann window: the other tone, 220 Hz
// or 22 bins of a 100 ms block away, leaks nothing measurable into it).
function amplitude(x, freq) {
  const n = x.length;
  const w = (2 * Math.PI * freq) / sink.RATE;
  const coeff = 2 * Math.cos(w);
  let s1 = 0;
  let s2 = 0;
  for (let k = 0; k < n; k++) {
    const h = 0.5 - 0.5 * Math.cos((2 * Math.PI * k) / (n - 1));
    const s0 = x[k] * h + coeff * s1 - s2;
    s2 = s1;
    s1 = s0;
  }
  const power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
  // A Hann window sums to n/2: a sine of amplitude A gives |X| = A·n/4.
  return (4 * Math.sqrt(Math.max(0, power))) / n;
}

// Records the sink for SKIP_S + MEASURE_S and gives both tones' levels in dBFS, and the floor's
// under the interpretation in dB: the medians over the blocks.
async function levels(out) {
  const rec = sink.record(out);
  await s.waitFor('a second of recording', () => rec.seconds() >= SKIP_S + MEASURE_S, 10000);
  const got = await rec.stop();
  const block = Math.round(BLOCK_S * sink.RATE);
  const floor = [];
  const en = [];
  const under = [];
  for (let at = Math.round(SKIP_S * sink.RATE); at + block <= got.samples.length; at += block) {
    const x = got.samples.subarray(at, at + block);
    const f = db(amplitude(x, FLOOR_FREQ));
    const e = db(amplitude(x, EN_FREQ));
    floor.push(f);
    en.push(e);
    under.push(f - e);
  }
  // The blocks where English is steady (within STEADY_DB of its median): a block with a
  // dropout or a skipped frame holds a click, whose energy reaches every frequency.
  const enMedian = sink.median(en);
  const steady = floor.filter((_, i) => Math.abs(en[i] - enMedian) <= STEADY_DB);
  return {
    floor_dbfs: r1(sink.median(floor)),
    floor_max_dbfs: r1(Math.max(...steady)),
    steady_blocks: steady.length,
    // Every block's levels, for a failure's message (not a figure).
    detail: { floor: floor.map(r1), en: en.map(r1) },
    en_dbfs: r1(sink.median(en)),
    under_db: r1(sink.median(under)),
    blocks: under.length,
  };
}

// What the page says about its sound, for a failure's message.
async function pageState(page) {
  const st = await page
    .evaluate(() => ({
      state: document.body.dataset.state,
      status: document.getElementById('status').textContent,
      under_from: window.boothcast.state.underFrom,
      stats: window.boothcast.player && window.boothcast.player.stats(),
    }))
    .catch((e) => String(e));
  let streams = '';
  try {
    streams = execFileSync('pactl', ['list', 'short', 'sink-inputs']).toString();
  } catch {}
  return `the page: ${JSON.stringify(st)}; streams:\n${streams}`;
}

// Measures until `ok(levels)` holds (the sound follows a change within a moment); the
// measurement that did is the figure.
async function until(page, out, what, ok, timeoutMs = 8000) {
  let last = null;
  await s
    .waitFor(what, async () => ok((last = await levels(out))), timeoutMs, 0)
    .catch(async (e) => {
      throw new Error(`${e.message}; last measured ${JSON.stringify(last)}; ${await pageState(page)}`);
    });
  return last;
}

const both = (want) => (l) => l.en_dbfs > -30 && Math.abs(l.under_db - want) <= LEVEL_TOLERANCE_DB;
const noFloor = (l) => l.en_dbfs > -30 && l.under_db < GONE_DB;
// Turned off, the floor is gone at once: in every steady block of the first measurement after
// the click (at most two blocks of twelve may hold a dropout of the busy machine).
async function goneAtOnce(page, out, what) {
  const l = await levels(out);
  s.assert(l.en_dbfs > -30 && l.steady_blocks >= l.blocks - 2 && l.floor_max_dbfs - l.en_dbfs < GONE_DB, `${what}: ${JSON.stringify(l)}; ${await pageState(page)}`);
  return l;
}

async function setLevel(page, dbValue) {
  await page.evaluate((v) => {
    const el = document.getElementById('under-level');
    el.value = String(v);
    el.dispatchEvent(new Event('input', { bubbles: true }));
    el.dispatchEvent(new Event('change', { bubbles: true }));
  }, dbValue);
  await s.waitFor(`the player at ${dbValue} dB`, () => page.evaluate((v) => {
    const u = window.boothcast.player.stats().under;
    return !!u && u.ready && u.db === v;
  }, dbValue), 5000);
}

// The option as the page shows it.
const option = (page) =>
  page.evaluate(() => ({
    shown: !document.getElementById('under-box').hidden,
    checked: document.getElementById('under').checked,
    level: Number(document.getElementById('under-level').value),
    levelEnabled: !document.getElementById('under-level').disabled,
    // Without the marks that keep the number left to right in Arabic.
    text: document.getElementById('under-level-value').textContent.replace(/[\u2066-\u2069]/g, ''),
    stored: [localStorage.getItem('boothcast.floorUnder'), localStorage.getItem('boothcast.floorUnderDb')],
  }));

async function open(page, url) {
  await page.goto(url);
  await s.waitFor('the channel list', () => page.evaluate(() => !!document.querySelector('.channel[data-id="plenary/en"]')), 10000);
}

async function choose(page, id) {
  await page.click(`.channel[data-id="${id}"]`);
  await s.waitFor(`the page to play ${id}`, () =>
    page.evaluate((id) => window.boothcast.state.playing && !!window.boothcast.player && window.boothcast.state.subscribed === id, id), 10000);
}

await s.run(
  'under',
  async () => {
    // The relay and the floor at real-time priority, as sound.mjs: a frame sent late by a busy
    // machine would be a gap at the sink that says nothing about the page.
    const relay = await s.startRelay({ realtime: true });
    s.startFloor(relay, FLOOR_FREQ, { realtime: true });
    const en = s.startBooth(relay, 'en', EN_FREQ);
    await s.boothLive(en);
    const out = sink.nullSink('under');
    s.atExit(() => out.close());
    const browser = await engines.launch('chromium', { env: out.env });
    s.atExit(() => browser.close().catch(() => {}));
    const figures = [];
    const note = (path, step, { detail: _detail, ...l }) => {
      const f = { figure: 'under', path, step, ...l };
      figures.push(f);
      s.figure(f);
    };

    // --- main path -------------------------------------------------------------------------
    const page = await browser.newPage();
    await open(page, relay.http + '/');
    let o = await option(page);
    s.assert(o.shown && !o.checked && !o.levelEnabled && o.level === -18 && o.text === '\u221218 dB', `off by default at -18 dB: ${JSON.stringify(o)}`);
    await choose(page, 'plenary/en');
    note('main', 'off', await until(page, out, 'English alone', noFloor));

    s.step('main: on at -12 dB');
    await page.click('#under');
    await setLevel(page, -12);
    note('main', 'on -12 dB', await until(page, out, 'the floor 12 dB under English', both(-12)));
    s.step('main: -24 dB');
    await setLevel(page, -24);
    note('main', 'on -24 dB', await until(page, out, 'the floor 24 dB under English', both(-24)));

    s.step('main: a reconnection');
    await page.evaluate(() => {
      window.__sent = [];
      const send = WebSocket.prototype.send;
      WebSocket.prototype.send = function (data) {
        if (typeof data === 'string') window.__sent.push(data);
        return send.call(this, data);
      };
      window.boothcast.state.ws.close();
    });
    // Until the new connection's hello is sent and answered (the old one's state lasts until
    // its close completes).
    await s.waitFor('the page to connect again with the floor under English', () =>
      page.evaluate(() => window.__sent.some((m) => m.includes('"hello"'))
        && window.boothcast.state.welcomed && window.boothcast.state.underFrom === 'plenary/floor'), 10000);
    const hello = (await page.evaluate(() => window.__sent.map((m) => JSON.parse(m)))).find((m) => m.type === 'hello');
    s.assert(hello && hello.channel === 'plenary/en' && hello.floor_under === true, `the hello after reconnecting: ${JSON.stringify(hello)}`);
    note('main', 'reconnected', await until(page, out, 'the floor under English after reconnecting', both(-24)));

    s.step('main: off');
    await page.click('#under');
    note('main', 'off again', await goneAtOnce(page, out, 'the floor gone'));
    o = await option(page);
    s.assert(!o.checked && !o.levelEnabled && o.stored[0] === '0', `off: ${JSON.stringify(o)}`);
    s.assert((await page.evaluate(() => window.boothcast.player.stats().under)) === null, 'off: the player still has a floor under');
    await page.click('#under');
    await until(page, out, 'the floor back under English', both(-24));
    s.assert(page.errors.length === 0, `errors in the page: ${page.errors.join('; ')}`);

    // --- fallback path, after a reload ----------------------------------------------------
    s.step('fallback: the option back from localStorage');
    // The same tab (its localStorage), loaded again.
    await open(page, relay.http + '/?fallback=1');
    o = await option(page);
    s.assert(o.shown && o.checked && o.levelEnabled && o.level === -24 && o.text === '\u221224 dB', `restored: ${JSON.stringify(o)}`);
    await choose(page, 'plenary/en');
    note('fallback', 'restored -24 dB', await until(page, out, 'the floor 24 dB under English (fallback)', both(-24)));
    const st = await page.evaluate(() => window.boothcast.player.stats());
    s.assert(st.path === 'fallback' && st.decoder === 'wasm' && st.output === 'scriptprocessor', `the fallback path: ${JSON.stringify(st)}`);

    s.step('fallback: English on auto-floor');
    await setLevel(page, -6);
    note('fallback', 'on -6 dB', await until(page, out, 'the floor 6 dB under English', both(-6)));
    const single = figures.find((f) => f.step === 'restored -24 dB').en_dbfs;
    en.command('mute');
    await s.waitFor('English on auto-floor, the floor under it held back', () =>
      page.evaluate(() => {
        const u = window.boothcast.player.stats().under;
        return !!u && u.held && u.heldFrames > 10;
      }), 10000);
    // The same sine at the same level as English's: heard once, it is as loud as English was.
    const once = (l) => l.en_dbfs < l.floor_dbfs + GONE_DB && Math.abs(l.floor_dbfs - single) <= 1.5;
    note('fallback', 'auto-floor', await until(page, out, 'the floor once, at its own level', once));
    en.command('live');
    note('fallback', 'live again', await until(page, out, 'the floor under English again', both(-6)));

    s.step('fallback: the floor channel');
    await choose(page, 'plenary/floor');
    o = await option(page);
    s.assert(!o.shown, `the option is hidden while the floor is chosen: ${JSON.stringify(o)}`);
    s.assert((await page.evaluate(() => window.boothcast.player.stats().under)) === null, 'the floor channel: the player has a floor under');
    await choose(page, 'plenary/en');
    s.assert((await option(page)).shown, 'the option is shown again with English');
    await until(page, out, 'the floor under English after the floor channel', both(-6));

    s.step('fallback: off');
    await page.click('#under');
    note('fallback', 'off', await goneAtOnce(page, out, 'the floor gone (fallback)'));
    s.assert(page.errors.length === 0, `errors in the page: ${page.errors.join('; ')}`);
    await page.close();
  },
  { timeoutMs: 90000 },
);
