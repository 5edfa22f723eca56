// The three browser engines behind one small page API, so that a scenario runs unchanged in
// each: Chromium (playwright-core), Firefox ESR (puppeteer-core over WebDriver BiDi) and
// WebKitGTK (WebKitWebDriver and its MiniBrowser under xvfb-run, driven over classic WebDriver
// HTTP with fetch).
//
//   const browser = await engines.launch('firefox', { env: sink.env });
//   const page = await browser.newPage({ width: 390, height: 844 });
//   await page.goto(url); await page.click('.channel[data-id="plenary/en"]');
//   await page.evaluate((x) => window.boothcast.state.playing, arg);
//
// `click` is a real input event in every engine (WebDriver's element click, CDP's or BiDi's
// input), so it counts as the user's gesture that lets a page start its sound.

import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { ROOT, CHROMIUM, atExit, tmp, waitFor } from './support.mjs';

const require = createRequire(join(ROOT, 'web-client', 'package.json'));

export const FIREFOX = process.env.FIREFOX || '/usr/bin/firefox-esr';
export const WEBKIT_DRIVER = process.env.WEBKIT_DRIVER || '/usr/bin/WebKitWebDriver';
export const MINIBROWSER = process.env.MINIBROWSER || '/usr/lib/x86_64-linux-gnu/webkit2gtk-4.1/MiniBrowser';

export const ENGINES = ['chromium', 'firefox', 'webkit'];

// `realtime`: the browser and everything it starts under SCHED_RR (chrt, needs root), as a
// phone's audio runs with real-time priority: what the test then hears is the page, not a busy
// test machine's scheduler.
export async function launch(engine, { env = {}, realtime = false } = {}) {
  if (engine === 'chromium') return chromium(env, realtime);
  if (engine === 'firefox') return firefox(env, realtime);
  if (engine === 'webkit') return webkit(env, realtime);
  throw new Error(`unknown engine ${engine}`);
}

// An executable that runs `path` under SCHED_RR, or `path` itself.
function rt(path, realtime) {
  if (!realtime) return path;
  const wrapper = join(tmp(), `rt-${path.split('/').pop()}`);
  writeFileSync(wrapper, `#!/bin/sh\nexec chrt -r 5 ${path} "$@"\n`, { mode: 0o755 });
  return wrapper;
}

async function chromium(env, realtime) {
  const { chromium: pw } = require('playwright-core');
  const browser = await pw.launch({
    executablePath: rt(CHROMIUM, realtime),
    env: { ...process.env, ...env },
    headless: true,
    // Playwright mutes a headless Chromium by default: the sink would hear nothing.
    ignoreDefaultArgs: ['--mute-audio'],
    args: [
      '--no-sandbox',
      '--autoplay-policy=no-user-gesture-required',
      '--disable-gpu',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-background-timer-throttling',
      '--disable-renderer-backgrounding',
    ],
  });
  return {
    engine: 'chromium',
    async newPage({ width = 390, height = 844, locale = 'en-US' } = {}) {
      const context = await browser.newContext({ viewport: { width, height }, locale });
      const page = await context.newPage();
      return {
        raw: page,
        errors: collectErrors(page),
        goto: (url) => page.goto(url),
        evaluate: (fn, arg) => page.evaluate(fn, arg),
        click: (sel) => page.click(sel),
        text: (sel) => page.textContent(sel),
        screenshot: (path) => page.screenshot({ path, fullPage: true }),
        close: () => context.close(),
      };
    },
    close: () => browser.close(),
  };
}

function collectErrors(page) {
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  return errors;
}

async function firefox(env, realtime) {
  const puppeteer = require('puppeteer-core');
  const browser = await puppeteer.launch({
    browser: 'firefox',
    executablePath: rt(FIREFOX, realtime),
    headless: true,
    env: { ...process.env, ...env },
    // FIREFOX_DUMPIO=1: Firefox's own output on this script's, to see what a stuck page did.
    dumpio: process.env.FIREFOX_DUMPIO === '1',
    extraPrefsFirefox: {
      // Sound without a gesture the test cannot give through a headless window's input.
      'media.autoplay.default': 0,
      'media.autoplay.block-webaudio': false,
      'media.autoplay.blocking_policy': 0,
      'intl.accept_languages': 'en-US, en',
      // Timers of a page that is not in front are not slowed down.
      'dom.min_background_timeout_value': 4,
    },
  });
  atExit(() => browser.process()?.kill('SIGKILL'));
  return {
    engine: 'firefox',
    async newPage({ width = 390, height = 844 } = {}) {
      const page = await browser.newPage();
      await page.setViewport({ width, height });
      return {
        raw: page,
        errors: collectErrors(page),
        goto: (url) => page.goto(url),
        evaluate: (fn, arg) => page.evaluate(fn, arg),
        click: (sel) => page.click(sel),
        text: (sel) => page.$eval(sel, (e) => e.textContent),
        screenshot: (path) => page.screenshot({ path, fullPage: true }),
        close: () => page.close(),
      };
    },
    close: () => browser.close(),
  };
}

// Classic WebDriver over HTTP. MiniBrowser has no headless mode: it runs in an X server of its
// own (xvfb-run -a picks a free display).
async function webkit(env, realtime) {
  const port = 20000 + Math.floor(Math.random() * 20000);
  const proc = spawn('xvfb-run', ['-a', '-s', '-screen 0 1280x1024x24', rt(WEBKIT_DRIVER, realtime), `--port=${port}`], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
    detached: true,
  });
  let log = '';
  proc.stderr.on('data', (c) => {
    log = (log + c).slice(-4000);
  });
  const killGroup = () => {
    try {
      process.kill(-proc.pid, 'SIGKILL');
    } catch {}
  };
  atExit(killGroup);
  const base = `http://127.0.0.1:${port}`;
  const call = async (method, path, body) => {
    const r = await fetch(base + path, {
      method,
      headers: { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const j = await r.json();
    if (j.value && j.value.error) throw new Error(`WebDriver ${method} ${path}: ${j.value.error}: ${j.value.message}`);
    return j.value;
  };
  await waitFor(
    'WebKitWebDriver to answer',
    async () => {
      try {
        return (await call('GET', '/status')).ready;
      } catch {
        return false;
      }
    },
    20000,
    100,
  ).catch((e) => {
    throw new Error(`${e.message}\n${log}`);
  });
  const sessions = [];
  return {
    engine: 'webkit',
    async newPage({ width = 390, height = 844 } = {}) {
      const created = await call('POST', '/session', {
        capabilities: {
          alwaysMatch: {
            'webkitgtk:browserOptions': { binary: MINIBROWSER, args: ['--automation'] },
          },
        },
      });
      const id = created.sessionId;
      sessions.push(id);
      const s = (path) => `/session/${id}${path}`;
      await call('POST', s('/window/rect'), { width, height }).catch(() => {});
      const element = async (sel) => {
        const e = await call('POST', s('/element'), { using: 'css selector', value: sel });
        return Object.values(e)[0];
      };
      const page = {
        raw: null,
        errors: [],
        goto: (url) => call('POST', s('/url'), { url }),
        // The function runs in the page with its argument; a promise is awaited.
        async evaluate(fn, arg) {
          const script = `const done = arguments[arguments.length - 1];
            Promise.resolve().then(() => (${fn.toString()})(arguments[0]))
              .then((v) => done({ ok: v === undefined ? null : v }), (e) => done({ err: String(e && e.stack || e) }));`;
          const r = await call('POST', s('/execute/async'), { script, args: [arg === undefined ? null : arg] });
          if (r && 'err' in r) throw new Error(`in the page: ${r.err}`);
          return r.ok;
        },
        async click(sel) {
          await call('POST', s(`/element/${await element(sel)}/click`), {});
        },
        async text(sel) {
          return call('GET', s(`/element/${await element(sel)}/text`));
        },
        async screenshot(path) {
          writeFileSync(path, Buffer.from(await call('GET', s('/screenshot')), 'base64'));
        },
        async close() {
          await call('DELETE', s('')).catch(() => {});
        },
      };
      return page;
    },
    async close() {
      for (const id of sessions) await call('DELETE', `/session/${id}`).catch(() => {});
      killGroup();
    },
  };
}
