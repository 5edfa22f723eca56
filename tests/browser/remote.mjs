// "Listening from outside the hall" (Chromium): the page opened with `?remote=1` (the link for a
// remote audience or an overflow room) says hello with `"delivery": "relaxed"`, the relay
// writes its frames a few at a time (counted where they arrive, on the page's WebSocket), and the
// page plays them later (the relay holds each frame up to 200 ms, the page adds 220 ms) without running dry. The setting is remembered
// and shown in Settings; turned off there, the page connects again as a delegate in the hall:
// one frame a write, played at the hall's delay.
//
//   node tests/browser/remote.mjs

import * as s from './support.mjs';

// Watches every WebSocket the page opens from now on: the hellos it sends and the arrival time
// of every frame.
function watchSockets() {
  window.__hellos = [];
  window.__arrivals = [];
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (data) {
    if (typeof data === 'string' && data.includes('"hello"')) {
      window.__hellos.push(JSON.parse(data));
      this.addEventListener('message', (e) => {
        if (typeof e.data !== 'string') window.__arrivals.push(performance.now());
      });
    }
    return send.call(this, data);
  };
}

// Frames and writes arriving over `ms`, and what the player counted meanwhile.
async function arrivals(page, ms) {
  return page.evaluate(async (ms) => {
    const before = window.boothcast.player.stats();
    window.__arrivals.length = 0;
    await new Promise((r) => setTimeout(r, ms));
    const a = window.__arrivals.slice();
    const after = window.boothcast.player.stats();
    let writes = a.length ? 1 : 0;
    for (let i = 1; i < a.length; i++) if (a[i] - a[i - 1] > 8) writes++; // 8 ms apart: another write
    const grew = (k) => after[k] - before[k];
    return { frames: a.length, writes, delayMs: after.delayMs, underruns: grew('underruns'), concealed: grew('concealed'), skipped: grew('skipped') };
  }, ms);
}

await s.run('remote', async ({ launch }) => {
  const relay = await s.startRelay();
  s.startFloor(relay);
  const en = s.startBooth(relay, 'en');
  await s.boothLive(en);

  const browser = await launch();
  const page = await browser.newPage({ viewport: { width: 390, height: 844 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.addInitScript(watchSockets);
  await page.goto(relay.http + '/?remote=1');
  const channel = (id) => page.locator(`.channel[data-id="${id}"]`);
  await s.waitFor('the channel list', async () => (await channel('plenary/en').count()) === 1);
  s.assert(await page.locator('#remote').isChecked(), 'Settings do not show "Listening from outside the hall" on');

  await channel('plenary/en').click();
  await s.waitFor('the player', () => page.evaluate(() => !!window.boothcast.player));
  await s.probe(page);
  await s.waitTone(page, s.TONES['plenary/en'], 5000);
  const hellos = await page.evaluate(() => window.__hellos);
  s.assert(hellos.length >= 1 && hellos.every((h) => h.delivery === 'relaxed'), `hellos: ${JSON.stringify(hellos)}`);
  // Settled, then two seconds counted: about ten writes for a hundred frames, all in time.
  await new Promise((r) => setTimeout(r, 1000));
  const remote = await arrivals(page, 2000);
  s.figure({ figure: 'remote', delivery: 'relaxed', ...remote });
  s.assert(remote.frames >= 80 && remote.writes <= 20, `relaxed: ${JSON.stringify(remote)} (about 100 frames in about 10 writes)`);
  s.assert(remote.delayMs >= 200, `relaxed: the page plays ${remote.delayMs} ms late: the 220 ms for the relay's writes are missing`);
  s.assert(remote.underruns + remote.concealed + remote.skipped <= 3, `relaxed: frames not in time: ${JSON.stringify(remote)}`);
  s.assert(s.isTone(await page.evaluate(() => window.__probe.read()), s.TONES['plenary/en']), 'relaxed: English not heard');

  // Remembered: a reload without the parameter keeps it.
  s.assert((await page.evaluate(() => localStorage.getItem('boothcast.remote'))) === '1', 'the setting is not remembered');

  // Turned off in Settings: a new connection, live.
  await page.locator('#settings summary').click();
  await page.locator('#remote').uncheck();
  await s.waitFor('a hello without the relaxed class', () => page.evaluate(() => window.__hellos.some((h) => !h.delivery && h.channel === 'plenary/en')), 5000);
  await s.waitTone(page, s.TONES['plenary/en'], 5000);
  await new Promise((r) => setTimeout(r, 1000));
  const hall = await arrivals(page, 2000);
  s.figure({ figure: 'remote', delivery: 'live', ...hall });
  s.assert(hall.writes >= 40, `live: ${JSON.stringify(hall)} (about one write a frame; a busy page may take a few at once)`);
  s.assert(hall.delayMs < 200, `live: the page still plays ${hall.delayMs} ms late`);
  s.assert((await page.evaluate(() => localStorage.getItem('boothcast.remote'))) === '0', 'turning it off is not remembered');
  s.assert(errors.length === 0, `errors in the page: ${errors.join('; ')}`);
});
