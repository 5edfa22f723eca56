// The delegate's page in headless Chromium, main path (WebCodecs + AudioWorklet): every channel
// carries its own sine; the page lists the channels with what they carry, plays the chosen one
// (the page's own output is analysed), switches language (the time is printed), announces a
// channel's change, follows the volume, comes back by itself after the relay restarts, speaks
// Russian to a Russian browser, and shows no error on a phone-sized or laptop-sized screen.

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import * as s from './support.mjs';

const label = (page, id) => page.locator(`.channel[data-id="${id}"]`);

// Clicks a channel and returns ms from the page's switch to its tone at the output.
async function switchTo(page, native, id) {
  await label(page, id).click();
  const ms = await page.evaluate(
    ({ freq }) =>
      new Promise((resolve) => {
        const start = window.boothcast.state.switchedAt;
        const end = performance.now() + 5000;
        const tick = () => {
          const r = window.__probe.read();
          if (r.rms > 0.02 && Math.abs(r.freq - freq) < 30) resolve(performance.now() - start);
          else if (performance.now() > end) resolve(null);
          else setTimeout(tick, 2);
        };
        tick();
      }),
    { freq: s.TONES[id] },
  );
  s.assert(ms !== null, `switching to ${native}: its tone (${s.TONES[id]} Hz) was not heard within 5 s`);
  return ms;
}

async function noErrorShows(page, where) {
  const st = await page.evaluate(() => ({
    state: document.body.dataset.state,
    error: !document.getElementById('error').hidden,
    text: document.getElementById('error').textContent,
  }));
  s.assert(st.state !== 'error' && !st.error, `${where}: the page shows an error: ${st.text}`);
}

await s.run('delegate', async ({ launch }) => {
  const relay = await s.startRelay();
  s.startFloor(relay);
  const booths = {};
  for (const b of ['az', 'en', 'ru', 'ar', 'fr']) booths[b] = s.startBooth(relay, b);
  for (const b of Object.values(booths)) await s.boothLive(b);
  // The Arabic booth works from English: a relay.
  booths.ar.command('input en');

  const browser = await launch();
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, locale: 'en-US' });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(relay.http + '/');

  // The channels by native name, each with what it carries now.
  await s.waitFor(
    'the channel list with the relay shown',
    async () => (await label(page, 'plenary/ar').textContent()).includes('interpreting from English'),
    10000,
  );
  for (const [id, native] of [
    ['plenary/floor', 'Floor'],
    ['plenary/az', 'Azərbaycanca'],
    ['plenary/en', 'English'],
    ['plenary/ru', 'Русский'],
    ['plenary/fr', 'Français'],
  ]) {
    await s.waitFor(`${native} listed as interpreted or the floor`, async () => {
      const text = await label(page, id).textContent();
      const carries = id === 'plenary/floor' ? 'original sound' : 'interpreter live';
      return text.includes(native) && text.includes(carries);
    });
  }

  // Pick Russian: its sine comes out of the page.
  const clicked = await page.evaluate(() => performance.now());
  await label(page, 'plenary/ru').click();
  await s.waitFor('the player', () => page.evaluate(() => !!window.boothcast.player));
  await s.probe(page);
  const first = await s.waitTone(page, s.TONES['plenary/ru'], 5000, clicked);
  const stats = await page.evaluate(() => window.boothcast.player.stats());
  s.assert(stats.path === 'webcodecs', `main path expected, got ${stats.path}`);
  s.figure({ figure: 'first_sound_ms', path: stats.path, ms: Math.round(first) });

  // Switching language, by mouse and by keyboard: the new channel's tone, timed.
  const order = [
    ['English', 'plenary/en'],
    ['Français', 'plenary/fr'],
    ['Azərbaycanca', 'plenary/az'],
    ['Floor', 'plenary/floor'],
    ['العربية', 'plenary/ar'],
    ['Русский', 'plenary/ru'],
  ];
  const times = [];
  for (let round = 0; round < 2; round++) {
    for (const [native, id] of order) times.push(await switchTo(page, native, id));
  }
  // Keyboard: the radio group moves with the arrow keys (Русский → العربية, the next one).
  await page.focus('.channel input:checked');
  await page.keyboard.press('ArrowDown');
  await s.waitTone(page, s.TONES['plenary/ar'], 5000);
  // A channel's change of state re-renders the list: the keyboard focus stays on the channel.
  booths.fr.command('mute');
  await s.waitFor(
    'French to show the floor',
    async () => (await label(page, 'plenary/fr').textContent()).includes('original sound'),
    5000,
  );
  s.assert(
    (await page.evaluate(() => document.activeElement && document.activeElement.value)) === 'plenary/ar',
    'the keyboard focus stays on the chosen channel when the list changes',
  );
  booths.fr.command('live');
  const outLatency = (await page.evaluate(() => window.boothcast.player.stats())).outputLatencyMs;
  s.figure({
    figure: 'switch_ms',
    path: 'webcodecs',
    n: times.length,
    median: Math.round(s.percentile(times, 50)),
    p95: Math.round(s.percentile(times, 95)),
    max: Math.round(Math.max(...times)),
    all: times.map(Math.round),
    output_latency_ms: Math.round(outLatency),
  });

  // Back on Russian; the volume follows the slider and is remembered.
  await label(page, 'plenary/ru').click();
  await s.waitTone(page, s.TONES['plenary/ru'], 5000);
  // A -10 dBFS sine (RMS 0.21) at the default volume 0.8: RMS 0.17 once the window is full.
  const loud = await s.waitFor(
    'the tone at full level',
    async () => {
      const r = await page.evaluate(() => window.__probe.read());
      return r.rms > 0.12 && r.rms;
    },
    3000,
  );
  await page.evaluate(() => {
    const v = document.getElementById('volume');
    v.value = '0.2';
    v.dispatchEvent(new Event('input', { bubbles: true }));
  });
  await s.waitFor(
    'the sound to get quieter with the volume',
    async () => (await page.evaluate(() => window.__probe.read())).rms < loud / 2,
    3000,
  );
  s.assert(
    (await page.evaluate(() => localStorage.getItem('boothcast.volume'))) === '0.2',
    'the volume is remembered',
  );

  // The interpreter mutes: the page says the channel now carries the floor, and plays it.
  booths.ru.command('mute');
  await s.waitFor(
    'the announcement of Russian on the floor',
    async () => (await page.textContent('#status')).includes('Русский: original sound from the floor'),
    5000,
  );
  await s.waitTone(page, s.TONES['plenary/floor'], 5000);
  booths.ru.command('live');
  await s.waitFor(
    'the announcement of the interpreter back',
    async () => (await page.textContent('#status')).includes('Русский: interpreter live'),
    5000,
  );
  await s.waitTone(page, s.TONES['plenary/ru'], 5000);

  // Screens: phone and laptop, no error showing.
  mkdirSync(s.SCREENSHOTS, { recursive: true });
  await noErrorShows(page, 'phone');
  await page.screenshot({ path: join(s.SCREENSHOTS, 'delegate-phone.png'), fullPage: true });
  await page.setViewportSize({ width: 1280, height: 800 });
  await noErrorShows(page, 'laptop');
  await page.screenshot({ path: join(s.SCREENSHOTS, 'delegate-laptop.png'), fullPage: true });

  // The relay restarts on the same port: the page (and the booths, which come back muted, so
  // Russian carries the floor) reconnect by themselves.
  const port = relay.addr.split(':').pop();
  await relay.kill();
  await s.waitFor(
    'the page to notice the relay is gone',
    async () => (await page.evaluate(() => document.body.dataset.state)) === 'reconnecting',
    5000,
  );
  const again = await s.startRelay({ port });
  const restartedAt = await page.evaluate(() => performance.now());
  const resumed = await s.waitTone(page, s.TONES['plenary/floor'], 15000, restartedAt);
  s.figure({ figure: 'resume_after_restart_ms', path: 'webcodecs', ms: Math.round(resumed) });
  await s.waitFor(
    'the page to show Russian on the floor again',
    async () => (await label(page, 'plenary/ru').textContent()).includes('original sound'),
    5000,
  );
  booths.ru.command('live');
  await s.waitTone(page, s.TONES['plenary/ru'], 5000);
  await noErrorShows(page, 'after the restart');
  void again;

  // A Russian browser gets the page in Russian.
  const ru = await browser.newContext({ viewport: { width: 390, height: 844 }, locale: 'ru-RU' });
  const ruPage = await ru.newPage();
  await ruPage.goto(relay.http.replace(relay.addr, again.addr) + '/');
  await s.waitFor('the page in Russian', async () => (await ruPage.textContent('#play')) === 'Слушать', 5000);
  s.assert((await ruPage.getAttribute('html', 'lang')) === 'ru', 'html lang is ru');
  await ruPage.screenshot({ path: join(s.SCREENSHOTS, 'delegate-phone-ru.png'), fullPage: true });

  s.assert(errors.length === 0, `errors in the page: ${errors.join('; ')}`);
});
