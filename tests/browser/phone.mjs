// The delegate page on a phone as it is, in headless Chromium: the page asks for a playback
// audio session (navigator.audioSession, stubbed where the browser has none), names the channel
// to the system's media controls (Media Session), shows "paused by the phone" when the system
// suspends its audio context and comes back at live on a tap (also a tap on another channel);
// a WebCodecs decoder that says yes and then fails every decode is replaced by the WASM decoder,
// the tone heard within 1 s of the tap.

import * as s from './support.mjs';

const label = (id) => `.channel[data-id="${id}"]`;

// iOS Safari's navigator.audioSession where the browser has none: a plain object with `type`.
const AUDIO_SESSION_STUB = () => {
  if (!('audioSession' in navigator)) {
    Object.defineProperty(navigator, 'audioSession', { value: { type: 'auto' }, configurable: true });
  }
};

// A WebCodecs AudioDecoder that says yes to Opus and then fails every decode with an
// EncodingError through its error callback, as some Safari versions do.
const FAILING_DECODER = () => {
  window.AudioDecoder = class {
    static async isConfigSupported(config) {
      return { supported: true, config };
    }
    constructor({ error }) {
      this.onError = error;
      this.state = 'unconfigured';
    }
    configure() {
      this.state = 'configured';
    }
    decode() {
      if (this.state !== 'configured') return;
      this.state = 'closed';
      setTimeout(() => this.onError(new DOMException('decoding failed', 'EncodingError')), 0);
    }
    reset() {}
    close() {
      this.state = 'closed';
    }
  };
};

await s.run('phone', async ({ launch }) => {
  const relay = await s.startRelay();
  s.startFloor(relay);
  const en = s.startBooth(relay, 'en');
  await s.boothLive(en);
  const browser = await launch();

  // --- the audio session, Media Session, a pause by the system ---------------------------
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, locale: 'en-US' });
  await context.addInitScript(AUDIO_SESSION_STUB);
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(relay.http + '/');
  await s.waitFor('the channel list', async () => (await page.locator(label('plenary/floor')).count()) === 1);
  await page.click(label('plenary/floor'));
  await s.waitFor('the player', () => page.evaluate(() => !!window.boothcast.player));
  await s.probe(page);
  await s.waitTone(page, s.TONES['plenary/floor'], 5000);
  const session = await page.evaluate(() => ({
    type: navigator.audioSession.type,
    title: navigator.mediaSession.metadata && navigator.mediaSession.metadata.title,
    artist: navigator.mediaSession.metadata && navigator.mediaSession.metadata.artist,
    state: navigator.mediaSession.playbackState,
  }));
  s.assert(session.type === 'playback', `audioSession.type is ${session.type}, not playback`);
  s.assert(session.title === 'Floor (original)' && session.artist === 'Test Forum', `media metadata: ${JSON.stringify(session)}`);
  s.assert(session.state === 'playing', `media session state ${session.state}`);

  // The system suspends the context (the phone locked, a call): the page says so.
  await page.evaluate(() => window.boothcast.player.context.suspend());
  await s.waitFor('"paused by the phone" on the page', () => page.isVisible('#paused'), 3000);
  s.assert((await page.textContent('#status')).includes('Paused by the phone'), 'the status says the phone paused the sound');
  s.assert((await page.evaluate(() => navigator.mediaSession.playbackState)) === 'paused', 'media session paused');
  // Frames keep coming meanwhile; none of them may be played late.
  await new Promise((r) => setTimeout(r, 2000));
  // Any tap resumes: here on the event's name.
  const tapped = await page.evaluate(() => performance.now());
  await page.click('#event');
  await s.waitFor('the context to run again', () => page.evaluate(() => window.boothcast.player.context.state === 'running'), 3000);
  const back = await s.waitTone(page, s.TONES['plenary/floor'], 3000, tapped);
  await s.waitFor('the pause notice to go', async () => !(await page.isVisible('#paused')), 2000);
  // Back at live: nothing from before the pause is queued.
  const after = await page.evaluate(() => window.boothcast.player.stats());
  s.assert(after.bufferedMs < 150, `back at live after the pause, not ${after.bufferedMs} ms behind`);
  s.figure({ figure: 'resume_after_system_pause_ms', ms: Math.round(back), buffered_ms: Math.round(after.bufferedMs) });

  // Suspended again; this time the tap is on English: the page does not claim to play while
  // silent, and the tap brings English.
  await page.evaluate(() => window.boothcast.player.context.suspend());
  await s.waitFor('"paused by the phone" again', () => page.isVisible('#paused'), 3000);
  await page.click(label('plenary/en'));
  await s.waitFor('the context to run again after the tap on English', () =>
    page.evaluate(() => window.boothcast.player.context.state === 'running'), 3000);
  await s.waitTone(page, s.TONES['plenary/en'], 3000);
  await s.waitFor('the status to say English', async () => (await page.textContent('#status')).includes('Listening to English'), 2000);
  s.assert((await page.evaluate(() => navigator.mediaSession.metadata.title)) === 'English', 'media metadata names English');
  s.assert(errors.length === 0, `errors in the page: ${errors.join('; ')}`);
  await context.close();

  // --- a WebCodecs decoder that fails every decode ------------------------------------------
  const failing = await browser.newContext({ viewport: { width: 390, height: 844 }, locale: 'en-US' });
  await failing.addInitScript(FAILING_DECODER);
  const fp = await failing.newPage();
  await fp.goto(relay.http + '/');
  await s.waitFor('the channel list', async () => (await fp.locator(label('plenary/en')).count()) === 1);
  const clicked = await fp.evaluate(() => performance.now());
  await fp.click(label('plenary/en'));
  await s.waitFor('the player', () => fp.evaluate(() => !!window.boothcast.player));
  await s.probe(fp);
  const ms = await s.waitTone(fp, s.TONES['plenary/en'], 3000, clicked);
  const st = await fp.evaluate(() => window.boothcast.player.stats());
  s.assert(st.decoder === 'wasm' && st.failovers === 1, `the WASM decoder took over: ${JSON.stringify(st)}`);
  s.figure({ figure: 'failing_decoder_to_tone_ms', ms: Math.round(ms), decode_errors: st.decodeErrors });
  s.assert(ms < 1000, `the tone came ${Math.round(ms)} ms after the tap with a failing decoder (at most 1000)`);
});
