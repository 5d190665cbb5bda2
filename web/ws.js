// WebSocket transport: the causalcast protocol (JSON control + 16-byte-header binary media) with
// microphone PCM16 up, Opus/VP8 down decoded by WebCodecs (PCM16/JPEG where WebCodecs is missing).
// With `watch` (a shared session's id) it watches that stream instead of starting a session.

import { Connection } from "./connection.js";
import { withToken } from "./token.js";

const HEADER_BYTES = 16;
const KIND_AUDIO = 1, KIND_VIDEO = 2;
const CODEC_PCM16 = 1;
const FLAG_KEY = 1;

export class WsConnection extends Connection {
  constructor({ model, params, share, watch, mic, wantsAudio, wantsVideo, graph, canvas }) {
    super();
    Object.assign(this, { model, params, share, watch, mic, wantsAudio, wantsVideo, graph, canvas });
    this.ws = null;
    this.session = null;
    this._seq = 0;
    this._pts = 0;
    this._bytes = 0;
    this._frames = 0;
    this._last = { t: performance.now(), bytes: 0, frames: 0 };
    this.underruns = 0;
  }

  async start() {
    const url = withToken(`${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`);
    const ws = (this.ws = new WebSocket(url));
    ws.binaryType = "arraybuffer";
    await new Promise((resolve, reject) => {
      this._abort = reject; // close() while starting ends the wait (the server drops the session on disconnect)
      ws.onopen = resolve;
      ws.onerror = () => reject(Object.assign(new Error("cannot reach the server's WebSocket"), { code: "network" }));
    });
    const audio = await pickAudioCodec();
    const video = typeof VideoDecoder !== "undefined" ? "vp8" : "jpeg";
    const start = this.watch
      ? { type: "watch", session: this.watch, output: { audio, video } }
      : { type: "start", protocol: 1, model: this.model, params: this.params, output: { audio, video }, share: Boolean(this.share) };
    if (this.mic && !this.watch) start.input = { sample_rate_hz: this.graph.ctx.sampleRate, codec: "pcm16" };
    const first = this.watch ? "watching" : "ready";
    const ready = await new Promise((resolve, reject) => {
      this._abort = reject;
      ws.onmessage = (e) => {
        if (typeof e.data !== "string") return;
        const message = JSON.parse(e.data);
        if (message.type === first) resolve(message);
        else if (message.type === "error") reject(Object.assign(new Error(message.message), { code: message.code }));
      };
      ws.onclose = () => reject(Object.assign(new Error("the server closed the connection"), { code: "network" }));
      ws.send(JSON.stringify(start));
    });
    this._abort = null;
    this.session = ready.session;
    this._emit("message", ready);
    this._setupOutputs(ready.streams);
    ws.onmessage = (e) => this._onMessage(e.data);
    ws.onclose = () => this._lost("the WebSocket closed");
    if (this.mic && !this.watch) this._setupCapture();
  }

  _setupOutputs(streams) {
    const ctx = this.graph.ctx;
    this.decoders = {};
    for (const s of streams) {
      if (s.kind === "audio") {
        this.player = new AudioWorkletNode(ctx, "player", { processorOptions: { prebufferMs: 20 } });
        this.player.port.onmessage = (e) => { this.underruns = e.data.underruns; };
        this.player.connect(ctx.destination);
        this.graph.connectOutput(this.player);
        this.decoders[s.id] = s.codec === "opus" ? this._opusDecoder() : this._pcmDecoder(s.sample_rate_hz);
      } else if (s.kind === "video") {
        this.canvas.width = s.width; this.canvas.height = s.height; this.canvas.hidden = false;
        delete this.canvas.dataset.drawn; // blank until the first decoded frame (a key frame) is drawn
        this.decoders[s.id] = s.codec === "jpeg" ? this._jpegDecoder() : this._videoDecoder(s.codec);
      }
    }
  }

  _opusDecoder() {
    const decoder = new AudioDecoder({
      output: (data) => {
        const pcm = new Float32Array(data.numberOfFrames);
        data.copyTo(pcm, { planeIndex: 0, format: "f32-planar" });
        this.player.port.postMessage(resample(pcm, data.sampleRate, this.graph.ctx.sampleRate));
        data.close();
      },
      error: (e) => this._emit("message", { type: "error", code: "decode", message: String(e) }),
    });
    decoder.configure({ codec: "opus", sampleRate: 48000, numberOfChannels: 1 });
    return (frame) => decoder.decode(new EncodedAudioChunk({ type: "key", timestamp: frame.pts, data: frame.payload }));
  }

  _pcmDecoder(rate) {
    return (frame) => {
      const pcm = new Int16Array(frame.payload.buffer, frame.payload.byteOffset, frame.payload.byteLength / 2);
      const f = Float32Array.from(pcm, (v) => v / 32768);
      this.player.port.postMessage(resample(f, rate, this.graph.ctx.sampleRate));
    };
  }

  _videoDecoder(codec) {
    const draw = this.canvas.getContext("2d");
    const decoder = new VideoDecoder({
      output: (frame) => { draw.drawImage(frame, 0, 0); frame.close(); this._drew(); },
      error: (e) => this._emit("message", { type: "error", code: "decode", message: String(e) }),
    });
    decoder.configure({ codec: codec === "h264" ? "avc1.42E01F" : "vp8", optimizeForLatency: true });
    let sawKey = false;
    return (frame) => {
      const key = (frame.flags & FLAG_KEY) !== 0;
      if (!sawKey && !key) { this.send({ type: "request_keyframe" }); return; }
      sawKey = true;
      decoder.decode(new EncodedVideoChunk({ type: key ? "key" : "delta", timestamp: frame.pts, data: frame.payload }));
    };
  }

  _jpegDecoder() {
    const draw = this.canvas.getContext("2d");
    return async (frame) => {
      const bitmap = await createImageBitmap(new Blob([frame.payload], { type: "image/jpeg" }));
      draw.drawImage(bitmap, 0, 0); bitmap.close(); this._drew();
    };
  }

  _drew() {
    this._frames++;
    this.canvas.dataset.drawn = "1";
  }

  _setupCapture() {
    const ctx = this.graph.ctx;
    this.capture = new AudioWorkletNode(ctx, "capture");
    const sink = ctx.createGain();
    sink.gain.value = 0;
    this.mic.node.connect(this.capture);
    this.capture.connect(sink).connect(ctx.destination);
    this.capture.port.onmessage = (e) => this._sendAudio(e.data);
  }

  _sendAudio(samples) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    const buf = new ArrayBuffer(HEADER_BYTES + samples.length * 2);
    const view = new DataView(buf);
    view.setUint8(0, KIND_AUDIO); view.setUint8(1, CODEC_PCM16); view.setUint8(2, 0); view.setUint8(3, 0);
    view.setUint32(4, this._seq++ >>> 0);
    view.setBigUint64(8, BigInt(this._pts));
    for (let i = 0; i < samples.length; i++) {
      view.setInt16(HEADER_BYTES + 2 * i, Math.max(-1, Math.min(1, samples[i])) * 32767, true);
    }
    this._pts += samples.length;
    this.ws.send(buf);
  }

  _onMessage(data) {
    if (typeof data === "string") { this._emit("message", JSON.parse(data)); return; }
    this._bytes += data.byteLength;
    const view = new DataView(data);
    const frame = {
      kind: view.getUint8(0), codec: view.getUint8(1), stream: view.getUint8(2), flags: view.getUint8(3),
      pts: Number(view.getBigUint64(8)), payload: new Uint8Array(data, HEADER_BYTES),
    };
    const decode = this.decoders && this.decoders[frame.stream];
    if (decode && (frame.kind === KIND_AUDIO || frame.kind === KIND_VIDEO)) decode(frame);
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  async stats() {
    const now = performance.now();
    const dt = (now - this._last.t) / 1000;
    const out = {
      kbps: ((this._bytes - this._last.bytes) * 8) / 1000 / dt,
      fps: this.canvas.hidden ? null : (this._frames - this._last.frames) / dt,
      bufferMs: this.player ? 20 : null, // the player's prebuffer
    };
    this._last = { t: now, bytes: this._bytes, frames: this._frames };
    return out;
  }

  close() {
    this._closed = true;
    if (this.ws) { this.ws.onclose = null; this.ws.close(); }
    if (this.player) this.player.disconnect();
    if (this.capture) this.capture.disconnect();
    this.canvas.hidden = true;
    delete this.canvas.dataset.drawn;
    if (this._abort) { this._abort(Object.assign(new Error("cancelled"), { code: "cancelled" })); this._abort = null; }
  }
}

async function pickAudioCodec() {
  if (typeof AudioDecoder === "undefined") return "pcm16";
  try {
    const { supported } = await AudioDecoder.isConfigSupported({ codec: "opus", sampleRate: 48000, numberOfChannels: 1 });
    return supported ? "opus" : "pcm16";
  } catch {
    return "pcm16";
  }
}

/** Linear-interpolation resampling (only used when a stream's rate differs from the context's). */
function resample(samples, from, to) {
  if (from === to) return samples;
  const n = Math.floor((samples.length * to) / from);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const x = (i * from) / to, j = Math.floor(x), f = x - j;
    out[i] = samples[j] * (1 - f) + (samples[Math.min(j + 1, samples.length - 1)] || 0) * f;
  }
  return out;
}
