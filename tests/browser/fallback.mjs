// The fallback path (`?fallback=1`, as on a page served over plain HTTP from a LAN address: no
// AudioWorklet, no WebCodecs): the WASM Opus decoder and a ScriptProcessorNode still play the
// chosen channel and switch language.

import * as s from './support.mjs';

await s.run('fallback', async ({ launch }) => {
  const relay = await s.startRelay();
  s.startFloor(relay);
  const en = s.startBooth(relay, 'en');
  const ru = s.startBooth(relay, 'ru');
  await s.boothLive(en);
  await s.boothLive(ru);

  const browser = await launch();
  const page = await browser.newPage({ viewport: { width: 390, height: 844 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(relay.http + '/?fallback=1');
  const channel = (id) => page.locator(`.channel[data-id="${id}"]`);
  await s.waitFor('the channel list', async () => (await channel('plenary/en').count()) === 1);

  await channel('plenary/en').click();
  await s.waitFor('the player', () => page.evaluate(() => !!window.boothcast.player));
  await s.probe(page);
  await s.waitTone(page, s.TONES['plenary/en'], 5000);
  const stats = await page.evaluate(() => window.boothcast.player.stats());
  s.assert(
    stats.path === 'fallback' && stats.decoder === 'wasm' && stats.output === 'scriptprocessor',
    `fallback path expected, got ${JSON.stringify(stats)}`,
  );
  s.assert((await page.textContent('#path')).includes('compatibility'), 'the page says it is in compatibility mode');

  const times = [];
  for (let i = 0; i < 3; i++) {
    for (const id of ['plenary/ru', 'plenary/floor', 'plenary/en']) {
      await channel(id).click();
      times.push(await s.waitTone(page, s.TONES[id], 5000, await page.evaluate(() => window.boothcast.state.switchedAt)));
    }
  }
  s.figure({
    figure: 'switch_ms',
    path: 'fallback',
    n: times.length,
    median: Math.round(s.percentile(times, 50)),
    p95: Math.round(s.percentile(times, 95)),
    max: Math.round(Math.max(...times)),
    all: times.map(Math.round),
  });
  const st = await page.evaluate(() => document.body.dataset.state);
  s.assert(st === 'playing', `the page is playing, not ${st}`);
  s.assert(errors.length === 0, `errors in the page: ${errors.join('; ')}`);
});
