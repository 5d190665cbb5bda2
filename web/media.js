// The page's WebAudio graph: microphone (or a synthetic source), a recording tap, output level.
// Both transports feed it, so recording, the level meter and the latency bench work the same on each.

export class AudioGraph {
  static async create() {
    const ctx = new AudioContext({ latencyHint: "interactive", sampleRate: 48000 });
    await ctx.audioWorklet.addModule("/web/worklets.js");
    if (ctx.state !== "running") await ctx.resume().catch(() => {});
    return new AudioGraph(ctx);
  }

  constructor(ctx) {
    this.ctx = ctx;
    this.tap = new AudioWorkletNode(ctx, "tap", { numberOfInputs: 2, numberOfOutputs: 1, outputChannelCount: [1] });
    const sink = ctx.createGain();
    sink.gain.value = 0; // the tap must be pulled by the destination, but is not heard
    this.tap.connect(sink).connect(ctx.destination);
    this.onLevel = null;
    this._pending = null;
    this.tap.port.onmessage = (e) => {
      if (e.data.level !== undefined && this.onLevel) this.onLevel(e.data.level, e.data.inputLevel);
      if (e.data.recorded && this._pending) { this._pending(e.data); this._pending = null; }
    };
  }

  /** Record the input (mic) and output (what came back) for `seconds`, sample-aligned. */
  record(seconds) {
    return new Promise((resolve) => {
      this._pending = resolve;
      this.tap.port.postMessage({ record: seconds });
    });
  }

  connectInput(node) { node.connect(this.tap, 0, 0); }
  connectOutput(node) { node.connect(this.tap, 0, 1); }

  async close() { await this.ctx.close().catch(() => {}); }
}

/** Open the microphone, or play `synthetic` samples (Float32Array at the context rate) as one.
 *
 * `echoCancellation`: the browser's echo canceller (with its noise suppression) on the microphone. On where
 * the page's own output may come back from a loudspeaker (the avatar listens and can be interrupted); off
 * for voice conversion, which must hear the voice as it is, and for headphone users. */
export async function openMic(graph, synthetic, { echoCancellation = false } = {}) {
  const ctx = graph.ctx;
  if (synthetic) {
    const buffer = ctx.createBuffer(1, synthetic.length, ctx.sampleRate);
    buffer.copyToChannel(synthetic, 0);
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    const dest = ctx.createMediaStreamDestination();
    source.connect(dest);
    graph.connectInput(source);
    source.start();
    return { stream: dest.stream, node: source, settings: { echoCancellation, synthetic: true }, stop: () => source.stop() };
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation, noiseSuppression: echoCancellation, autoGainControl: false, channelCount: 1 },
    });
  } catch (e) {
    const err = new Error(
      e.name === "NotAllowedError" || e.name === "SecurityError"
        ? "Microphone permission was denied. Allow the microphone for this site and press Start again."
        : `No microphone available (${e.name}: ${e.message}).`);
    err.code = "mic_denied";
    throw err;
  }
  const node = ctx.createMediaStreamSource(stream);
  graph.connectInput(node);
  const settings = stream.getAudioTracks()[0].getSettings();
  return { stream, node, settings, stop: () => stream.getTracks().forEach((t) => t.stop()) };
}

/** Markers for the latency bench: a 4 ms burst every `periodS` after 0.5 s, burst k at 1, 2 or 3 kHz (its id, k % 3;
 * as streaming/media/markers.py, which matches markers by id). */
const MARKER_HZ = [1000, 2000, 3000];
export function markerTrain(rate, count, periodS) {
  const n = Math.round(rate * 0.004);
  const out = new Float32Array(Math.round(rate * (0.5 + count * periodS + 0.5)));
  for (let k = 0; k < count; k++) {
    const start = Math.round(rate * (0.5 + k * periodS));
    for (let i = 0; i < n; i++) {
      const hann = 0.5 - 0.5 * Math.cos((2 * Math.PI * i) / (n - 1));
      out[start + i] += 0.5 * hann * Math.sin((2 * Math.PI * MARKER_HZ[k % 3] * i) / rate);
    }
  }
  return out;
}

export function toBase64Pcm16(samples) {
  const pcm = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) pcm[i] = Math.max(-1, Math.min(1, samples[i])) * 32767;
  const bytes = new Uint8Array(pcm.buffer);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

/** The frame a <video> shows or a canvas holds, as ImageData; null before the first frame (a canvas says it
 * has one with data-drawn). */
export function grabFrame(source) {
  if (source instanceof HTMLCanvasElement) {
    if (!source.width || !source.height || !source.dataset.drawn) return null;
    return source.getContext("2d").getImageData(0, 0, source.width, source.height);
  }
  const w = source.videoWidth, h = source.videoHeight;
  if (!w || !h) return null;
  const canvas = (grabFrame.canvas ||= document.createElement("canvas"));
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(source, 0, 0, w, h);
  return ctx.getImageData(0, 0, w, h);
}
