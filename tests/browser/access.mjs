// An event with an access code: the page asks for it, a wrong one is refused and asked again,
// the right one lets the delegate listen; the code never appears in the address. The event
// also has a listener delay (to match a delayed video): the page applies it, and the
// delegate's own setting replaces it.

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import * as s from './support.mjs';

const CODE = '2468';

await s.run('access', async ({ launch }) => {
  const event = s.EVENT.replace('name = "Test Forum"', 'name = "Test Forum"\nlistener_delay_ms = 400');
  const relay = await s.startRelay({ env: { BOOTHCAST_ACCESS_CODE: CODE }, event });
  s.startFloor(relay);

  const browser = await launch();
  const page = await browser.newPage({ viewport: { width: 390, height: 844 } });
  await page.goto(relay.http + '/');
  await s.waitFor('the access code form', () => page.isVisible('#code-form'), 5000);
  s.assert((await page.textContent('#code-message')).includes('needs an access code'), 'the page says a code is needed');
  s.assert(
    (await page.evaluate(() => document.activeElement && document.activeElement.id)) === 'code',
    'the code field has the focus',
  );

  await page.fill('#code', '1111');
  await page.press('#code', 'Enter');
  await s.waitFor(
    'the refusal of a wrong code',
    async () => (await page.textContent('#code-message')).includes('Wrong access code'),
    5000,
  );
  s.assert(await page.isVisible('#code-form'), 'the form is asked again after a wrong code');
  mkdirSync(s.SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: join(s.SCREENSHOTS, 'delegate-code-phone.png'), fullPage: true });
  s.assert((await page.locator('.channel').count()) === 0, 'no channels shown without the code');

  await page.fill('#code', CODE);
  await page.click('#code-form button');
  await s.waitFor('the channels after the right code', async () => (await page.locator('.channel').count()) === 6, 5000);
  s.assert(!(await page.isVisible('#code-form')), 'the form is gone');
  await page.locator('.channel[data-id="plenary/floor"]').click();
  await s.waitFor('the player', () => page.evaluate(() => !!window.boothcast.player));
  await s.probe(page);
  await s.waitTone(page, s.TONES['plenary/floor'], 5000);
  s.assert(!page.url().includes(CODE), `the code is not in the address: ${page.url()}`);
  const st = await page.evaluate(() => document.body.dataset.state);
  s.assert(st === 'playing', `the page is playing, not ${st}`);

  // The event's 400 ms listener delay is in what the page plays and shows.
  s.assert((await page.textContent('#extra-hint')).includes('400 ms'), 'the settings name the event default');
  const delayed = await s.waitFor(
    'the event delay in the sound',
    async () => {
      const d = await page.evaluate(() => window.boothcast.player.stats().delayMs);
      return d !== null && d >= 400 && d;
    },
    5000,
  );
  // The delegate's own setting replaces it.
  await page.click('#settings summary');
  await page.fill('#extra', '0');
  await page.press('#extra', 'Tab');
  await s.waitFor(
    "the delegate's own delay",
    async () => {
      const d = await page.evaluate(() => window.boothcast.player.stats().delayMs);
      return d !== null && d < 300;
    },
    5000,
  );
  s.figure({ figure: 'listener_delay', event_default_ms: 400, played_with_ms: Math.round(delayed) });
});
