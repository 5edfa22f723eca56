// An event with an access code: the page asks for it, a wrong one is refused and asked again,
// the right one lets the delegate listen; the code never appears in the address.

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import * as s from './support.mjs';

const CODE = '2468';

await s.run('access', async ({ launch }) => {
  const relay = await s.startRelay({ env: { BOOTHCAST_ACCESS_CODE: CODE } });
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
});
