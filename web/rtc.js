// WebRTC transport: one RTCPeerConnection per session, signalled by POST /offer (non-trickle ICE),
// a "control" data channel speaking the same JSON messages as the WebSocket protocol. With `watch` (a
// shared session's id) the peer only receives: the server sends that stream's already-encoded media.
// Each offer carries a random `offer_id`: closing the connection before its control channel opened (a
// Stop while starting) sends `DELETE /offer/{offer_id}`, so the server drops the pending session at once
// instead of after its connect timeout.

import { Connection } from "./connection.js";
import { withToken } from "./token.js";

export class RtcConnection extends Connection {
  constructor({ model, params, share, watch, mic, wantsAudio, wantsVideo, iceServers, graph, videoEl, audioEl }) {
    super();
    Object.assign(this, { model, params, share, watch, mic, wantsAudio, wantsVideo, iceServers, graph, videoEl, audioEl });
    this.pc = null;
    this.channel = null;
    this.session = null;
    this.offerId = randomId();
    this._opened = false; // the control channel opened: a `stop` message can end the session from now on
    this._lastStats = null;
  }

  async start() {
    const pc = (this.pc = new RTCPeerConnection({ iceServers: this.iceServers }));
    this.channel = pc.createDataChannel("control");
    this.channel.onopen = () => { this._opened = true; };
    this.channel.onmessage = (e) => this._emit("message", JSON.parse(e.data));
    this.channel.onclose = () => this._lost("the control channel closed");
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "failed" || pc.connectionState === "disconnected") {
        this._lost(`the connection ${pc.connectionState}`);
      }
    };
    pc.ontrack = (e) => this._onTrack(e);
    if (this.mic && !this.watch) {
      pc.addTransceiver(this.mic.stream.getAudioTracks()[0], {
        direction: this.wantsAudio ? "sendrecv" : "sendonly", streams: [this.mic.stream] });
    } else if (this.wantsAudio) {
      pc.addTransceiver("audio", { direction: "recvonly" });
    }
    if (this.wantsVideo) pc.addTransceiver("video", { direction: "recvonly" });
    await pc.setLocalDescription(await pc.createOffer());
    await gatheringComplete(pc);
    if (this._closed) throw cancelled();
    const response = await fetch(withToken("/offer"), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(this.watch
        ? { sdp: pc.localDescription.sdp, type: "offer", watch: this.watch, offer_id: this.offerId }
        : { sdp: pc.localDescription.sdp, type: "offer", model: this.model, params: this.params, share: Boolean(this.share),
          offer_id: this.offerId }),
    });
    const body = await response.json().catch(() => ({ code: "http", message: response.statusText }));
    if (this._closed) throw cancelled(); // stopped while the server answered (close() told it to drop the offer)
    if (!response.ok) {
      this.close();
      const err = new Error(body.message || `HTTP ${response.status}`);
      err.code = body.code || "http";
      throw err;
    }
    this.session = body.session;
    try {
      await pc.setRemoteDescription({ type: "answer", sdp: body.sdp });
    } catch (e) {
      if (this._closed) throw cancelled();
      throw e;
    }
  }

  _onTrack(e) {
    const stream = e.streams[0] || new MediaStream([e.track]);
    if (e.track.kind === "video") {
      this.videoEl.srcObject = new MediaStream([e.track]);
      this.videoEl.hidden = false;
      this.videoEl.play().catch(() => {});
    } else {
      // Chrome only feeds a remote stream to WebAudio while a media element plays it too.
      this.audioEl.srcObject = new MediaStream([e.track]);
      this.audioEl.play().catch(() => {});
      this.graph.connectOutput(this.graph.ctx.createMediaStreamSource(stream));
    }
  }

  send(message) {
    if (this.channel && this.channel.readyState === "open") this.channel.send(JSON.stringify(message));
  }

  async stats() {
    if (!this.pc) return {};
    const report = await this.pc.getStats();
    let bytes = 0, fps = null, pair = null, bufferMs = null;
    const candidates = {};
    report.forEach((s) => {
      if (s.type === "inbound-rtp") { bytes += s.bytesReceived || 0; if (s.kind === "video") fps = s.framesPerSecond ?? fps; }
      if (s.type === "inbound-rtp" && s.kind === "audio" && s.jitterBufferEmittedCount) {
        bufferMs = (1000 * s.jitterBufferDelay) / s.jitterBufferEmittedCount; // how long audio waits to be played
      }
      if (s.type === "local-candidate" || s.type === "remote-candidate") candidates[s.id] = s;
      if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s;
    });
    const now = performance.now();
    let kbps = null;
    if (this._lastStats) kbps = ((bytes - this._lastStats.bytes) * 8) / (now - this._lastStats.t);
    this._lastStats = { bytes, t: now };
    const selected = pair && {
      local: (candidates[pair.localCandidateId] || {}).address,
      remote: (candidates[pair.remoteCandidateId] || {}).address,
    };
    return { fps, kbps, selected, bufferMs };
  }

  close() {
    const wasClosed = this._closed;
    this._closed = true;
    if (!wasClosed && !this._opened) {
      // The session may be pending on the server (answered or not yet): tell it to drop the offer now.
      fetch(withToken(`/offer/${this.offerId}`), { method: "DELETE", keepalive: true }).catch(() => {});
    }
    if (this.channel) { this.channel.onclose = null; this.channel.onopen = null; }
    if (this.pc) { this.pc.onconnectionstatechange = null; this.pc.close(); }
    if (this.videoEl) { this.videoEl.srcObject = null; this.videoEl.hidden = true; }
    if (this.audioEl) { this.audioEl.srcObject = null; }
  }
}

function cancelled() {
  return Object.assign(new Error("cancelled"), { code: "cancelled" });
}

function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function gatheringComplete(pc, timeoutMs = 5000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") { pc.removeEventListener("icegatheringstatechange", done); resolve(); } };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, timeoutMs); // send what was gathered so far
  });
}
