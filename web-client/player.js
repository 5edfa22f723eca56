// Plays boothcast audio frames (docs/PROTOCOL.md section 6) in the browser.
//
// Main path: WebCodecs AudioDecoder → AudioWorklet (playout.js in worklet.js) → volume → out;
// a WebCodecs decoder that keeps failing is replaced by the WASM one.
// Fallback path (no secure context, or `fallback: true`): opus-decoder (WASM) → the same playout
// on the page's thread behind a ScriptProcessorNode → volume → out.
// The player knows nothing of WebSockets: the page hands it each binary message as received.
//
// The original under the interpretation (`setUnder`): the floor's frames come as a second
// stream, decoded by a decoder of their own and placed by a playout of their own (their own
// sequence, jitter margin and timeline), then mixed under the channel at a gain in dB: on the
// main path a second AudioWorkletNode behind a gain node of its own; on the fallback path a
// second playout pulled in the same ScriptProcessor callback. Nothing of it exists while the
// option is off. While the channel's own frames are the floor (auto-floor, source 0), the
// floor under it is dropped, so that the floor is not heard twice.

import { Playout, SAMPLE_RATE } from './playout.js';

export const HEADER_LEN = 28;
const WASM_DECODER = new URL('./node_modules/opus-decoder/dist/opus-decoder.min.js', import.meta.url);
const WEBCODECS_CONFIG = { codec: 'opus', sampleRate: SAMPLE_RATE, numberOfChannels: 1 };
// 1024 samples (21 ms) per ScriptProcessor callback. The browser double-buffers them: a
// callback the page's thread runs more than one buffer late is a gap or a repeated buffer at
// the output. At 512 a busy machine's page missed its turn a few times a second (Chromium);
// longer buffers add their length to the delay.
const SCRIPT_BUFFER = 1024;
// The ScriptProcessor's count of samples written follows the context's clock when the two are
// further apart than this (two buffers): more than any wobble of playbackTime seen, less than
// what a dropped callback or two makes.
const RESYNC = 2 * SCRIPT_BUFFER;
// The mapping from the count to the context's time follows playbackTime's wobble this slowly
// (about 64 callbacks, 0.7 s).
const SMOOTH = 1 / 64;
// getOutputTimestamp() is believed when the latency it implies (rendering to hearing) is at
// least the context's own baseLatency + outputLatency less this, and at most the second limit.
const LATENCY_SLACK_MS = 5;
const MAX_OUTPUT_LATENCY_MS = 1000;
// The output stage's latency where the browser does not report it (WebKit: outputLatency 0):
// WebKitGTK through PulseAudio measured 50-60 ms beyond its baseLatency, an iPhone's speaker
// 10-30 ms; 40 ms is within 30 ms of both.
const ASSUMED_OUTPUT_MS = 40;
// Delay figures kept for stats() and the benchmarks: the last 10 s of 20 ms frames.
const KEEP_DELAYS = 500;
// The level of the floor under the interpretation, in dB relative to the channel: the page's
// slider runs between these (-30 dB is barely there under speech, -6 dB nearly as loud as the
// interpreter); -18 dB is audible without covering the interpreter's words.
export const UNDER_MIN_DB = -30;
export const UNDER_MAX_DB = -6;
export const UNDER_DEFAULT_DB = -18;
// The floor's gain follows a change of level with this time constant (s): a jump would click.
const GAIN_RAMP = 0.015;

// The 28-byte frame header; null if the message is not a version-1 frame with an Opus packet.
export function parseHeader(buffer) {
  if (!(buffer instanceof ArrayBuffer) || buffer.byteLength <= HEADER_LEN) return null;
  const v = new DataView(buffer);
  if (v.getUint8(0) !== 1) return null;
  return {
    source: v.getUint8(1) === 0 ? 'floor' : 'interpreter',
    channel: v.getUint16(2),
    seq: v.getUint32(4),
    captureUs: Number(v.getBigUint64(8)),
    relayUs: Number(v.getBigUint64(16)),
    rms: v.getUint8(24),
    peak: v.getUint8(25),
  };
}

export async function createPlayer({ fallback = false, delayMs = 0 } = {}) {
  // Created before any await so that a call from a click handler counts as the user's gesture.
  const context = new AudioContext({ sampleRate: SAMPLE_RATE, latencyHint: 'interactive' });
  const volume = context.createGain();
  volume.connect(context.destination);
  try {
    const useWorklet = !fallback && !!context.audioWorklet && typeof AudioWorkletNode === 'function';
    const useWebCodecs = !fallback && (await webCodecsOpus());
    if (useWorklet) await context.audioWorklet.addModule(new URL('./worklet.js', import.meta.url));
    const sink = useWorklet ? workletSink(context, delayMs) : scriptSink(context, delayMs);
    sink.node.connect(volume);
    // The playout of the floor under the channel, made when the page turns it on.
    const layer = useWorklet
      ? (ms, gain) => workletLayer(context, volume, ms, gain)
      : (ms, gain) => sink.layer(ms, gain);
    let player = null;
    // A WebCodecs decoder that says yes and then fails every decode (some Safari versions) is
    // replaced by the WASM one.
    const onFailing = () => player && player.useWasm();
    const decoder = useWebCodecs ? webCodecsDecoder(sink.frame, onFailing) : await wasmDecoder(sink.frame);
    player = new Player({
      context,
      volume,
      sink,
      layer,
      decoder,
      onFailing,
      delayMs,
      path: useWorklet && useWebCodecs ? 'webcodecs' : 'fallback',
    });
    return player;
  } catch (e) {
    context.close();
    throw e;
  }
}

class Player {
  constructor({ context, volume, sink, layer, decoder, onFailing, delayMs = 0, path }) {
    this.context = context;
    this.output = volume;
    this.path = path;
    this.decoderKind = decoder.kind;
    this.outputKind = sink.kind;
    this.sink = sink;
    this.decoder = decoder;
    this.makeLayer = layer;
    this.onFailing = onFailing;
    this.delayMs = delayMs;
    // The floor under the channel while it is on: { decoder (null while it loads), layer }.
    this.under = null;
    this.underDb = UNDER_DEFAULT_DB;
    // Whether the channel's last frame was the floor itself (auto-floor): the floor under it
    // is then dropped.
    this.channelIsFloor = false;
    this.underCounts = { frames: 0, held: 0, errorsBefore: 0 };
    this.switching = null; // the WASM decoder being loaded to replace a failing one
    this.failovers = 0;
    this.errorsBefore = 0; // decode errors of the decoder replaced
    this.local = []; // ms from a frame's arrival at the page to its sound at the output
    // ms from a frame leaving the relay to its sound, less the quickest way from the relay to
    // the page of the last 10 s (the page's clock need not agree with the relay's): a frame
    // that waited for a busy page's thread counts its wait.
    this.sinceRelay = [];
    this.lags = new Float64Array(KEEP_DELAYS);
    this.lagAt = 0;
    this.relay = []; // ms from the relay's stamp to the sound (meaningful with synced clocks)
    this.latencies = []; // ms from rendering a sample to hearing it, last estimates
    this.latencyMs = null;
    this.clockSource = null; // 'timestamp' (getOutputTimestamp) or 'context' (its latency figures)
    this.last = { underruns: 0, concealed: 0, lost: 0, skipped: 0, late: 0, marginMs: 0, bufferedMs: 0 };
    sink.onReport = (r) => this.onReport(r);
  }

  push(buffer) {
    const h = parseHeader(buffer);
    if (!h || this.switching) return;
    const isFloor = h.source === 'floor';
    if (isFloor !== this.channelIsFloor) {
      this.channelIsFloor = isFloor;
      // What the floor under it still had queued would play beside the same sound.
      if (isFloor && this.under) this.resetUnder();
    }
    const arrivalMs = performance.now();
    // The relay's stamp on the page's clock, plus this frame's way here (network, and the wait
    // for the page's thread): the least of these is the clocks' offset plus the quickest way.
    this.lags[this.lagAt++ % this.lags.length] = performance.timeOrigin + arrivalMs - h.relayUs / 1000;
    this.decoder.decode(
      { seq: h.seq, channel: h.channel, relayUs: h.relayUs, arrivalMs },
      new Uint8Array(buffer, HEADER_LEN),
    );
  }

  // A frame of the floor under the channel (the page checked its channel index); dropped
  // while the option is off, while its decoder loads, and while the channel is the floor.
  pushUnder(buffer) {
    const u = this.under;
    if (!u || !u.decoder || this.switching) return;
    if (this.channelIsFloor) {
      this.underCounts.held++;
      return;
    }
    const h = parseHeader(buffer);
    if (!h) return;
    this.underCounts.frames++;
    u.decoder.decode(
      { seq: h.seq, channel: h.channel, relayUs: h.relayUs, arrivalMs: performance.now() },
      new Uint8Array(buffer, HEADER_LEN),
    );
  }

  // Turns the floor under the channel on (a decoder and a playout of its own, at the level
  // last set) or off (both closed: nothing of it stays queued).
  setUnder(on) {
    if (!on) {
      this.closeUnder();
      return;
    }
    if (this.under) return;
    const u = { decoder: null, layer: this.makeLayer(this.delayMs, dbToGain(this.underDb)) };
    this.under = u;
    // Of the kind the channel's decoder is, once a move to the WASM one has ended.
    Promise.resolve(this.switching)
      .then(() => (this.decoderKind === 'webcodecs' ? webCodecsDecoder(u.layer.frame, this.onFailing) : wasmDecoder(u.layer.frame)))
      .then((d) => {
        if (this.under === u && !u.decoder) u.decoder = d;
        else d.close();
      })
      .catch(() => this.closeUnder());
  }

  // The floor's level under the channel, in dB (UNDER_MIN_DB..UNDER_MAX_DB).
  setUnderLevel(db) {
    const n = Number(db);
    this.underDb = Number.isFinite(n) ? Math.min(UNDER_MAX_DB, Math.max(UNDER_MIN_DB, n)) : UNDER_DEFAULT_DB;
    if (this.under) this.under.layer.setGain(dbToGain(this.underDb));
  }

  resetUnder() {
    const u = this.under;
    if (!u) return;
    if (u.decoder) u.decoder.reset();
    u.layer.reset();
  }

  closeUnder() {
    const u = this.under;
    if (!u) return;
    this.under = null;
    if (u.decoder) {
      this.underCounts.errorsBefore += u.decoder.errors;
      u.decoder.close();
    }
    u.layer.close();
  }

  reset() {
    this.decoder.reset();
    this.sink.reset();
    this.resetUnder();
    this.channelIsFloor = false;
  }

  // Moves from the WebCodecs decoder to the WASM one (once); frames that come meanwhile are
  // dropped, and the playout starts again at live with the first frame decoded.
  useWasm() {
    if (this.switching || this.decoderKind === 'wasm') return;
    // The floor under the channel, if on, moves too: its decoder is the same kind.
    const u = this.under;
    this.switching = Promise.all([wasmDecoder(this.sink.frame), u ? wasmDecoder(u.layer.frame) : null])
      .then(([d, ud]) => {
        this.errorsBefore += this.decoder.errors;
        this.decoder.close();
        this.decoder = d;
        this.decoderKind = 'wasm';
        this.path = 'worklet-wasm';
        this.failovers++;
        this.sink.reset();
        if (ud && this.under === u) {
          if (u.decoder) {
            this.underCounts.errorsBefore += u.decoder.errors;
            u.decoder.close();
          }
          u.decoder = ud;
          u.layer.reset();
        } else if (ud) {
          ud.close();
        }
      })
      .catch(() => {})
      .finally(() => {
        this.switching = null;
      });
  }

  setVolume(v) {
    const g = Math.min(1, Math.max(0, Number(v) || 0));
    // A short ramp: a jump of the gain would click.
    this.output.gain.setTargetAtTime(g, this.context.currentTime, 0.015);
  }

  setDelay(ms) {
    this.delayMs = ms;
    this.sink.setDelay(ms);
    if (this.under) this.under.layer.setDelay(ms);
  }

  onReport(r) {
    const { played, ...rest } = r;
    this.last = rest;
    if (!played.length) return;
    const toPerf = this.outputClock();
    let quickest = Infinity;
    for (let i = 0; i < Math.min(this.lagAt, this.lags.length); i++) quickest = Math.min(quickest, this.lags[i]);
    for (const [relayUs, arrivalMs, frame] of played) {
      const audible = toPerf(this.sink.contextTime(frame));
      this.local.push(audible - arrivalMs);
      this.relay.push(performance.timeOrigin + audible - relayUs / 1000);
      this.sinceRelay.push(performance.timeOrigin + audible - relayUs / 1000 - quickest);
    }
    for (const xs of [this.local, this.relay, this.sinceRelay]) {
      if (xs.length > KEEP_DELAYS) xs.splice(0, xs.length - KEEP_DELAYS);
    }
  }

  // Maps a time on the audio context's clock to when it is heard, on the performance.now() clock:
  // the sample rendered now (currentTime) is heard `latency` ms later. The browser's own
  // getOutputTimestamp() says so directly, but it is trusted only when it is plausible:
  // WebKit's performanceTime is performance.now() plus the context's time (the latency it
  // implies grows without end) and its outputLatency is 0; Firefox's timestamp leaves out the
  // output stage (it implies 0 ms, less than its own outputLatency). Otherwise the context's
  // baseLatency + outputLatency stand in, or, where the output stage is not reported,
  // baseLatency + ASSUMED_OUTPUT_MS. The median of the last estimates is used: currentTime
  // moves in steps of the render quantum.
  outputClock() {
    const now = performance.now();
    const ct = this.context.currentTime;
    const output = 1000 * (this.context.outputLatency || 0);
    const reported = output + 1000 * (this.context.baseLatency || 0);
    // No browser's output stage takes no time: an outputLatency of 0 (WebKit) or none at all
    // means "unknown", and a typical figure stands in.
    let latency = output > 0 ? reported : reported + ASSUMED_OUTPUT_MS;
    let source = output > 0 ? 'context' : 'assumed';
    // Only where the output stage is reported: WebKit's timestamp implies the context's time as
    // its latency, which passes for plausible during the first second of playing.
    const ts = output > 0 && this.context.getOutputTimestamp ? this.context.getOutputTimestamp() : null;
    if (ts && Number.isFinite(ts.performanceTime) && ts.performanceTime > 0 && Number.isFinite(ts.contextTime)) {
      const implied = ts.performanceTime - now + (ct - ts.contextTime) * 1000;
      if (implied >= reported - LATENCY_SLACK_MS && implied <= MAX_OUTPUT_LATENCY_MS) {
        latency = implied;
        source = 'timestamp';
      }
    }
    this.latencies.push(latency);
    if (this.latencies.length > 21) this.latencies.shift();
    this.clockSource = source;
    const l = median(this.latencies);
    this.latencyMs = l;
    return (t) => now + (t - ct) * 1000 + l;
  }

  // The figures of the last second (50 frames of 20 ms) and the counters since the start.
  stats() {
    return {
      delayMs: median(this.sinceRelay.slice(-50)),
      arrivalToOutputMs: median(this.local.slice(-50)),
      relayDelayMs: median(this.relay.slice(-50)),
      underruns: this.last.underruns,
      concealed: this.last.concealed,
      lost: this.last.lost,
      skipped: this.last.skipped,
      late: this.last.late,
      marginMs: this.last.marginMs,
      bufferedMs: this.last.bufferedMs,
      outputLatencyMs: 1000 * ((this.context.outputLatency || 0) + (this.context.baseLatency || 0)),
      renderToEarMs: this.latencyMs,
      clock: { source: this.clockSource, ...this.sink.clock() },
      decodeErrors: this.errorsBefore + this.decoder.errors,
      failovers: this.failovers,
      path: this.path,
      decoder: this.decoderKind,
      output: this.outputKind,
      under: this.underStats(),
    };
  }

  // The floor under the channel: null while off; its level, whether it is held back because
  // the channel is the floor itself, frames decoded and held back, and its playout's counters.
  underStats() {
    const u = this.under;
    if (!u) return null;
    const c = u.layer.counters();
    return {
      db: this.underDb,
      ready: !!u.decoder,
      held: this.channelIsFloor,
      frames: this.underCounts.frames,
      heldFrames: this.underCounts.held,
      decodeErrors: this.underCounts.errorsBefore + (u.decoder ? u.decoder.errors : 0),
      underruns: c.underruns || 0,
      lost: c.lost || 0,
      skipped: c.skipped || 0,
      marginMs: c.marginMs || 0,
    };
  }

  // Every delay measured recently, for benchmarks: { local: [ms…], relay: [ms…] }; with
  // `clear`, each figure is returned once.
  delays({ clear = false } = {}) {
    const out = { local: this.local.slice(), relay: this.relay.slice() };
    if (clear) {
      this.local.length = 0;
      this.relay.length = 0;
    }
    return out;
  }

  resume() {
    return this.context.resume();
  }

  async close() {
    this.closeUnder();
    this.decoder.close();
    this.sink.close();
    await this.context.close();
  }
}

function dbToGain(db) {
  return Math.pow(10, db / 20);
}

function median(xs) {
  if (!xs.length) return null;
  const s = xs.slice().sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function webCodecsOpus() {
  if (typeof AudioDecoder !== 'function') return false;
  try {
    return (await AudioDecoder.isConfigSupported(WEBCODECS_CONFIG)).supported === true;
  } catch {
    return false;
  }
}

// WebCodecs decodes asynchronously; outputs come back in order, each matched to its frame's
// details by the timestamp given to the chunk. `onFailing` is called when FAILS_BEFORE_WASM
// decoders in a row failed (an error, or stuck) before giving any sound.
function webCodecsDecoder(onFrame, onFailing = () => {}) {
  const pending = [];
  let stamp = 0;
  let decoder = null;
  const self = { kind: 'webcodecs', errors: 0 };
  let failures = 0; // since the last output
  const failed = () => {
    failures++;
    if (failures >= FAILS_BEFORE_WASM) onFailing();
  };
  const open = () => {
    const d = new AudioDecoder({
      output: (data) => {
        // Output timestamps may be rounded by a microsecond: match the nearest stamp.
        while (pending.length && pending[0].stamp < data.timestamp - STAMP_STEP / 2) pending.shift();
        const near = pending.length && Math.abs(pending[0].stamp - data.timestamp) < STAMP_STEP / 2;
        const meta = near ? pending.shift() : null;
        failures = 0;
        const samples = new Float32Array(data.numberOfFrames);
        data.copyTo(samples, { planeIndex: 0, format: 'f32-planar' });
        data.close();
        if (meta) onFrame({ ...meta.frame, samples });
      },
      error: () => {
        // The decoder is closed after an error; the next frame opens a new one.
        self.errors++;
        if (decoder === d) decoder = null;
        pending.length = 0;
        failed();
      },
    });
    decoder = d;
    d.configure(WEBCODECS_CONFIG);
  };
  self.decode = (frame, opus) => {
    stamp += STAMP_STEP;
    pending.push({ stamp, frame });
    // More than a second waiting means the decoder is stuck; start it again rather than queue.
    if (pending.length > 50) {
      self.reset();
      failed();
      return;
    }
    try {
      if (!decoder || decoder.state === 'closed') open();
      decoder.decode(new EncodedAudioChunk({ type: 'key', timestamp: stamp, data: opus }));
    } catch {
      // A decoder that throws instead of calling back: the same as an error.
      self.errors++;
      pending.length = 0;
      if (decoder && decoder.state !== 'closed') decoder.close();
      decoder = null;
      failed();
    }
  };
  self.reset = () => {
    pending.length = 0;
    if (decoder && decoder.state === 'configured') {
      decoder.reset();
      decoder.configure(WEBCODECS_CONFIG);
    }
  };
  self.close = () => {
    if (decoder && decoder.state !== 'closed') decoder.close();
  };
  return self;
}

// Chunk timestamps only pair outputs with their frames; a 20 ms step keeps them plausible.
const STAMP_STEP = 20000;
// Decoders in a row that fail before any output before the WASM decoder takes over: one
// failure may be a bad packet; three at 20 ms frames are 60 ms of nothing but errors.
const FAILS_BEFORE_WASM = 3;

let wasmLoading = null;
function loadWasmDecoder() {
  // The package ships a UMD bundle (the WASM inside); a classic script puts it on globalThis.
  wasmLoading ??= new Promise((resolve, reject) => {
    const s = document.createElement('script');
    s.src = WASM_DECODER.href;
    s.onload = () => resolve(globalThis['opus-decoder'].OpusDecoder);
    s.onerror = () => {
      wasmLoading = null;
      reject(new Error('the Opus decoder could not be loaded'));
    };
    document.head.append(s);
  });
  return wasmLoading;
}

async function wasmDecoder(onFrame) {
  const OpusDecoder = await loadWasmDecoder();
  const decoder = new OpusDecoder({ channels: 1, sampleRate: SAMPLE_RATE });
  await decoder.ready;
  const self = { kind: 'wasm', errors: 0 };
  self.decode = (frame, opus) => {
    const out = decoder.decodeFrame(opus);
    if (out.errors && out.errors.length) self.errors += out.errors.length;
    if (!out.samplesDecoded) return;
    // A copy: the decoder's output may be a view of its WASM memory, reused by the next call.
    onFrame({ ...frame, samples: out.channelData[0].slice(0, out.samplesDecoded) });
  };
  self.reset = () => {
    if (decoder.reset) decoder.reset();
  };
  self.close = () => decoder.free();
  return self;
}

// The main path's output: an AudioWorkletNode running the playout (worklet.js, added to the
// context before).
function workletSink(context, delayMs) {
  const node = new AudioWorkletNode(context, 'boothcast-playout', {
    numberOfInputs: 0,
    numberOfOutputs: 1,
    outputChannelCount: [1],
    processorOptions: { delayMs },
  });
  const sink = {
    kind: 'worklet',
    node,
    onReport: () => {},
    frame: (f) => node.port.postMessage({ type: 'frame', ...f }, [f.samples.buffer]),
    reset: () => node.port.postMessage({ type: 'reset' }),
    setDelay: (ms) => node.port.postMessage({ type: 'delay', ms }),
    // The worklet's output frames are the context's own (currentFrame).
    contextTime: (frame) => frame / SAMPLE_RATE,
    clock: () => null,
    close: () => {
      node.port.postMessage({ type: 'close' });
      node.disconnect();
    },
  };
  node.port.onmessage = (e) => sink.onReport(e.data);
  return sink;
}

// The floor under the channel on the main path: a playout node of its own (its own timeline on
// the same clock, currentFrame) behind a gain node of its own, into `output`. Its reports keep
// only the counters.
function workletLayer(context, output, delayMs, gain) {
  const sink = workletSink(context, delayMs);
  const level = context.createGain();
  level.gain.value = gain;
  sink.node.connect(level);
  level.connect(output);
  let counters = {};
  sink.onReport = ({ played: _played, ...rest }) => {
    counters = rest;
  };
  return {
    frame: sink.frame,
    reset: sink.reset,
    setDelay: sink.setDelay,
    setGain: (g) => level.gain.setTargetAtTime(g, context.currentTime, GAIN_RAMP),
    counters: () => counters,
    close: () => {
      sink.close();
      level.disconnect();
    },
  };
}

// The ScriptProcessor's output is placed by counting the samples written, not at
// round(playbackTime × 48000): Chromium and WebKit do not advance playbackTime by exactly one
// buffer per callback (it wobbles by a few to a few dozen samples around the true position),
// and following it skipped or repeated samples at buffer boundaries, a crackle at every
// callback. The context's clock is followed only when it really moves away from the count
// (callbacks were dropped while the page's thread was busy): then the count jumps forward to
// it, one discontinuity where the output had a gap anyway. The average difference between the
// two maps what was written to the context's time, for the delay figure.
//
// The floor under the channel (`layer`) is a second playout pulled in the same callback at the
// same position, into a buffer of its own, and added at its gain; a change of gain is ramped
// over one callback's buffer.
function scriptSink(context, delayMs) {
  const playout = new Playout({ delayMs });
  const node = context.createScriptProcessor(SCRIPT_BUFFER, 0, 1);
  const clock = { pos: null, offset: 0, resyncs: 0, wobble: 0 };
  const layers = new Set(); // at most one: the floor under the channel
  node.onaudioprocess = (e) => {
    const out = e.outputBuffer.getChannelData(0);
    const at = e.playbackTime * SAMPLE_RATE;
    if (clock.pos === null) {
      clock.pos = Math.round(at);
      clock.offset = 0;
    } else {
      const err = at - (clock.pos + clock.offset);
      clock.wobble = Math.max(Math.abs(err), clock.wobble * 0.999);
      if (err > RESYNC) {
        // Callbacks were dropped: the output moved on without us. Catch up with it.
        clock.pos += Math.round(err);
        clock.resyncs++;
      } else if (err < -RESYNC) {
        // The context's clock is behind the count (it was suspended, or restarted): the
        // mapping follows it; the sound stays continuous.
        clock.offset += err;
        clock.resyncs++;
      } else {
        clock.offset += err * SMOOTH;
      }
    }
    playout.pull(out, clock.pos);
    for (const l of layers) l.mix(out, clock.pos);
    clock.pos += out.length;
  };
  const sink = {
    kind: 'scriptprocessor',
    node,
    onReport: () => {},
    frame: (f) => playout.push(f),
    reset: () => playout.reset(),
    setDelay: (ms) => playout.setDelay(ms),
    // Context time in seconds of the playout's output frame `frame`.
    contextTime: (frame) => (frame + clock.offset) / SAMPLE_RATE,
    clock: () => ({ resyncs: clock.resyncs, wobbleSamples: Math.round(clock.wobble) }),
    layer: (ms, gain) => {
      const under = new Playout({ delayMs: ms });
      let buf = new Float32Array(SCRIPT_BUFFER);
      let now = gain;
      let target = gain;
      const l = {
        mix(out, pos) {
          if (buf.length !== out.length) buf = new Float32Array(out.length);
          under.pull(buf, pos);
          const n = out.length;
          for (let i = 0; i < n; i++) out[i] += buf[i] * (now + ((target - now) * i) / n);
          now = target;
        },
      };
      layers.add(l);
      return {
        frame: (f) => under.push(f),
        reset: () => under.reset(),
        setDelay: (d) => under.setDelay(d),
        setGain: (g) => {
          target = g;
        },
        counters: () => {
          const { played: _played, ...rest } = under.report();
          return rest;
        },
        close: () => layers.delete(l),
      };
    },
    close: () => {
      clearInterval(timer);
      node.disconnect();
    },
  };
  const timer = setInterval(() => sink.onReport(playout.report()), 100);
  return sink;
}
