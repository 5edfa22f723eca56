// The engineer's console (/console) in headless Chromium against a real relay recording to
// disk, a floor feed and booth consoles sending sines (a distinct tone per sender, whose level
// moves as speech's does).
//
// Checks what a sound engineer would notice: a wrong secret is refused and the page says why;
// the channels are listed; a booth going live shows on the page (the delay is measured over
// repeated toggles); force-mute from the page takes the console off air; meters move (the
// update rate is measured); relay and cough show; recording stops and starts from the page and
// its files appear; monitoring plays the chosen channel; the log lists what happened, newest
// first; the page comes back by itself after the relay restarts; a relay alone shows no cluster,
// and on a node of a cluster of two the page shows the relays and which one records, and moves
// to the other node when its own dies.
// Figures are printed as JSON lines: node tests/browser/console.mjs [--toggles N]

import { spawn } from 'node:child_process';
import { mkdirSync, readdirSync, statSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { join } from 'node:path';
import * as s from './support.mjs';

const ENGINEER = 'engineer-secret-7f3a';
// Booth-goes-live measurements: the median and p95 want a few tens.
const flag = process.argv.indexOf('--toggles');
const TOGGLES = flag > 0 ? Number(process.argv[flag + 1]) : 20;
const CHANNELS = ['plenary/floor', 'plenary/az', 'plenary/en', 'plenary/ru', 'plenary/ar', 'plenary/fr'];
const WAIT = 10000;

const json = (line) => {
  try {
    return JSON.parse(line);
  } catch {
    return {};
  }
};

// The first line a booth prints from now on that passes `test`.
function nextLine(booth, test, what) {
  const from = booth.lines.length;
  return s.waitFor(what, () => booth.lines.slice(from).find((l) => test(json(l))), WAIT);
}

// Recording sessions under `dir` must number `n`; the newest holds its index and one Ogg Opus
// file per channel, the floor's with audio in it.
function checkSession(dir, n) {
  const sessions = readdirSync(dir).filter((d) => d.startsWith('session-')).sort();
  s.assert(sessions.length === n, `recording sessions in ${dir}: ${sessions}`);
  const session = sessions[n - 1];
  const files = readdirSync(join(dir, session)).sort();
  const opus = files.filter((f) => f.endsWith('.opus'));
  s.assert(files.includes('index.json') && opus.length === CHANNELS.length, `recorded: ${files}`);
  // A coughing booth's channel holds only silence packets; the floor carries audio all along.
  const floor = statSync(join(dir, session, 'plenary-floor.opus')).size;
  s.assert(floor > 2000, `the floor's recording in ${session} has ${floor} bytes`);
  return { session, files };
}

await s.run('console', async ({ launch }) => {
  const recordDir = join(s.tmp(), 'recordings');
  mkdirSync(recordDir);
  const serve = (port = 0) =>
    s.startRelay({ env: { BOOTHCAST_ENGINEER_SECRET: ENGINEER }, port, flags: ['--record', recordDir] });
  const relay = await serve();
  s.startFloor(relay, s.TONES['plenary/floor'], { tremolo: true });
  const booth = (id) => s.startBooth(relay, id, s.TONES[`plenary/${id}`], { live: false, tremolo: true });
  const en = booth('en');
  const ru = booth('ru');
  const ar = booth('ar');
  for (const b of [en, ru, ar]) {
    await s.waitFor(`${b.label} to connect`, () => b.lines.some((l) => json(l).type === 'console'), WAIT);
  }

  const browser = await launch();
  // A laptop's screen, in the dark scheme a dim control room asks for.
  const page = await browser.newPage({ viewport: { width: 1366, height: 768 }, colorScheme: 'dark' });
  page.setDefaultTimeout(WAIT);
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  const urls = [];
  page.on('request', (r) => urls.push(r.url()));
  const row = (id) => `#channels tr[data-channel="${id}"]`;
  const rowIs = (id, key, value) =>
    page.waitForFunction(([sel, k, v]) => document.querySelector(sel)?.dataset[k] === v, [row(id), key, value]);

  const response = await page.goto(`${relay.http}/console`);
  s.assert(response.ok(), `GET /console answered ${response.status()}`);

  // A wrong secret: refused, and the page says why.
  await page.fill('#secret', 'not-the-secret');
  await page.click('#login button[type=submit]');
  await page.waitForFunction(() => document.querySelector('#refusal').textContent.length > 0);
  const why = await page.textContent('#refusal');
  s.assert(/refused/i.test(why) && /engineer secret/.test(why), `the refusal says: ${why}`);
  s.assert(await page.isVisible('#login'), 'the secret form is gone after a refusal');
  s.figure({ check: 'wrong secret refused', shown: why });

  // The right secret: every channel listed.
  await page.fill('#secret', ENGINEER);
  await page.click('#login button[type=submit]');
  await page.waitForSelector(row('plenary/fr'));
  const rows = await page.$$eval('#channels tbody tr', (trs) => trs.map((tr) => tr.dataset.channel));
  s.assert(rows.join() === CHANNELS.join(), `channels listed: ${rows}`);
  s.assert(!(await page.isVisible('#login')), 'the secret form is still shown after connecting');
  s.assert(!urls.some((u) => u.includes(ENGINEER)), 'the secret appeared in a URL');
  s.figure({ check: 'channels listed', channels: rows });
  // A relay alone: no relays' panel, no "record here".
  s.assert(!(await page.isVisible('#cluster-section')), 'a relay alone shows a cluster');
  s.assert(!(await page.isVisible('#rec-here')), 'a relay alone offers to record "here"');

  // A delegate tunes in to English: the listener count follows (audience comes once a second).
  await page.evaluate((url) => {
    const ws = new WebSocket(url);
    ws.onopen = () => ws.send(JSON.stringify({ type: 'hello', role: 'listener', channel: 'plenary/en' }));
    window.delegate = ws;
  }, `${relay.ws}/ws`);
  const listeners = (id) => `${row(id)} td.listeners`;
  await page.waitForFunction((sel) => document.querySelector(sel).textContent === '1', listeners('plenary/en'));
  await page.evaluate(() => window.delegate.close());
  await page.waitForFunction((sel) => document.querySelector(sel).textContent === '0', listeners('plenary/en'));
  s.figure({ check: 'listeners counted', channel: 'plenary/en' });

  // A booth going live shows on the page: from writing the command to the page rendering it.
  const delays = [];
  for (let i = 0; i < TOGGLES; i++) {
    const t0 = Date.now();
    en.command('live');
    await rowIs('plenary/en', 'live', 'en/1');
    const shown = await page.evaluate(() => window.boothcast.stats.shownAt.get('plenary/en'));
    delays.push(shown - t0);
    en.command('mute');
    await rowIs('plenary/en', 'live', '');
  }
  s.figure({
    figure: 'live_to_console_ms',
    median: s.percentile(delays, 50),
    p95: s.percentile(delays, 95),
    max: Math.max(...delays),
    n: delays.length,
  });

  // Force-mute from the page: the console is told and goes off air; the channel goes back to
  // the floor after its hold.
  en.command('live');
  await rowIs('plenary/en', 'live', 'en/1');
  const offAir = nextLine(en, (m) => m.type === 'console' && m.live === null, 'en to go off air');
  const told = nextLine(en, (m) => m.type === 'error' && m.code === 'forbidden', 'en to be told');
  await page.click(`${row('plenary/en')} button.force-mute`);
  await offAir;
  const notice = json(await told).message;
  await rowIs('plenary/en', 'live', '');
  await rowIs('plenary/en', 'carrying', 'floor');
  s.figure({ check: 'force-mute from the page', console_told: notice });

  // Meters: the console's update rate over 3 s with a booth and the floor sending.
  en.command('live');
  await rowIs('plenary/en', 'live', 'en/1');
  await rowIs('plenary/en', 'signal', 'true');
  const count = () => page.evaluate(() => [window.boothcast.stats.levels, performance.now()]);
  const c0 = await count();
  await page.waitForTimeout(3000);
  const c1 = await count();
  s.assert(c1[0] > c0[0], 'the level meters did not update');
  const meter = Number(await page.getAttribute(`${row('plenary/en')} .meter`, 'aria-valuenow'));
  s.assert(meter > -60, `the English meter shows ${meter} dBFS with a booth live`);
  s.figure({ figure: 'console_levels_per_s', value: Number(((c1[0] - c0[0]) / ((c1[1] - c0[1]) / 1000)).toFixed(2)) });

  // A relay and a cough: Russian works from English, Arabic holds its cough key.
  ru.command('input en');
  await nextLine(ru, (m) => m.type === 'console' && m.input === 'plenary/en', 'ru to hear en');
  ru.command('live');
  ar.command('live');
  ar.command('cough on');
  await rowIs('plenary/ru', 'carrying', 'relay');
  await rowIs('plenary/ar', 'cough', 'true');
  const ruCarries = await page.textContent(`${row('plenary/ru')} td.carries`);
  s.assert(/relay via English/.test(ruCarries), `Russian shows: ${ruCarries}`);
  await page.waitForSelector('#health tbody tr[data-who="en/1"]');

  // Recording. `serve --record DIR` records from the start and the page shows where; stopping
  // and starting again from the page closes that session and opens another.
  await page.waitForFunction(() => document.querySelector('#rec').dataset.active === 'true');
  const firstDir = await page.getAttribute('#rec-state', 'title');
  s.assert(firstDir.startsWith(recordDir), `recording shown in ${firstDir}, not under ${recordDir}`);
  await page.click('#rec-btn');
  await page.waitForFunction(() => document.querySelector('#rec').dataset.active === 'false');
  const first = checkSession(recordDir, 1);
  s.assert(firstDir.endsWith(first.session), `the page showed ${firstDir}, recorded ${first.session}`);
  await page.click('#rec-btn');
  await page.waitForFunction(() => document.querySelector('#rec').dataset.active === 'true');
  const secondDir = await page.getAttribute('#rec-state', 'title');
  // Let about a second of audio be written.
  const l0 = await page.evaluate(() => window.boothcast.stats.levels);
  await page.waitForFunction((n) => window.boothcast.stats.levels >= n + 10, l0);

  // Monitoring: one click plays that channel, told apart by its tone at the player's output.
  const heard = {};
  for (const id of ['plenary/en', 'plenary/floor']) {
    const t0 = Date.now();
    await page.click(`${row(id)} button.monitor`);
    await page.waitForFunction(() => window.boothcast.player);
    await s.probe(page);
    await s.waitTone(page, s.TONES[id], WAIT).catch(async (e) => {
      const seen = await page.evaluate(() => ({
        monitored: window.boothcast.state.monitored,
        frames: window.boothcast.stats.frames,
        player: window.boothcast.player.stats(),
        health: document.querySelector('#health tbody').innerText,
        levels: document.querySelector('#channels tbody').innerText,
      }));
      throw new Error(`${e.message}; the page: ${JSON.stringify(seen)}`);
    });
    heard[id] = { tone_hz: s.TONES[id], heard_after_ms: Date.now() - t0 };
  }
  s.figure({ check: 'monitoring', heard });

  const shot = join(s.SCREENSHOTS, 'console.png');
  mkdirSync(s.SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: shot });
  s.figure({ screenshot: shot });

  // Keyboard: Esc stops monitoring, a channel's number monitors it.
  await page.keyboard.press('Escape');
  await page.waitForFunction(() => document.querySelector('#mon-state').textContent === 'monitor off');
  await page.keyboard.press('3');
  await page.waitForFunction((sel) => document.querySelector(sel).getAttribute('aria-pressed') === 'true',
    `${row('plenary/en')} button.monitor`);
  s.figure({ check: 'keyboard monitoring' });

  await page.click('#rec-btn');
  await page.waitForFunction(() => document.querySelector('#rec').dataset.active === 'false');
  const second = checkSession(recordDir, 2);
  s.assert(secondDir.endsWith(second.session), `the page showed ${secondDir}, recorded ${second.session}`);
  s.figure({ check: 'recording from the page', sessions: [first.session, second.session], files: second.files });

  // The event log lists what happened, newest first.
  const log = await page.$$eval('#log li', (lis) =>
    lis.map((li) => ({ kind: li.dataset.kind, t: Date.parse(li.querySelector('time').dateTime), text: li.textContent })),
  );
  s.assert(log.some((e) => e.kind === 'force_mute' && e.text.includes('en/1')), 'the log has no force-mute of en/1');
  s.assert(log.some((e) => e.kind === 'recording'), 'the log has no recording entry');
  s.assert(!log.some((e, i) => i > 0 && e.t > log[i - 1].t), 'the log is not newest first');
  s.figure({ check: 'event log', entries: log.length, kinds: [...new Set(log.map((e) => e.kind))] });

  // The relay restarts: the page says the connection is lost and comes back by itself.
  await relay.kill();
  await page.waitForFunction(() => document.querySelector('#conn').dataset.state === 'reconnecting');
  const lost = (await page.textContent('#conn')).trim();
  await serve(Number(relay.addr.split(':').pop()));
  await page.waitForFunction(
    (n) =>
      window.boothcast.stats.connects === 2 &&
      document.querySelector('#conn').dataset.state === 'connected' &&
      document.querySelectorAll('#channels tbody tr').length === n,
    CHANNELS.length,
  );
  s.figure({ check: 'reconnects by itself', shown_meanwhile: lost });
  s.assert(await page.evaluate(() => window.boothcast.stats.cluster) === 0, 'a relay alone sent `cluster`');

  // A cluster: nodes a and b on a NATS server of the test's own, b recording (--record); the
  // page on b lists both relays, a deciding, and says the recording runs on b.
  const natsPort = await new Promise((resolve) => {
    const srv = createServer().listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
  const nats = spawn('nats-server', ['-a', '127.0.0.1', '-p', String(natsPort), '-js', '-sd', join(s.tmp(), 'nats')],
    { stdio: 'ignore' });
  s.atExit(() => nats.kill('SIGKILL'));
  await s.waitFor('nats-server to listen', () => new Promise((resolve) => {
    const c = connect(natsPort, '127.0.0.1', () => { c.destroy(); resolve(true); });
    c.on('error', () => resolve(false));
  }), WAIT, 50);
  const member = (node, flags = []) => s.startRelay({
    env: { BOOTHCAST_ENGINEER_SECRET: ENGINEER },
    flags: ['--cluster', `nats://127.0.0.1:${natsPort}`, '--node', node, ...flags],
  });
  const a = await member('a');
  // a has joined and decides before b starts, so that b follows.
  await s.waitFor('node a to decide', async () => {
    const text = await (await fetch(`${a.http}/metrics`)).text();
    return text.split('\n').includes('boothcast_cluster_deciding{node="a"} 1');
  }, WAIT, 50);
  const clusterDir = join(s.tmp(), 'cluster-recordings');
  const b = await member('b', ['--record', clusterDir]);
  const onB = await browser.newPage({ viewport: { width: 1366, height: 768 }, colorScheme: 'dark' });
  onB.setDefaultTimeout(WAIT);
  onB.on('pageerror', (e) => errors.push(String(e)));
  await onB.goto(`${b.http}/console`);
  await onB.fill('#secret', ENGINEER);
  await onB.click('#login button[type=submit]');
  await onB.waitForFunction(() => document.querySelectorAll('#cluster tbody tr').length === 2);
  const relays = await onB.$$eval('#cluster tbody tr', (trs) => trs.map((tr) => ({
    node: tr.dataset.node, health: tr.dataset.health, text: tr.innerText,
  })));
  s.assert(relays[0].node === 'b' && /this relay/.test(relays[0].text), `this relay first: ${JSON.stringify(relays)}`);
  s.assert(relays[1].node === 'a' && relays[1].health === 'deciding', `a deciding: ${JSON.stringify(relays)}`);
  s.assert(relays[1].text.includes(a.addr), `a's address shown: ${relays[1].text}`);
  await onB.waitForFunction(() => /REC on b/.test(document.querySelector('#rec-state').textContent));
  // In a cluster each log entry names its relay.
  await onB.waitForSelector('#log li[data-kind="recording"][data-node="b"] .node');
  s.assert(!(await onB.isVisible('#rec-here')), 'offers to record here where it records');
  const clusterShot = join(s.SCREENSHOTS, 'console-cluster.png');
  await onB.screenshot({ path: clusterShot });
  s.figure({ check: 'cluster on the console', relays, screenshot: clusterShot });

  // b dies: the page, loaded from b, moves to a by itself (it learnt a from `welcome`).
  const killedAt = Date.now();
  await b.kill();
  const where = () => onB.evaluate(() => {
    const first = document.querySelector('#cluster tbody tr');
    return { conn: document.body.dataset.conn, first: first && first.dataset.node, text: document.querySelector('#conn').textContent, relays: window.boothcast.relays };
  });
  await s.waitFor('the console on another node', async () => {
    const w = await where();
    return w.conn === 'connected' && w.first === 'a';
  }, 15000).catch(async (e) => {
    throw new Error(`${e.message}: ${JSON.stringify(await where())}`);
  });
  s.figure({ check: 'console moved to another node', after_ms: Date.now() - killedAt });

  s.assert(errors.length === 0, `errors in the page: ${errors.join('; ')}`);
});
