// Measures the delegate page for docs/BENCHMARKS.md (not part of the test suite):
//
// - delay from a frame's arrival at the relay (the header's relay time, on the relay's clock,
//   which is this machine's clock) to its first sample at the page's audio output (the audio
//   context's output timestamp: when that sample is heard), per frame, median and p95, for the
//   main path (WebCodecs + AudioWorklet) and the fallback path (WASM + ScriptProcessor);
// - the page's first load, compressed as served, with and without the WASM decoder.
//
//   node tests/browser/latency.mjs [--seconds 30] [--realtime] [--audio-buffer 256]
//
// --realtime runs the relay and the floor feed under SCHED_FIFO and Chromium under SCHED_RR
// (chrt, needs root), so that other work on the machine does not delay the frames or the
// audio output. --audio-buffer N sets Chromium's audio output buffer (--audio-buffer-size, in
// samples; by default Chromium takes 512 at 48 kHz with PulseAudio, about 44 ms of output
// latency in all).
//
// Prints JSON lines. Uses target/debug/boothcast unless BOOTHCAST_BIN says otherwise.

import { gzipSync } from 'node:zlib';
import * as s from './support.mjs';

const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
};
const SECONDS = arg('--seconds', 30);
// Let the jitter margin settle (it adapts over 2 s windows) before measuring.
const WARM_UP_MS = 5000;

async function delays(browser, relay, fallback) {
  const page = await browser.newPage();
  await page.goto(relay.http + (fallback ? '/?fallback=1' : '/'));
  await page.locator('.channel[data-id="plenary/floor"]').click();
  await s.waitFor('the player', () => page.evaluate(() => !!window.boothcast.player));
  await s.probe(page);
  await s.waitTone(page, s.TONES['plenary/floor'], 5000);
  await new Promise((r) => setTimeout(r, WARM_UP_MS));
  await page.evaluate(() => window.boothcast.player.delays({ clear: true }));
  // A second listener in the page records the relay's stamps: how evenly the frames reach the
  // relay (the sender's jitter, which any receiver has to buffer for).
  await page.evaluate(() => {
    window.__stamps = [];
    const ws = new WebSocket('ws://' + location.host + '/ws');
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => ws.send(JSON.stringify({ type: 'hello', role: 'listener', channel: 'floor' }));
    ws.onmessage = (e) => {
      if (typeof e.data === 'string') return;
      const v = new DataView(e.data);
      window.__stamps.push([v.getUint32(4), Number(v.getBigUint64(16)) / 1000]);
    };
    window.__stampSocket = ws;
  });
  const relayMs = [];
  const localMs = [];
  const end = Date.now() + SECONDS * 1000;
  while (Date.now() < end) {
    // The player keeps 10 s of figures: collect well within that.
    await new Promise((r) => setTimeout(r, 2000));
    const d = await page.evaluate(() => window.boothcast.player.delays({ clear: true }));
    relayMs.push(...d.relay);
    localMs.push(...d.local);
  }
  const st = await page.evaluate(() => window.boothcast.player.stats());
  const stamps = await page.evaluate(() => {
    window.__stampSocket.close();
    return window.__stamps;
  });
  await page.close();
  // Each frame's relay time against a steady 20 ms cadence: the spread is the arrival jitter.
  const lag = stamps.map(([seq, relayMs]) => relayMs - (seq - stamps[0][0]) * 20);
  const base = Math.min(...lag);
  const r = (x) => Math.round(x * 10) / 10;
  return {
    figure: 'page_delay_ms',
    path: st.path,
    frames: relayMs.length,
    relay_to_output_median: r(s.percentile(relayMs, 50)),
    relay_to_output_p95: r(s.percentile(relayMs, 95)),
    page_arrival_to_output_median: r(s.percentile(localMs, 50)),
    page_arrival_to_output_p95: r(s.percentile(localMs, 95)),
    relay_arrival_jitter_p95: r(s.percentile(lag, 95) - base),
    relay_arrival_jitter_p99: r(s.percentile(lag, 99) - base),
    output_latency_ms: r(st.outputLatencyMs),
    jitter_margin_ms: r(st.marginMs),
    underruns: st.underruns,
    skipped: st.skipped,
  };
}

async function firstLoad(browser, relay, fallback) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const responses = [];
  page.on('response', (r) => responses.push(r));
  await page.goto(relay.http + (fallback ? '/?fallback=1' : '/'));
  await page.locator('.channel[data-id="plenary/floor"]').click();
  await s.waitFor('the player', () => page.evaluate(() => !!window.boothcast.player));
  await s.waitTone(page, s.TONES['plenary/floor'], 5000).catch(() => {});
  let wire = 0;
  let gzip = 0;
  const files = [];
  for (const r of responses) {
    if (!r.url().startsWith(relay.http)) continue;
    const body = await r.body().catch(() => Buffer.alloc(0));
    const sizes = await r.request().sizes();
    const encoding = (await r.allHeaders())['content-encoding'] || 'identity';
    wire += sizes.responseBodySize + sizes.responseHeadersSize;
    const gz = gzipSync(body, { level: 9 }).length;
    gzip += gz;
    files.push({ path: new URL(r.url()).pathname, bytes: body.length, served: sizes.responseBodySize, encoding, gzip9: gz });
  }
  await context.close();
  return {
    figure: 'page_first_load',
    path: fallback ? 'fallback' : 'webcodecs',
    transferred_bytes: wire,
    gzip9_bytes: gzip,
    files,
  };
}

await s.run(
  'latency',
  async ({ launch }) => {
    const realtime = process.argv.includes('--realtime');
    const relay = await s.startRelay({ realtime });
    s.startFloor(relay, undefined, { realtime });
    const buffer = arg('--audio-buffer', 0);
    const browser = await launch({ realtime, args: buffer ? [`--audio-buffer-size=${buffer}`] : [] });
    for (const fallback of [false, true]) s.figure(await delays(browser, relay, fallback));
    for (const fallback of [false, true]) s.figure(await firstLoad(browser, relay, fallback));
  },
  { timeoutMs: (2 * (SECONDS + 20) + 60) * 1000 },
);
