// The delegate page in its languages, in headless Chromium: English, Azerbaijani, Russian,
// Arabic and French following the browser's language, Arabic laid out right to left
// (screenshot); the event file's page_language when the browser's language is not one of the
// page's; a language a venue adds by dropping its file into i18n/ (and naming it in
// i18n/languages.json), with the keys it lacks taken from English.

import { cpSync, mkdirSync, readFileSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as s from './support.mjs';

const WEB = join(s.ROOT, 'web-client');
const strings = (lang) => JSON.parse(readFileSync(join(WEB, 'i18n', `${lang}.json`), 'utf8'));

async function open(browser, relay, locale) {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, locale });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(relay.http + '/');
  await s.waitFor(`the page for ${locale}`, async () => (await page.locator('.channel').count()) === 6, 10000);
  return { context, page, errors };
}

await s.run('languages', async ({ launch }) => {
  const relay = await s.startRelay();
  s.startFloor(relay);
  const browser = await launch();
  mkdirSync(s.SCREENSHOTS, { recursive: true });

  for (const [locale, lang] of [
    ['en-US', 'en'],
    ['az-AZ', 'az'],
    ['ru-RU', 'ru'],
    ['ar-SA', 'ar'],
    ['fr-FR', 'fr'],
  ]) {
    const { context, page, errors } = await open(browser, relay, locale);
    const words = strings(lang);
    const shown = await page.evaluate(() => ({
      lang: document.documentElement.lang,
      dir: document.documentElement.dir,
      play: document.getElementById('play').textContent,
      legend: document.querySelector('#channels legend').textContent,
      floor: document.querySelector('.channel[data-id="plenary/floor"] .name').textContent,
      status: document.getElementById('status').textContent,
    }));
    s.assert(shown.lang === lang, `${locale}: html lang ${shown.lang}`);
    s.assert(shown.play === words.listen && shown.legend === words.language, `${locale}: ${JSON.stringify(shown)}`);
    s.assert(shown.floor === words.floorName, `${locale}: the floor is named ${shown.floor}`);
    s.assert(shown.status === words.ready, `${locale}: status ${shown.status}`);
    s.assert(shown.dir === (lang === 'ar' ? 'rtl' : 'ltr'), `${locale}: dir ${shown.dir}`);
    if (lang === 'ar') {
      // Right to left: each channel's radio button is at the right of its name, the title
      // right-aligned.
      const layout = await page.evaluate(() => {
        const el = document.querySelector('.channel[data-id="plenary/en"]');
        const radio = el.querySelector('input').getBoundingClientRect();
        const name = el.querySelector('.name').getBoundingClientRect();
        const h1 = document.querySelector('h1').getBoundingClientRect();
        return { radioLeft: radio.left, nameRight: name.right, h1Right: h1.right, width: document.documentElement.clientWidth };
      });
      s.assert(layout.radioLeft >= layout.nameRight, `Arabic: the radio button is right of the name: ${JSON.stringify(layout)}`);
      s.assert(layout.width - layout.h1Right < 40, `Arabic: the title is on the right: ${JSON.stringify(layout)}`);
      await page.screenshot({ path: join(s.SCREENSHOTS, 'delegate-phone-ar.png'), fullPage: true });
    }
    s.assert(errors.length === 0, `${locale}: errors in the page: ${errors.join('; ')}`);
    await context.close();
  }
  await relay.kill();

  // A venue's own page directory: German added, and the event's default language French.
  const web = join(s.tmp(), 'web');
  mkdirSync(web);
  for (const f of readdirSync(WEB)) {
    if (f === 'node_modules') symlinkSync(join(WEB, f), join(web, f));
    else cpSync(join(WEB, f), join(web, f), { recursive: true });
  }
  writeFileSync(join(web, 'i18n', 'de.json'), JSON.stringify({ dir: 'ltr', listen: 'Anhören', language: 'Sprache' }));
  const index = JSON.parse(readFileSync(join(web, 'i18n', 'languages.json'), 'utf8'));
  index.languages.push('de');
  writeFileSync(join(web, 'i18n', 'languages.json'), JSON.stringify(index));
  const event = s.EVENT.replace('name = "Test Forum"', 'name = "Test Forum"\npage_language = "fr"');
  const venue = await s.startRelay({ event, webDir: web });

  const de = await open(browser, venue, 'de-DE');
  const deShown = await de.page.evaluate(() => [document.getElementById('play').textContent, document.getElementById('status').textContent]);
  s.assert(deShown[0] === 'Anhören', `the venue's German: ${deShown}`);
  s.assert(deShown[1] === strings('en').ready, `keys German lacks come from English: ${deShown}`);
  await de.context.close();

  // A browser in a language the page does not have: the event's default, French.
  const pt = await open(browser, venue, 'pt-BR');
  const ptShown = await pt.page.evaluate(() => [document.documentElement.lang, document.getElementById('play').textContent]);
  s.assert(ptShown[0] === 'fr' && ptShown[1] === strings('fr').listen, `the event's default language: ${ptShown}`);
  await pt.context.close();
});
