// A forum with two halls, in headless Chromium: the page lists the halls by name, then the
// chosen hall's languages; `/?room=panel-a` opens that hall; the last hall and language are
// remembered; `/join?room=` and `/qr.svg?room=` give a hall's own address and QR code (decoded
// with zbarimg); `serve` prints every hall's address. The join address on an offline venue
// LAN (a network namespace with one LAN address and no default route) is that address, several
// candidates are all printed with --public-url suggested, and the QR code `serve` draws on a
// terminal decodes on a light and on a dark terminal alike. The engineer's console groups the
// channels by hall.

import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as s from './support.mjs';

const TONES = { 'plenary/floor': 330, 'plenary/en': 610, 'panel-a/floor': 470, 'panel-a/fr': 1030 };
const BOOTH_SECRET = 'booth-secret-of-the-test';

const EVENT = `
[event]
name = "Two Halls Forum"

[secrets]
floor = "${s.SECRETS.floor}"
engineer = "engineer-secret"

[[rooms]]
id = "plenary"
name = "Plenary hall"

[[rooms.channels]]
lang = "en"
name = "English"
native = "English"

[[rooms.booths]]
id = "en"
languages = ["en"]
secret = "${BOOTH_SECRET}"

[[rooms]]
id = "panel-a"
name = "Panel A"

[[rooms.channels]]
lang = "fr"
name = "French"
native = "Français"

[[rooms.booths]]
id = "fr-a"
languages = ["fr"]
secret = "${BOOTH_SECRET}"
`;

// zbarimg's reading of an image file: the decoded texts.
function zbar(path) {
  const out = execFileSync('zbarimg', ['-q', '--raw', path], { stdio: ['ignore', 'pipe', 'pipe'] });
  return out.toString().trim().split('\n');
}

// The QR code a terminal shows for `text` (serve's output), as a PGM image: every character a
// module wide and two tall (█ ▀ ▄ and space), in the terminal's own colours unless the line
// sets black on white with ANSI colours.
function terminalQr(text, theme) {
  const lines = text.split('\n').filter((l) => /[█▀▄]/.test(l));
  const SCALE = 6;
  const MARGIN = 4;
  const rows = [];
  for (const line of lines) {
    const ansi = line.includes('\x1b[30;107m');
    const fg = ansi ? 0 : theme.fg;
    const bg = ansi ? 255 : theme.bg;
    const glyphs = [...line.replace(/\x1b\[[0-9;]*m/g, '')];
    const top = glyphs.map((g) => (g === '█' || g === '▀' ? fg : bg));
    const bottom = glyphs.map((g) => (g === '█' || g === '▄' ? fg : bg));
    rows.push(top, bottom);
  }
  const w = Math.max(...rows.map((r) => r.length));
  const W = (w + 2 * MARGIN) * SCALE;
  const H = (rows.length + 2 * MARGIN) * SCALE;
  const px = Buffer.alloc(W * H, theme.bg);
  rows.forEach((r, y) =>
    r.forEach((v, x) => {
      for (let dy = 0; dy < SCALE; dy++)
        px.fill(v, ((y + MARGIN) * SCALE + dy) * W + (x + MARGIN) * SCALE, ((y + MARGIN) * SCALE + dy) * W + (x + MARGIN + 1) * SCALE);
    }),
  );
  return Buffer.concat([Buffer.from(`P5\n${W} ${H}\n255\n`), px]);
}

// `serve` in a network namespace of its own whose interfaces are `lan` (veth pairs, one
// address each) and loopback, with no default route; what it prints, up to its console line.
// Runs under `script` so that standard output is a terminal.
async function serveOffline(lan, flags = []) {
  const config = join(s.tmp(), 'halls.toml');
  const setup = ['ip link set lo up']
    .concat(lan.flatMap((ip, i) => [
      `ip link add v${i} type veth peer name p${i}`,
      `ip addr add ${ip}/24 dev v${i}`,
      `ip link set v${i} up`,
      `ip link set p${i} up`,
    ]))
    .join(' && ');
  const cmd = `${setup} && exec script -qfec '${s.BIN} serve --config ${config} --listen 0.0.0.0:18080 --web-dir ${join(s.ROOT, 'web-client')} ${flags.join(' ')}' /dev/null`;
  const proc = spawn('unshare', ['-n', 'sh', '-c', cmd], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  s.atExit(() => {
    try {
      process.kill(-proc.pid, 'SIGKILL');
    } catch {}
  });
  let out = '';
  let err = '';
  proc.stdout.on('data', (c) => (out += c));
  proc.stderr.on('data', (c) => (err += c));
  await s.waitFor(`serve in a namespace to print its addresses (${err.slice(-300)})`, () => out.includes("engineer's console"), 20000);
  try {
    process.kill(-proc.pid, 'SIGKILL');
  } catch {}
  return out.replace(/\r/g, '');
}

await s.run('halls', async ({ launch }) => {
  writeFileSync(join(s.tmp(), 'halls.toml'), EVENT);
  const relay = await s.startRelay({ event: EVENT });
  s.startFloor(relay, TONES['plenary/floor']);
  s.startFloor(relay, TONES['panel-a/floor'], { room: 'panel-a' });
  const en = s.startBooth(relay, 'en', TONES['plenary/en'], { secret: BOOTH_SECRET });
  const fr = s.startBooth(relay, 'fr-a', TONES['panel-a/fr'], { secret: BOOTH_SECRET });
  await s.boothLive(en);
  await s.boothLive(fr);

  // serve printed each hall's address.
  const printed = relay.proc.printed;
  for (const line of [`Plenary hall: ${relay.http}/?room=plenary`, `Panel A: ${relay.http}/?room=panel-a`]) {
    s.assert(printed.includes(line), `serve prints "${line}":\n${printed}`);
  }

  const browser = await launch();
  mkdirSync(s.SCREENSHOTS, { recursive: true });
  const phone = { viewport: { width: 390, height: 844 }, locale: 'en-US' };
  const context = await browser.newContext(phone);
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(relay.http + '/');

  // The halls by name, and no languages before a hall is chosen.
  await s.waitFor('the halls by name', async () => (await page.locator('#hall-list .hall').allTextContents()).join('|').includes('Panel A'), 10000);
  const halls = await page.locator('#hall-list .hall .name').allTextContents();
  s.assert(halls.join('|') === 'Plenary hall|Panel A', `halls listed: ${halls}`);
  s.assert(!(await page.isVisible('#channels')), 'no languages before a hall is chosen');
  await page.screenshot({ path: join(s.SCREENSHOTS, 'delegate-halls-phone.png'), fullPage: true });

  // Panel A: its own languages, its address in the address bar; French plays.
  await page.click('#hall-list .hall[data-room="panel-a"]');
  await s.waitFor('Panel A\'s languages', async () => (await page.locator('#channel-list .channel').count()) === 2);
  const ids = await page.$$eval('#channel-list .channel', (els) => els.map((e) => e.dataset.id));
  s.assert(ids.join() === 'panel-a/floor,panel-a/fr', `Panel A lists ${ids}`);
  s.assert(new URL(page.url()).searchParams.get('room') === 'panel-a', `the address shows the hall: ${page.url()}`);
  s.assert((await page.textContent('#hall-name')) === 'Panel A', 'the hall is named above its languages');
  await page.click('.channel[data-id="panel-a/fr"]');
  await s.waitFor('the player', () => page.evaluate(() => !!window.boothcast.player));
  await s.probe(page);
  await s.waitTone(page, TONES['panel-a/fr'], 5000);
  await page.screenshot({ path: join(s.SCREENSHOTS, 'delegate-hall-panel-a-phone.png'), fullPage: true });

  // Remembered: the page opened again at / comes back to Panel A with French chosen.
  await page.goto(relay.http + '/');
  await s.waitFor('the remembered hall', async () => (await page.locator('#channel-list .channel').count()) === 2, 10000);
  s.assert(await page.isChecked('.channel[data-id="panel-a/fr"] input'), 'French is remembered');
  // Other halls: back to the list.
  await page.click('#other-halls');
  await s.waitFor('the hall list again', () => page.isVisible('#halls'), 3000);
  await context.close();

  // A hall's own address opens that hall, in a browser that never saw the page.
  const fresh = await browser.newContext(phone);
  const fp = await fresh.newPage();
  await fp.goto(relay.http + '/?room=panel-a');
  await s.waitFor('/?room=panel-a to open Panel A', async () => (await fp.locator('#channel-list .channel').count()) === 2, 10000);
  s.assert(!(await fp.isVisible('#halls')), 'no hall list at a hall\'s own address');
  const freshIds = await fp.$$eval('#channel-list .channel', (els) => els.map((e) => e.dataset.id));
  s.assert(freshIds.join() === 'panel-a/floor,panel-a/fr', `/?room=panel-a lists ${freshIds}`);
  // Arrived by the hall's own address (its QR code): the hall is remembered with the language.
  await fp.click('.channel[data-id="panel-a/fr"]');
  await s.waitFor('the player', () => fp.evaluate(() => !!window.boothcast.player));
  await fp.goto(relay.http + '/');
  await s.waitFor('the hall remembered after arriving by its address', async () => (await fp.locator('#channel-list .channel').count()) === 2, 10000);
  s.assert(await fp.isChecked('.channel[data-id="panel-a/fr"] input'), 'French is remembered');
  s.assert(new URL(fp.url()).searchParams.get('room') === 'panel-a', `the remembered hall is in the address: ${fp.url()}`);
  await s.waitFor('the status naming the chosen language', async () => /Listen.*Français|Français.*Listen/.test(await fp.textContent('#status')), 5000);
  // A hall this event does not have: said, and the halls listed.
  await fp.goto(relay.http + '/?room=nope');
  await s.waitFor('the hall list for an unknown hall', () => fp.isVisible('#halls'), 10000);
  const said = await fp.textContent('#status');
  s.assert(said.includes('“nope”'), `an unknown hall is said: ${said}`);
  s.assert(new URL(fp.url()).searchParams.get('room') === null, `the unknown hall leaves the address: ${fp.url()}`);

  // /join and /qr.svg for the hall.
  const hallUrl = `${relay.http}/?room=panel-a`;
  const info = await (await fetch(relay.http + '/join?room=panel-a')).json();
  s.assert(info.url === hallUrl, `/join?room=panel-a: ${JSON.stringify(info)}`);
  s.assert(info.rooms.map((r) => r.name).join('|') === 'Plenary hall|Panel A', `rooms: ${JSON.stringify(info.rooms)}`);
  const unknown = await fetch(relay.http + '/join?room=nope');
  s.assert(unknown.status === 404 && (await unknown.text()).includes('no room "nope"'), 'an unknown room is refused');
  const svg = await (await fetch(relay.http + '/qr.svg?room=panel-a')).text();
  await fp.setContent(`<body style="margin:0;background:#fff">${svg}</body>`);
  const png = join(s.tmp(), 'panel-a-qr.png');
  await fp.locator('svg').screenshot({ path: png });
  const decoded = zbar(png);
  s.assert(decoded[0] === hallUrl, `the hall's QR code decodes to ${decoded}, not ${hallUrl}`);
  await fresh.close();

  // The engineer's console: the channels under their halls' names.
  const con = await browser.newPage({ viewport: { width: 1366, height: 768 } });
  await con.goto(relay.http + '/console');
  await con.fill('#secret', 'engineer-secret');
  await con.press('#secret', 'Enter');
  await s.waitFor('the console grouped by hall', async () =>
    (await con.$$eval('#channels tbody tr', (trs) => trs.map((tr) => tr.dataset.room ? `[${tr.textContent}]` : tr.dataset.channel))).join(' ') ===
    '[Plenary hall] plenary/floor plenary/en [Panel A] panel-a/floor panel-a/fr', 10000);
  await con.close();
  s.assert(errors.length === 0, `errors in the page: ${errors.join('; ')}`);

  // An offline venue LAN: the address of its one interface, not 127.0.0.1.
  const offline = await serveOffline(['10.77.0.5']);
  s.assert(offline.includes('delegates join at http://10.77.0.5:18080/'), `offline LAN:\n${offline}`);
  s.assert(!offline.includes('--public-url'), 'one candidate: no choice to make');
  // The terminal's QR code decodes on a light and on a dark terminal.
  for (const [name, theme] of [['light', { fg: 0, bg: 255 }], ['dark', { fg: 230, bg: 20 }]]) {
    const path = join(s.tmp(), `terminal-qr-${name}.pgm`);
    writeFileSync(path, terminalQr(offline.split('halls,')[0], theme));
    const got = zbar(path);
    s.assert(got[0] === 'http://10.77.0.5:18080/', `the terminal's QR code on a ${name} terminal decodes to ${got}`);
  }
  // Two LANs: both printed, --public-url suggested.
  const two = await serveOffline(['10.77.0.5', '192.168.77.5']);
  for (const u of ['http://10.77.0.5:18080/', 'http://192.168.77.5:18080/']) {
    s.assert(two.includes(`  ${u}\n`), `${u} listed:\n${two}`);
  }
  s.assert(two.includes('--public-url'), `--public-url suggested:\n${two}`);
  s.figure({ figure: 'join_offline', printed: offline.split('\n')[0], candidates_two: two.split('\n').slice(1, 4) });
});
