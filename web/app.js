// The causalcast page: four modes (tabs), a transport selector, live stats, clear errors, reconnect.
// Models come from /healthz: those not implemented or not loaded show as unavailable, never as broken
// buttons. The Video tab can share its stream, watch streams others share, and keeps a timeline of
// prompt switches; the Avatar tab sends the agent's speech (text or a WAV). `window.causalcast`
// exposes a small API the browser tests and the latency bench drive.

import { decodeAudioFile, isNoTtsError, SAY_RATE_HZ, sayAudioMessages } from "./avatar.js";
import { AudioGraph, grabFrame, markerTrain, openMic, toBase64Pcm16 } from "./media.js";
import { RtcConnection } from "./rtc.js";
import { StreamsList, Timeline } from "./shared.js";
import { recordReference, referenceFromFile, setReferenceMessages, voiceLabel } from "./voice.js";
import { WsConnection } from "./ws.js";

const MODES = {
  voice: { help: "Talk into your microphone; your voice comes back converted to the target voice.", models: ["vc", "pitch"] },
  speak: { help: "Type text and hear it spoken as it is generated.", models: ["tts"] },
  avatar: { help: "Talk with a talking-head avatar: your microphone in, its face and voice out. Make it say something by text or with a WAV of the agent's voice.", models: ["avatar"] },
  video: { help: "Type a prompt and watch the stream; type a new prompt any time and see it switch. Share it, or watch a stream someone else shares.", models: ["video", "testcard"] },
};
const PITCH_VOICES = [["higher (+4 semitones)", 4], ["much higher (+7)", 7], ["deeper (−4)", -4], ["much deeper (−7)", -7], ["unchanged (0)", 0]];
const MAX_RETRIES = 3;
const OWN_VOICE = "__reference__"; // the Voice tab's option for the user's own clip (vc)

const $ = (id) => document.getElementById(id);
const state = {
  mode: "voice", models: {}, iceServers: [], conn: null, graph: null, mic: null, running: false,
  watching: null, // the shared session this page watches (null: it runs its own, or nothing)
  startOptions: {}, retries: 0, retryTimer: null, statsTimer: null, synthetic: null,
  log: [], errors: [], last: {}, notices: [],
  reference: null, // the user's own target-voice clip for vc: {name, seconds, wav (base64)}
};
let streams = null;
let timeline = null;

// -- start-up ------------------------------------------------------------------------------------------
async function init() {
  streams = new StreamsList($("streams"), (s) => watch(s.session, s.model));
  timeline = new Timeline($("timeline"));
  timeline.reset(null);
  try {
    const [health, config] = await Promise.all([getJson("/healthz"), getJson("/config")]);
    for (const m of health.models) state.models[m.name] = m;
    state.iceServers = config.ice_servers || [];
    const loaded = health.models.filter((m) => m.status === "loaded").map((m) => m.name);
    $("server-status").textContent = `server ${health.status} · ${health.device} · models: ${loaded.join(", ") || "none"}`;
  } catch (e) {
    $("server-status").textContent = "server unreachable";
    showMessage(`Cannot reach the server (${e.message}). Is \`make serve\` running?`, true);
  }
  for (const tab of document.querySelectorAll("#tabs button")) {
    tab.classList.toggle("unavailable", !modelsFor(tab.dataset.mode).some((m) => m.status === "loaded"));
    tab.addEventListener("click", () => selectMode(tab.dataset.mode));
  }
  $("start").addEventListener("click", () => start());
  $("stop").addEventListener("click", () => stop("stopped"));
  $("reconnect").addEventListener("click", () => start(state.startOptions));
  $("model").addEventListener("change", () => renderModel());
  $("voice").addEventListener("change", () => {
    if (state.running && currentModel() === "pitch") send({ type: "set_pitch", semitones: Number($("voice").value) });
    if (state.running && currentModel() === "vc") sendVoice();
  });
  $("vc-steps").addEventListener("change", () => {
    if (state.running && currentModel() === "vc") send({ type: "set_steps", steps: Number($("vc-steps").value) });
  });
  $("ref-file").addEventListener("change", () => useReference(() => referenceFromFile($("ref-file").files[0])));
  $("ref-record").addEventListener("click", () => useReference(() => recordReference(6)));
  $("say").addEventListener("click", () => say());
  $("switch").addEventListener("click", () => switchPrompt());
  $("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter") switchPrompt(); });
  $("avatar-say").addEventListener("click", () => avatarSayText());
  $("agent-audio").addEventListener("change", () => avatarSayFile());
  selectMode("voice");
}

async function getJson(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

function modelsFor(mode) {
  const names = new Set(MODES[mode].models);
  for (const m of Object.values(state.models)) if (classify(m) === mode) names.add(m.name);
  return [...names].map((n) => state.models[n] || { name: n, status: "unavailable", description: "" });
}

/** A loaded model not named in MODES goes to the tab its stream spec fits. */
function classify(m) {
  if (m.status !== "loaded") return null;
  if ((m.events || []).includes("text")) return "speak";
  if (m.input_audio && m.output_video) return "avatar";
  if (m.input_audio) return "voice";
  if (m.output_video) return "video";
  return null;
}

// -- UI state ------------------------------------------------------------------------------------------
function selectMode(mode) {
  if (state.running && mode !== state.mode) stop("switched tab");
  state.mode = mode;
  for (const tab of document.querySelectorAll("#tabs button")) tab.setAttribute("aria-selected", String(tab.dataset.mode === mode));
  $("mode-help").textContent = MODES[mode].help;
  for (const row of document.querySelectorAll("[data-for]")) row.hidden = row.dataset.for !== mode;
  showModelRows();
  const select = $("model");
  select.innerHTML = "";
  for (const m of modelsFor(mode)) {
    const opt = new Option(`${m.name}${m.status === "loaded" ? "" : ` (${m.status === "available" ? "not loaded" : "unavailable"})`}`, m.name);
    opt.disabled = m.status !== "loaded";
    opt.title = m.description || "";
    select.add(opt);
  }
  const firstLoaded = modelsFor(mode).find((m) => m.status === "loaded");
  if (firstLoaded) select.value = firstLoaded.name;
  else select.selectedIndex = 0; // show the unavailable model's name rather than an empty box
  if (mode === "video") streams.start(); else streams.stop();
  renderModel();
}

function currentModel() {
  const info = state.models[$("model").value];
  return info && info.status === "loaded" ? info.name : null;
}

function renderModel() {
  const name = currentModel();
  const info = name ? state.models[name] : null;
  $("start").disabled = !info || state.running;
  $("text").disabled = !info;
  $("prompt").disabled = !info;
  if (!info) {
    const names = MODES[state.mode].models.join(", ");
    $("model-note").textContent = `This mode is unavailable: no model for it is loaded on this server (${names} not implemented yet).`;
  } else {
    $("model-note").textContent = info.description || "";
  }
  const voice = $("voice");
  voice.innerHTML = "";
  const voices = name === "pitch" ? PITCH_VOICES
    : (info && info.voices ? info.voices.map((v) => [voiceLabel(v), typeof v === "object" ? v.id : v]) : [["default", ""]]);
  for (const [label, value] of voices) voice.add(new Option(label, value));
  if (name === "vc" && state.reference) voice.add(ownVoiceOption(), 0);
  voice.selectedIndex = 0;
  showModelRows();
  const examples = $("prompt-examples");
  examples.replaceChildren(...((info && info.example_prompts) || []).map((p) => new Option(p)));
  if (info && info.example_prompts && info.example_prompts.length && !state.running) $("prompt").value = info.example_prompts[0];
  $("say-note").textContent = ""; // said when a `say` with text is refused (the avatar has no tts model)
  setRunning(state.running);
}

/** Rows for one model only (`data-model`): the vc reference upload and steps. */
function showModelRows() {
  const name = currentModel();
  for (const el of document.querySelectorAll("[data-model]")) {
    el.hidden = el.dataset.model !== name || (el.dataset.for && el.dataset.for !== state.mode);
  }
}

function ownVoiceOption() {
  const r = state.reference;
  return new Option(`your clip: ${r.name} (${r.seconds.toFixed(1)} s)`, OWN_VOICE);
}

/** Load the user's own target voice (upload or recording), select it, and use it now if streaming. */
async function useReference(load) {
  $("ref-note").textContent = "reading the clip…";
  try {
    state.reference = await load();
  } catch (e) {
    $("ref-note").textContent = "";
    showMessage(`Could not use that clip: ${e.message}`, true);
    return;
  }
  $("ref-file").value = ""; // the same file can be chosen again
  const voice = $("voice");
  for (const opt of [...voice.options]) if (opt.value === OWN_VOICE) opt.remove();
  voice.add(ownVoiceOption(), 0);
  voice.value = OWN_VOICE;
  $("ref-note").textContent = `${state.reference.name}: ${state.reference.seconds.toFixed(1)} s`;
  logLine(`reference: ${state.reference.name} (${state.reference.seconds.toFixed(1)} s)`);
  if (state.running && currentModel() === "vc") sendVoice();
}

/** Switch the running vc session to the selected target voice (a shipped one, or the user's clip). */
function sendVoice() {
  const value = $("voice").value;
  if (value !== OWN_VOICE) send({ type: "set_reference", voice: value });
  else if (state.reference) for (const message of setReferenceMessages(state.reference.wav)) send(message);
  logLine(`voice: ${value === OWN_VOICE ? state.reference.name : value}`);
}

function setRunning(running) {
  state.running = running;
  const loaded = Boolean(currentModel());
  const producing = running && !state.watching;
  $("start").disabled = running || !loaded;
  $("stop").disabled = !running;
  $("say").disabled = !producing;
  $("switch").disabled = !producing;
  $("prompt").disabled = Boolean(state.watching) || !loaded;
  $("avatar-say").disabled = !producing;
  $("agent-audio").disabled = !producing;
  $("transport").disabled = running;
  $("share").disabled = running;
  $("use-mic").disabled = running;
  streams.busy = running;
  streams.render();
  const what = state.watching ? `watching ${state.watching}` : "streaming";
  $("stat-state").textContent = running ? `${what} (${$("transport").value})` : "idle";
  if (!running) $("share-status").textContent = "";
}

function showMessage(text, isError = false) {
  const box = $("message");
  box.hidden = !text;
  box.textContent = text || "";
  box.classList.toggle("error", isError);
  if (isError && text) state.errors.push(text);
}

function logLine(text) {
  state.log.push(text);
  const li = document.createElement("li");
  li.textContent = text;
  $("log").prepend(li);
  while ($("log").children.length > 30) $("log").lastChild.remove();
}

// -- sessions ------------------------------------------------------------------------------------------
function paramsFor(model) {
  if (model === "pitch") return { semitones: Number($("voice").value) };
  if (model === "vc") {
    const steps = Number($("vc-steps").value);
    if ($("voice").value === OWN_VOICE && state.reference) return { reference_audio: state.reference.wav, steps };
    return $("voice").value ? { voice: $("voice").value, steps } : { steps };
  }
  if (model === "video" && $("prompt").value.trim()) return { prompt: $("prompt").value.trim() };
  return {};
}

/** Start a session with the selected model, or (with `watch`) watch a shared session of `model`. */
async function start({ watch = null, model = null } = {}) {
  clearTimeout(state.retryTimer);
  await teardown();
  model = model || currentModel();
  const info = model && state.models[model];
  if (!info) return;
  const transport = $("transport").value;
  const via = transport === "ws" ? "WebSocket" : "WebRTC";
  state.startOptions = { watch, model: watch ? model : null };
  state.watching = watch;
  showMessage(watch ? `Connecting to shared stream ${watch} over ${via}…` : `Connecting over ${via}…`);
  $("reconnect").hidden = true;
  state.notices = [];
  timeline.reset(info.output_video ? info.output_video.fps : null);
  setRunning(true);
  try {
    state.graph = await AudioGraph.create();
    state.graph.onLevel = (level) => { $("audio-meter").firstChild.style.width = `${Math.min(100, level * 150)}%`; };
    const wantsMic = info.input_audio && !watch && (state.mode !== "avatar" || $("use-mic").checked);
    state.mic = wantsMic ? await openMic(state.graph, state.synthetic) : null;
    const options = {
      model, params: paramsFor(model), share: !watch && state.mode === "video" && $("share").checked, watch,
      mic: state.mic, graph: state.graph, wantsAudio: Boolean(info.output_audio), wantsVideo: Boolean(info.output_video),
      iceServers: state.iceServers, videoEl: $("remote-video"), audioEl: $("remote-audio"), canvas: $("ws-canvas"),
    };
    const conn = (state.conn = transport === "ws" ? new WsConnection(options) : new RtcConnection(options));
    conn.addEventListener("message", (e) => onMessage(e.detail));
    conn.addEventListener("closed", (e) => onLost(e.detail.reason));
    await conn.start();
    state.retries = 0;
    showMessage(watch ? `Watching ${watch} (${model}) over ${via}; its producer switches the prompts.`
      : `Streaming with ${model} over ${via}.`);
    state.statsTimer = setInterval(pollStats, 1000);
  } catch (e) {
    await teardown();
    state.watching = null;
    setRunning(false);
    if (e.code === "capacity") showMessage(`The server is at capacity, try again in a moment. (${e.message})`, true);
    else if (e.code === "mic_denied") showMessage(e.message, true);
    else if (e.code === "unknown_session") showMessage(`That stream is no longer shared. (${e.message})`, true);
    else showMessage(`Could not start: ${e.message}`, true);
    if (watch) streams.refresh();
  }
}

function watch(sessionId, model) {
  if (state.running) return;
  start({ watch: sessionId, model });
}

function onMessage(m) {
  state.last[m.type] = m;
  if (m.type === "pong") $("stat-rtt").textContent = `${(performance.now() - m.t).toFixed(0)} ms`;
  else if (m.type === "stats") {
    // a viewer's stats are its own: frames it lost, packets that came late to it
    $("stat-late").textContent = m.viewer ? `${m.late_packets} late packets` : `${m.late_chunks} of ${m.chunks_out}`;
    $("stat-underruns").textContent = m.viewer ? `${m.dropped_frames} dropped frames` : String((m.audio_underruns || 0) + (m.video_underruns || 0));
  } else if (m.type === "ready" || m.type === "watching") {
    logLine(`${m.type}: session ${m.session} (${m.model})`);
    if (m.output_video) timeline.fps = m.output_video.fps;
    if (m.params && m.params.prompt) timeline.add({ text: m.params.prompt, frame: 0, switch: "first prompt" });
    if (m.type === "ready" && (m.events || []).includes("prompt") && m.model !== "video" && $("prompt").value.trim()) switchPrompt();
    if (m.type === "ready" && state.mode === "video" && $("share").checked) {
      streams.ownSession = m.session;
      $("share-status").textContent = `Shared as ${m.session}: others can watch it from this page.`;
      streams.refresh();
    }
  } else if (m.type === "error") {
    logLine(`error ${m.code}: ${m.message}`);
    if (isNoTtsError(m)) {
      $("say-note").textContent = "This server's avatar cannot speak text (no tts model is loaded): upload a WAV of the agent's voice instead.";
    } else {
      showMessage(`Server: ${m.message}`, true);
    }
    if (m.fatal) { state.expectClose = true; }
  } else if (m.type === "stopped") {
    logLine(`stopped: ${m.reason}`);
    stop(m.reason, false);
  } else if (m.type === "stream_ended") {
    logLine(`stream ended: ${m.reason}`);
    state.expectClose = true;
    stop(`the shared stream ended (${m.reason})`, false);
  } else {
    onNotice(m);
  }
}

/** A model's notice: prompt switches go to the timeline, the avatar's state to its badge, all to the log. */
function onNotice(m) {
  state.notices.push(m);
  if (m.type === "prompt_applied") timeline.add(m);
  else if (m.type === "state") $("conv-state").textContent = m.state.replace("_", " ");
  else if (m.type === "barge_in") $("conv-state").textContent = `interrupted (${m.reason})`;
  logLine(`${m.type}: ${JSON.stringify(m).slice(0, 120)}`);
}

function onLost(reason) {
  const wasRunning = state.running;
  const expected = state.expectClose; // a fatal error or a stop came first: no reconnect
  teardown().then(() => {
    setRunning(false);
    if (!wasRunning || expected) return;
    if (state.retries >= MAX_RETRIES) {
      showMessage(`Connection lost (${reason}). Press “Reconnect now” to try again.`, true);
      $("reconnect").hidden = false;
      return;
    }
    const delay = 1000 * 2 ** state.retries++;
    showMessage(`Connection lost (${reason}). Reconnecting in ${delay / 1000} s…`, true);
    $("reconnect").hidden = false;
    state.retryTimer = setTimeout(() => start(state.startOptions), delay);
  });
}

async function pollStats() {
  const conn = state.conn;
  if (!conn) return;
  send({ type: "ping", t: performance.now() });
  const s = await conn.stats();
  state.last.client_stats = s;
  $("stat-fps").textContent = s.fps == null ? "–" : `${s.fps.toFixed(1)} fps`;
  $("stat-kbps").textContent = s.kbps == null ? "–" : `${s.kbps.toFixed(0)} kbps`;
  if (state.mode === "video" && streams.ownSession && !state.watching) {
    const viewers = streams.ownViewers();
    if (viewers != null) $("share-status").textContent = `Shared as ${streams.ownSession}: ${viewers} watching.`;
  }
}

function send(message) { if (state.conn) state.conn.send(message); }

function say() {
  const text = $("text").value.trim();
  if (text) { send({ type: "text", text, final: true }); logLine(`text: ${text}`); } // final: speak all of it now
}

function switchPrompt() {
  const text = $("prompt").value.trim();
  if (text && state.running && !state.watching) { send({ type: "prompt", text }); logLine(`prompt: ${text}`); }
}

function avatarSayText() {
  const text = $("say-text").value.trim();
  if (text && state.running) { send({ type: "say", text }); logLine(`say: ${text}`); }
}

async function avatarSayFile() {
  const file = $("agent-audio").files[0];
  if (!file || !state.running) return;
  try {
    const samples = await decodeAudioFile(file);
    for (const message of sayAudioMessages(samples)) send(message);
    logLine(`say: ${file.name} (${(samples.length / SAY_RATE_HZ).toFixed(1)} s of agent audio)`);
  } catch (e) {
    showMessage(`Could not use ${file.name}: ${e.message}`, true);
  }
  $("agent-audio").value = ""; // the same file can be sent again
}

async function stop(reason = "stopped", tellServer = true) {
  clearTimeout(state.retryTimer);
  if (tellServer) send({ type: "stop" });
  state.expectClose = true;
  await teardown();
  state.watching = null;
  streams.ownSession = null;
  setRunning(false);
  showMessage(reason === "stopped" ? "" : `Stopped: ${reason}`);
  if (state.mode === "video") streams.refresh();
}

async function teardown() {
  clearInterval(state.statsTimer);
  const { conn, mic, graph } = state;
  state.conn = state.mic = state.graph = null;
  if (conn) conn.close();
  if (mic) mic.stop();
  if (graph) await graph.close();
  state.expectClose = false;
}

function shownVideo() {
  return $("remote-video").hidden ? $("ws-canvas") : $("remote-video");
}

// -- hooks for tests and the latency bench ---------------------------------------------------------------
window.causalcast = {
  ready: null,
  state: () => ({ mode: state.mode, running: state.running, model: currentModel(), transport: $("transport").value,
    watching: state.watching, message: $("message").textContent, log: state.log, errors: state.errors, last: state.last,
    notices: state.notices, timeline: timeline.entries, conversation: $("conv-state").textContent }),
  selectMode: (mode) => selectMode(mode),
  /** Pick a model of the current tab (e.g. `pitch` rather than `vc` on the Voice tab). */
  selectModel: (name) => { $("model").value = name; renderModel(); },
  setTransport: (t) => { $("transport").value = t; },
  start: () => start(),
  stop: () => stop(),
  watch: (sessionId, model) => watch(sessionId, model),
  refreshStreams: () => streams.refresh(),
  /** Use a marker train instead of the microphone on the next start (the latency bench). */
  useMarkers: (count, periodS) => { state.synthetic = markerTrain(48000, count, periodS); },
  /** Record `seconds` of the input and of what came back; resolves to base64 PCM16 at `rate`. */
  record: async (seconds) => {
    if (!state.graph) throw new Error("not running");
    const r = await state.graph.record(seconds);
    return { rate: r.rate, input: toBase64Pcm16(r.recorded[0]), output: toBase64Pcm16(r.recorded[1]) };
  },
  stats: async () => (state.conn ? state.conn.stats() : null),
  /** The video frame now shown (either transport): {width, height, rgba: base64}, or null before one. */
  grabFrame: () => {
    const image = grabFrame(shownVideo());
    if (!image) return null;
    const bytes = new Uint8Array(image.data.buffer);
    let s = "";
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    return { width: image.width, height: image.height, rgba: btoa(s) };
  },
};
window.causalcast.ready = init();
