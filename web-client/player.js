// Plays boothcast audio frames (docs/PROTOCOL.md section 6) in the browser.
//
// Main path: WebCodecs AudioDecoder → AudioWorklet (playout.js in worklet.js) → volume → out.
// Fallback path (no secure context, or `fallback: true`): opus-decoder (WASM) → the same playout
// on the page's thread behind a ScriptProcessorNode → volume → out.
// The player knows nothing of WebSockets: the page hands it each binary message as received.

import { Playout, SAMPLE_RATE } from './playout.js';

export const HEADER_LEN = 28;
const WASM_DECODER = new URL('./node_modules/opus-decoder/dist/opus-decoder.min.js', import.meta.url);
const WEBCODECS_CONFIG = { codec: 'opus', sampleRate: SAMPLE_RATE, numberOfChannels: 1 };
// 512 samples (10.7 ms) per ScriptProcessor callback: smaller ones miss their turn whenever the
// page's thread is busy; larger ones add their length to the delay.
const SCRIPT_BUFFER = 512;
// Delay figures kept for stats() and the benchmarks: the last 10 s of 20 ms frames.
const KEEP_DELAYS = 500;

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
    const sink = useWorklet ? await workletSink(context, delayMs) : scriptSink(context, delayMs);
    sink.node.connect(volume);
    const decoder = useWebCodecs ? webCodecsDecoder(sink.frame) : await wasmDecoder(sink.frame);
    return new Player({
      context,
      volume,
      sink,
      decoder,
      path: useWorklet && useWebCodecs ? 'webcodecs' : 'fallback',
    });
  } catch (e) {
    context.close();
    throw e;
  }
}

class Player {
  constructor({ context, volume, sink, decoder, path }) {
    this.context = context;
    this.output = volume;
    this.path = path;
    this.decoderKind = decoder.kind;
    this.outputKind = sink.kind;
    this.sink = sink;
    this.decoder = decoder;
    this.local = []; // ms from a frame's arrival at the page to its sound at the output
    this.relay = []; // ms from the relay's stamp to the sound (meaningful with synced clocks)
    this.last = { underruns: 0, concealed: 0, lost: 0, skipped: 0, late: 0, marginMs: 0, bufferedMs: 0 };
    sink.onReport = (r) => this.onReport(r);
  }

  push(buffer) {
    const h = parseHeader(buffer);
    if (!h) return;
    this.decoder.decode(
      { seq: h.seq, channel: h.channel, relayUs: h.relayUs, arrivalMs: performance.now() },
      new Uint8Array(buffer, HEADER_LEN),
    );
  }

  reset() {
    this.decoder.reset();
    this.sink.reset();
  }

  setVolume(v) {
    const g = Math.min(1, Math.max(0, Number(v) || 0));
    // A short ramp: a jump of the gain would click.
    this.output.gain.setTargetAtTime(g, this.context.currentTime, 0.015);
  }

  setDelay(ms) {
    this.sink.setDelay(ms);
  }

  onReport(r) {
    const { played, ...rest } = r;
    this.last = rest;
    if (!played.length) return;
    const toPerf = this.outputClock();
    for (const [relayUs, arrivalMs, frame] of played) {
      const audible = toPerf(frame / SAMPLE_RATE);
      this.local.push(audible - arrivalMs);
      this.relay.push(performance.timeOrigin + audible - relayUs / 1000);
    }
    if (this.local.length > KEEP_DELAYS) this.local.splice(0, this.local.length - KEEP_DELAYS);
    if (this.relay.length > KEEP_DELAYS) this.relay.splice(0, this.relay.length - KEEP_DELAYS);
  }

  // Maps a time on the audio context's clock to when it is heard, on the performance.now() clock.
  outputClock() {
    const ts = this.context.getOutputTimestamp ? this.context.getOutputTimestamp() : null;
    if (ts && ts.performanceTime > 0) {
      return (t) => ts.performanceTime + (t - ts.contextTime) * 1000;
    }
    const now = performance.now();
    const ctx = this.context.currentTime;
    const out = (this.context.outputLatency || 0) + (this.context.baseLatency || 0);
    return (t) => now + (t - ctx + out) * 1000;
  }

  // The figures of the last second (50 frames of 20 ms) and the counters since the start.
  stats() {
    return {
      delayMs: median(this.local.slice(-50)),
      relayDelayMs: median(this.relay.slice(-50)),
      underruns: this.last.underruns,
      concealed: this.last.concealed,
      lost: this.last.lost,
      skipped: this.last.skipped,
      late: this.last.late,
      marginMs: this.last.marginMs,
      bufferedMs: this.last.bufferedMs,
      outputLatencyMs: 1000 * ((this.context.outputLatency || 0) + (this.context.baseLatency || 0)),
      decodeErrors: this.decoder.errors,
      path: this.path,
      decoder: this.decoderKind,
      output: this.outputKind,
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
    this.decoder.close();
    this.sink.close();
    await this.context.close();
  }
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
// details by the timestamp given to the chunk.
function webCodecsDecoder(onFrame) {
  const pending = [];
  let stamp = 0;
  let decoder = null;
  const self = { kind: 'webcodecs', errors: 0 };
  const open = () => {
    decoder = new AudioDecoder({
      output: (data) => {
        // Output timestamps may be rounded by a microsecond: match the nearest stamp.
        while (pending.length && pending[0].stamp < data.timestamp - STAMP_STEP / 2) pending.shift();
        const near = pending.length && Math.abs(pending[0].stamp - data.timestamp) < STAMP_STEP / 2;
        const meta = near ? pending.shift() : null;
        const samples = new Float32Array(data.numberOfFrames);
        data.copyTo(samples, { planeIndex: 0, format: 'f32-planar' });
        data.close();
        if (meta) onFrame({ ...meta.frame, samples });
      },
      error: () => {
        // The decoder is closed after an error; the next frame opens a new one.
        self.errors++;
        decoder = null;
        pending.length = 0;
      },
    });
    decoder.configure(WEBCODECS_CONFIG);
  };
  self.decode = (frame, opus) => {
    if (!decoder || decoder.state === 'closed') open();
    stamp += STAMP_STEP;
    pending.push({ stamp, frame });
    // More than a second waiting means the decoder is stuck; start it again rather than queue.
    if (pending.length > 50) {
      self.reset();
      return;
    }
    decoder.decode(new EncodedAudioChunk({ type: 'key', timestamp: stamp, data: opus }));
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

async function workletSink(context, delayMs) {
  await context.audioWorklet.addModule(new URL('./worklet.js', import.meta.url));
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
    close: () => node.disconnect(),
  };
  node.port.onmessage = (e) => sink.onReport(e.data);
  return sink;
}

function scriptSink(context, delayMs) {
  const playout = new Playout({ delayMs });
  const node = context.createScriptProcessor(SCRIPT_BUFFER, 0, 1);
  node.onaudioprocess = (e) => {
    playout.pull(e.outputBuffer.getChannelData(0), Math.round(e.playbackTime * SAMPLE_RATE));
  };
  const sink = {
    kind: 'scriptprocessor',
    node,
    onReport: () => {},
    frame: (f) => playout.push(f),
    reset: () => playout.reset(),
    setDelay: (ms) => playout.setDelay(ms),
    close: () => {
      clearInterval(timer);
      node.disconnect();
    },
  };
  const timer = setInterval(() => sink.onReport(playout.report()), 100);
  return sink;
}
