// The AudioWorklet side of the main path: decoded frames arrive on the port, the playout places
// them on the output timeline; what was played is reported back ten times a second.
import { Playout } from './playout.js';

// Reports every 4800 output frames (100 ms): the page's delay display needs no more.
const REPORT_EVERY = 4800;

class PlayoutProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.playout = new Playout(options.processorOptions || {});
    this.sinceReport = 0;
    this.closed = false;
    this.port.onmessage = (e) => {
      const m = e.data;
      if (m.type === 'frame') this.playout.push(m);
      else if (m.type === 'reset') this.playout.reset();
      else if (m.type === 'delay') this.playout.setDelay(m.ms);
      else if (m.type === 'close') this.closed = true;
    };
  }

  process(_inputs, outputs) {
    // A node that was closed (the floor under the channel, turned off) stops being processed;
    // otherwise a node without inputs runs for as long as the context does.
    if (this.closed) return false;
    const out = outputs[0][0];
    this.playout.pull(out, currentFrame);
    this.sinceReport += out.length;
    if (this.sinceReport >= REPORT_EVERY) {
      this.sinceReport = 0;
      this.port.postMessage(this.playout.report());
    }
    return true;
  }
}

registerProcessor('boothcast-playout', PlayoutProcessor);
