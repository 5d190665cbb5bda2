// AudioWorklet processors (run on the audio thread): microphone capture, playback of decoded audio for
// the WebSocket transport, and a tap that records its inputs (test hooks, latency bench, level meter).

const FRAME = 960; // capture is forwarded in 20 ms blocks at 48 kHz (any rate: ~20 ms)

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = Math.round(sampleRate * 0.02) || FRAME;
    this.buf = new Float32Array(this.block);
    this.fill = 0;
  }
  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (!ch) return true;
    let i = 0;
    while (i < ch.length) {
      const n = Math.min(ch.length - i, this.block - this.fill);
      this.buf.set(ch.subarray(i, i + n), this.fill);
      this.fill += n; i += n;
      if (this.fill === this.block) {
        this.port.postMessage(this.buf.slice(0));
        this.fill = 0;
      }
    }
    return true;
  }
}

// Plays pushed Float32 chunks (already at the context rate) from a ring buffer. Starts once `prebuffer`
// samples are queued; an empty buffer plays silence and is counted, then waits for the prebuffer again.
class PlayerProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.ring = new Float32Array(sampleRate * 4);
    this.read = 0; this.write = 0; this.count = 0;
    this.prebuffer = Math.round(sampleRate * (opts.prebufferMs || 20) / 1000);
    this.maxBuffer = Math.round(sampleRate * (opts.maxBufferMs || 300) / 1000);
    this.playing = false;
    this.underruns = 0;
    // Latency trim (as the server's pacer): the smallest backlog over ~1 s beyond the prebuffer is
    // audio that could have played earlier; drop it so one hiccup does not add latency for good.
    this.windowMin = Infinity; this.windowFrames = 0; this.trimmed = 0;
    this.port.onmessage = (e) => this.push(e.data);
  }
  push(chunk) {
    if (this.count + chunk.length > this.maxBuffer) { // far behind: drop the oldest (latency stays bounded)
      const drop = this.count + chunk.length - this.maxBuffer;
      this.read = (this.read + drop) % this.ring.length; this.count -= drop;
    }
    for (let i = 0; i < chunk.length; i++) {
      this.ring[this.write] = chunk[i];
      this.write = (this.write + 1) % this.ring.length;
    }
    this.count += chunk.length;
  }
  process(_inputs, outputs) {
    const out = outputs[0][0];
    if (!this.playing && this.count >= this.prebuffer) this.playing = true;
    if (!this.playing) { out.fill(0); return true; }
    for (let i = 0; i < out.length; i++) {
      if (this.count > 0) {
        out[i] = this.ring[this.read];
        this.read = (this.read + 1) % this.ring.length; this.count--;
      } else {
        out[i] = 0;
      }
    }
    if (this.count === 0) {
      this.playing = false; this.underruns++;
      this.port.postMessage({ underruns: this.underruns });
    }
    this.windowMin = Math.min(this.windowMin, this.count);
    this.windowFrames += out.length;
    if (this.windowFrames >= sampleRate) {
      const excess = this.windowMin - this.prebuffer;
      if (excess > sampleRate * 0.01) {
        this.read = (this.read + excess) % this.ring.length; this.count -= excess; this.trimmed += excess;
      }
      this.windowMin = Infinity; this.windowFrames = 0;
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    return true;
  }
}

// Records input 0 and input 1 sample-aligned while asked to; reports the peak level of both (input 0: the
// microphone meter, input 1: what is heard).
class TapProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.remaining = 0; this.parts = [[], []]; this.peak = 0; this.inputPeak = 0; this.frames = 0;
    this.port.onmessage = (e) => {
      if (e.data.record) { this.remaining = Math.round(e.data.record * sampleRate); this.parts = [[], []]; }
    };
  }
  process(inputs) {
    const a = (inputs[0] && inputs[0][0]) || new Float32Array(128);
    const b = (inputs[1] && inputs[1][0]) || new Float32Array(128);
    for (let i = 0; i < b.length; i++) this.peak = Math.max(this.peak, Math.abs(b[i]));
    for (let i = 0; i < a.length; i++) this.inputPeak = Math.max(this.inputPeak, Math.abs(a[i]));
    if (++this.frames % 16 === 0) {
      this.port.postMessage({ level: this.peak, inputLevel: this.inputPeak });
      this.peak = 0; this.inputPeak = 0;
    }
    if (this.remaining > 0) {
      this.parts[0].push(a.slice(0)); this.parts[1].push(b.slice(0));
      this.remaining -= a.length;
      if (this.remaining <= 0) {
        this.port.postMessage({ recorded: this.parts.map(join), rate: sampleRate });
        this.parts = [[], []];
      }
    }
    return true;
  }
}

function join(parts) {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}

registerProcessor("capture", CaptureProcessor);
registerProcessor("player", PlayerProcessor);
registerProcessor("tap", TapProcessor);
