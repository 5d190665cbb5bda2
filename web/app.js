// The causalcast page: four modes (tabs), a transport selector, live stats, clear errors, reconnect.
// Models come from /healthz (polled; the header says when the server is unreachable): those not loaded show
// as unavailable, never as broken buttons. Speak starts its session on the first Speak; the Avatar tab
// listens with echo cancellation and says when it was interrupted; the Video tab shows the words its model
// knows, can share its stream (with a `?watch=ID` link) and keeps a timeline of prompt switches.
// One session at a time: a start in flight can be cancelled (Stop), and a second start is refused.
// The tab, transport and watched stream live in the URL. `window.causalcast` exposes a small API the
// browser tests and the latency bench drive.

import { decodeAudioFile, isNoTtsError, portraitFromFile, SAY_RATE_HZ, sayAudioMessages } from "./avatar.js";
import { el } from "./dom.js";
import { HealthPoller } from "./health.js";
import { modelName, voiceLabel } from "./labels.js";
import { AudioGraph, grabFrame, markerTrain, openMic, toBase64Pcm16 } from "./media.js";
import { PromptHelp, quoteList } from "./prompts.js";
import { RtcConnection } from "./rtc.js";
import { StreamsList, Timeline } from "./shared.js";
import { textMessages, whyNotSpoken } from "./speak.js";
import { readUrl, watchLink, writeUrl } from "./url.js";
import { recordReference, referenceFromFile, setReferenceMessages } from "./voice.js";
import { hasToken, setToken, withToken } from "./token.js";
import { WsConnection } from "./ws.js";

const MODES = {
  voice: { help: "Talk into your microphone; your voice comes back converted to the target voice.", models: ["vc", "pitch"] },
  speak: { help: "Type text and press Speak (or Enter): you hear it spoken as it is generated.", models: ["tts"] },
  avatar: { help: "Talk with a talking-head avatar: your microphone in, its face and voice out. Make it say something by text or with a WAV of the agent's voice.", models: ["avatar"] },
  video: { help: "Type a prompt and watch the stream; type a new prompt any time and see it switch. Share it, or watch a stream someone else shares.", models: ["video", "testcard"] },
};
const TAB_ORDER = Object.keys(MODES);
const PITCH_VOICES = [["higher (+4 semitones)", 4], ["much higher (+7)", 7], ["deeper (−4)", -4], ["much deeper (−7)", -7], ["unchanged (0)", 0]];
const MAX_RETRIES = 3;
const OWN_VOICE = "__reference__"; // the voice pickers' option for the user's own clip
const WATCH_HIDDEN = new Set(["prompt-row", "prompt-help-row", "advanced", "share-row"]); // a viewer steers nothing

const $ = (id) => document.getElementById(id);
const state = {
  mode: "voice", models: {}, iceServers: [], conn: null, graph: null, mic: null,
  phase: "idle", // idle | starting | running: one session at a time
  attempt: 0, // bumped by every start and stop: a start that finds it changed was cancelled
  model: null, // the running session's model
  watching: null, // the shared session this page watches (null: it runs its own, or nothing)
  startOptions: {}, retries: 0, retryTimer: null, statsTimer: null, synthetic: null,
  log: [], errors: [], last: {}, notices: [], serverDown: false,
  reference: null, // the user's own target-voice clip for vc: {name, seconds, wav (base64)}
  speakReference: null, // the same for the Speak tab's voice
  portrait: null, // the avatar's portrait: {name, data (base64 JPEG)}
  pendingText: null, // text typed before the Speak session was ready
  pendingSay: null, // the same for the avatar's first Say
};
let streams = null;
let timeline = null;
let promptHelp = null;
let health = null;
let initialized = false; // the tabs are wired (a change of loaded models re-renders them from then on)

const busy = () => state.phase !== "idle";

// -- start-up ------------------------------------------------------------------------------------------
async function init() {
  streams = new StreamsList($("streams"), (s) => watch(s.session, s.model));
  timeline = new Timeline($("timeline"));
  timeline.reset(null);
  promptHelp = new PromptHelp($("chips"), $("prompt-note"), $("prompt"));
  const url = readUrl();
  if (["webrtc", "ws"].includes(url.transport)) $("transport").value = url.transport;
  health = new HealthPoller("/healthz", onHealth);
  await health.start();
  try {
    state.iceServers = (await getJson("/config")).ice_servers || [];
  } catch (e) {
    if (e.auth) showMessage(e.message, true); // a server with tokens: say how to give one
  }
  setupTabs();
  $("transport").addEventListener("change", () => writeUrl({ transport: $("transport").value }));
  $("start").addEventListener("click", () => start());
  $("stop").addEventListener("click", () => stop("stopped"));
  $("reconnect").addEventListener("click", () => { stop("stopped").then(() => start(state.startOptions)); });
  $("model").addEventListener("change", () => renderModel());
  $("voice").addEventListener("change", () => {
    if (state.phase === "running" && state.model === "pitch") send({ type: "set_pitch", semitones: Number($("voice").value) });
    if (state.phase === "running" && state.model === "vc") sendVoice();
  });
  $("vc-steps").addEventListener("change", () => {
    if (state.phase === "running" && state.model === "vc") send({ type: "set_steps", steps: Number($("vc-steps").value) });
  });
  $("ref-file").addEventListener("change", () => useReference(() => referenceFromFile($("ref-file").files[0])));
  $("ref-record").addEventListener("click", () => recordClip());
  $("speak-voice").addEventListener("change", () => changeSpeakVoice());
  $("speak-ref-file").addEventListener("change", () => useSpeakReference($("speak-ref-file").files[0]));
  $("say").addEventListener("click", () => say());
  $("say-stop").addEventListener("click", () => { send({ type: "interrupt" }); logLine("interrupt"); });
  onEnter($("text"), () => say());
  $("switch").addEventListener("click", () => switchPrompt());
  $("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter") switchPrompt(); });
  $("prompt").addEventListener("input", () => promptHelp.update());
  $("avatar-say").addEventListener("click", () => avatarSayText());
  onEnter($("say-text"), () => avatarSayText());
  $("avatar-interrupt").addEventListener("click", () => { send({ type: "interrupt" }); logLine("interrupt"); });
  $("agent-audio").addEventListener("change", () => avatarSayFile());
  $("portrait-file").addEventListener("change", () => usePortrait($("portrait-file").files[0]));
  selectMode(MODES[url.tab] ? url.tab : "voice");
  initialized = true;
  if (url.watch) await openWatchLink(url.watch);
}

async function getJson(url) {
  const r = await fetch(withToken(url));
  if (r.status === 401 || r.status === 403) {
    const body = await r.json().catch(() => ({}));
    const hint = hasToken() ? "" : "; open the page with ?token=...";
    throw Object.assign(new Error(`${body.message || `HTTP ${r.status}`}${hint}`), { auth: true });
  }
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

/** Enter (or Ctrl+Enter) runs `action`; Shift+Enter types a new line. */
function onEnter(textarea, action) {
  textarea.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); action(); }
  });
}

/** Each poll of /healthz: the header line, the models, and clearing the "cannot reach" error once it answers. */
function onHealth(h, error) {
  const status = $("server-status");
  status.classList.toggle("bad", !h);
  if (!h) {
    status.textContent = `server unreachable · trying again in ${Math.round(health.delayMs / 1000)} s`;
    if (!state.serverDown) showMessage(`Cannot reach the server (${error.message}). Is \`make serve\` running?`, true);
    state.serverDown = true;
    return;
  }
  const before = Object.values(state.models).filter((m) => m.status === "loaded").map((m) => m.name).join();
  state.models = {};
  const models = h.models || []; // a server with tokens shows its models only to token holders
  for (const m of models) state.models[m.name] = m;
  const loaded = models.filter((m) => m.status === "loaded");
  status.textContent = `server ${h.status} · ${h.device} · ${loaded.length} model${loaded.length === 1 ? "" : "s"} ready`;
  status.title = loaded.map((m) => modelName(m.name)).join(", ");
  if (state.serverDown) {
    state.serverDown = false;
    if (!busy()) showMessage("");
  }
  if (initialized && loaded.map((m) => m.name).join() !== before && !busy()) selectMode(state.mode);
}

function setupTabs() {
  const tabs = [...document.querySelectorAll("#tabs button")];
  for (const tab of tabs) tab.addEventListener("click", () => selectMode(tab.dataset.mode));
  $("tabs").addEventListener("keydown", (e) => {
    const i = TAB_ORDER.indexOf(state.mode);
    const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: TAB_ORDER.length - 1 }[e.key];
    if (next === undefined) return;
    e.preventDefault();
    const mode = TAB_ORDER[(next + TAB_ORDER.length) % TAB_ORDER.length];
    selectMode(mode);
    $(`tab-${mode}`).focus();
  });
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
  if (busy() && mode !== state.mode) stop("switched tab");
  state.mode = mode;
  for (const tab of document.querySelectorAll("#tabs button")) {
    const selected = tab.dataset.mode === mode;
    tab.setAttribute("aria-selected", String(selected));
    tab.tabIndex = selected ? 0 : -1;
    tab.classList.toggle("unavailable", !modelsFor(tab.dataset.mode).some((m) => m.status === "loaded"));
  }
  $("panel").setAttribute("aria-labelledby", `tab-${mode}`);
  writeUrl({ tab: mode });
  $("mode-help").textContent = MODES[mode].help;
  const select = $("model");
  select.innerHTML = "";
  for (const m of modelsFor(mode)) {
    const why = m.status === "loaded" ? "" : ` (${m.status === "available" ? "not loaded" : "unavailable"})`;
    const opt = new Option(`${modelName(m.name)}${why}`, m.name);
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
  if (!info) {
    const names = MODES[state.mode].models.map(modelName).join(", ");
    $("model-note").textContent = `This mode is unavailable: no model for it is loaded on this server (${names}).`;
  } else {
    $("model-note").textContent = info.description || "";
  }
  const voices = name === "pitch" ? PITCH_VOICES
    : (info && info.voices && state.mode === "voice" ? info.voices.map((v) => [voiceLabel(v), v.id ?? v]) : [["default", ""]]);
  fillSelect($("voice"), voices, name === "vc" && state.reference ? ownVoiceOption(state.reference) : null);
  const ttsVoices = state.mode === "speak" && info && info.voices ? info.voices.map((v) => [voiceLabel(v), v.id ?? v]) : [["default", ""]];
  fillSelect($("speak-voice"), ttsVoices, state.speakReference ? ownVoiceOption(state.speakReference) : null);
  $("speak-ref-file").closest("label").hidden = !(info && info.reference_audio);
  $("prompt-examples").replaceChildren(...((info && info.example_prompts) || []).map((p) => new Option(p)));
  if (info && info.example_prompts && info.example_prompts.length && !busy()) $("prompt").value = info.example_prompts[0];
  promptHelp.setModel(state.mode === "video" ? info : null);
  $("say-note").textContent = ""; // said when a `say` with text is refused (the avatar has no tts model)
  $("stat-delay-label").textContent = convertsVoice(info) ? "Voice delay" : "Delay";
  showRows();
  updateControls();
}

function fillSelect(select, options, own) {
  select.replaceChildren(...options.map(([label, value]) => new Option(label, value)));
  if (own) select.add(own, 0);
  select.selectedIndex = 0;
}

/** Which rows show: the tab's (`data-for`, space-separated tabs), the model's (`data-model`), a viewer's. */
function showRows() {
  const name = currentModel();
  const info = name ? state.models[name] : null;
  for (const row of document.querySelectorAll("[data-for], [data-model]")) {
    let hidden = Boolean(row.dataset.for) && !row.dataset.for.split(" ").includes(state.mode);
    if (!hidden && row.dataset.model) hidden = row.dataset.model !== name;
    if (!hidden && WATCH_HIDDEN.has(row.id)) hidden = Boolean(state.watching);
    if (row.id === "watch-info") hidden = hidden || !state.watching;
    if (row.id === "portrait-row") hidden = hidden || !(info && info.portrait);
    row.hidden = hidden;
  }
}

function updateControls() {
  const loaded = Boolean(currentModel());
  const running = state.phase === "running";
  const producing = running && !state.watching;
  $("start").disabled = busy() || !loaded;
  $("stop").disabled = !busy();
  $("stop").textContent = state.phase === "starting" ? "Cancel" : "Stop";
  $("say").disabled = !loaded || state.phase === "starting" || Boolean(state.watching);
  $("say-stop").disabled = !producing;
  $("switch").disabled = !producing;
  $("prompt").disabled = !loaded;
  $("avatar-say").disabled = !loaded || state.phase === "starting" || Boolean(state.watching);
  for (const id of ["avatar-interrupt", "agent-audio"]) $(id).disabled = !producing;
  for (const id of ["transport", "share", "use-mic", "headphones", "portrait-file", "seed"]) $(id).disabled = busy();
  streams.busy = busy();
  streams.render();
  const what = state.watching ? `watching ${state.watching}` : state.phase === "starting" ? "starting" : "streaming";
  $("stat-state").textContent = busy() ? `${what} (${$("transport").value})` : "idle";
  if (!busy()) $("share-status").textContent = "";
}

/** After a session: no black video box, no stale numbers, meters and the avatar's badge back to rest. */
function resetMedia() {
  const video = $("remote-video");
  video.srcObject = null;
  video.hidden = true;
  const canvas = $("ws-canvas");
  canvas.hidden = true;
  delete canvas.dataset.drawn;
  for (const id of ["stat-delay", "stat-fps", "stat-kbps", "stat-late", "stat-underruns"]) $(id).textContent = "–";
  setMeter($("audio-meter"), 0);
  setMeter($("mic-meter-box"), 0);
  $("conv-state").textContent = "–";
  $("say-stop").disabled = true;
}

function setMeter(box, level) {
  const percent = Math.round(Math.min(100, level * 150));
  box.firstElementChild.style.width = `${percent}%`;
  box.setAttribute("aria-valuenow", String(percent));
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

// -- voices and clips ------------------------------------------------------------------------------------
function ownVoiceOption(r) {
  return new Option(`your clip: ${r.name} (${r.seconds.toFixed(1)} s)`, OWN_VOICE);
}

/** Record the user's own target voice for 6 s, counting down on the button. */
async function recordClip() {
  const button = $("ref-record");
  button.disabled = true;
  try {
    await useReference(() => recordReference(6, (left) => { button.textContent = `Recording… ${left} s left`; }));
  } finally {
    button.textContent = "Record 6 s";
    button.disabled = false;
  }
}

/** Load the user's own target voice (upload or recording), select it, and use it now if streaming. */
async function useReference(load) {
  $("ref-note").textContent = "reading the clip…";
  try {
    state.reference = await load();
  } catch (e) {
    $("ref-note").textContent = "";
    $("ref-file").value = "";
    showMessage(`Could not use that clip: ${e.message}`, true);
    return;
  }
  $("ref-file").value = ""; // the same file can be chosen again
  const voice = $("voice");
  for (const opt of [...voice.options]) if (opt.value === OWN_VOICE) opt.remove();
  voice.add(ownVoiceOption(state.reference), 0);
  voice.value = OWN_VOICE;
  const r = state.reference;
  $("ref-note").textContent = r.note ? `${r.name}: ${r.note}` : `${r.name}: ${r.seconds.toFixed(1)} s`;
  logLine(`reference: ${r.name} (${r.seconds.toFixed(1)} s)`);
  if (state.phase === "running" && state.model === "vc") sendVoice();
}

/** Switch the running vc session to the selected target voice (a shipped one, or the user's clip). */
function sendVoice() {
  const value = $("voice").value;
  if (value !== OWN_VOICE) send({ type: "set_reference", voice: value });
  else if (state.reference) {
    const info = state.models.vc;
    $("ref-note").textContent = `${state.reference.name}: ${info && info.reference_fit_steps > 0 ? "learning its voice (a few seconds)…" : "sending…"}`;
    for (const message of setReferenceMessages(state.reference.wav)) send(message);
  }
  logLine(`voice: ${value === OWN_VOICE ? state.reference.name : value}`);
}

async function useSpeakReference(file) {
  if (!file) return;
  try {
    state.speakReference = await referenceFromFile(file);
  } catch (e) {
    showMessage(`Could not use that clip: ${e.message}`, true);
    $("speak-ref-file").value = "";
    return;
  }
  $("speak-ref-file").value = "";
  const select = $("speak-voice");
  for (const opt of [...select.options]) if (opt.value === OWN_VOICE) opt.remove();
  select.add(ownVoiceOption(state.speakReference), 0);
  select.value = OWN_VOICE;
  changeSpeakVoice();
}

/** A shipped voice applies to a running session at once; the user's clip from the next Speak (a new session). */
function changeSpeakVoice() {
  const value = $("speak-voice").value;
  if (state.phase !== "running" || state.model !== "tts") return;
  if (value === OWN_VOICE) {
    stop("stopped").then(() => { $("speak-note").textContent = "Your clip is used from the next Speak."; });
  } else {
    send({ type: "set_voice", voice: value });
    logLine(`voice: ${value}`);
  }
}

async function usePortrait(file) {
  if (!file) return;
  const out = (state.models.avatar && state.models.avatar.output_video) || { width: 256, height: 256 };
  try {
    state.portrait = await portraitFromFile(file, out.width, out.height);
    $("portrait-note").textContent = `${file.name}: used from the next Start.`;
  } catch (e) {
    state.portrait = null;
    $("portrait-note").textContent = "";
    showMessage(`Could not use that portrait: ${e.message}`, true);
  }
}

// -- sessions ------------------------------------------------------------------------------------------
function paramsFor(model) {
  if (model === "pitch") return { semitones: Number($("voice").value) };
  if (model === "vc") {
    const steps = Number($("vc-steps").value);
    if ($("voice").value === OWN_VOICE && state.reference) return { reference_audio: state.reference.wav, steps };
    return $("voice").value ? { voice: $("voice").value, steps } : { steps };
  }
  if (model === "tts") {
    const value = $("speak-voice").value;
    if (value === OWN_VOICE && state.speakReference) return { reference_audio: state.speakReference.wav };
    return value ? { voice: value } : {};
  }
  if (model === "avatar") return state.portrait ? { portrait: state.portrait.data } : {};
  if (model === "video") {
    const params = { switch: $("switch-strategy").value, seed: Math.max(0, Math.floor(Number($("seed").value) || 0)) };
    if ($("prompt").value.trim()) params.prompt = $("prompt").value.trim();
    return params;
  }
  return {};
}

/** Start a session with the selected model, or (with `watch`) watch a shared session of `model`.
 * `text`: what the Speak tab says once the session is ready. Resolves to whether it is running. */
async function start({ watch = null, model = null, text = null, say = null } = {}) {
  if (busy()) return false; // one at a time: a second start while one is in flight is refused
  clearTimeout(state.retryTimer);
  model = model || currentModel();
  const info = model && state.models[model];
  if (!info) return false;
  const attempt = ++state.attempt;
  Object.assign(state, { phase: "starting", model, watching: watch, notices: [], last: {} });
  Object.assign(state, { pendingText: text, pendingSay: say });
  const transport = $("transport").value;
  const via = transport === "ws" ? "WebSocket" : "WebRTC";
  state.startOptions = { watch, model: watch ? model : null };
  const emptyPrompt = !watch && model === "video" && !$("prompt").value.trim();
  // the server fits the vc model to an uploaded clip before the session starts: seconds on a CPU
  const fitting = !watch && model === "vc" && info.reference_fit_steps > 0 && Boolean(paramsFor(model).reference_audio);
  showMessage(watch ? `Connecting to the shared stream over ${via}…`
    : `Connecting over ${via}…${fitting ? " (learning your clip's voice: a few seconds)" : ""}`);
  $("reconnect").hidden = true;
  if (watch) writeUrl({ watch });
  timeline.reset(info.output_video ? info.output_video.fps : null);
  $("current-prompt").textContent = "–";
  showRows();
  updateControls();
  const stale = () => attempt !== state.attempt; // stop() (or a newer start) took over
  try {
    const graph = await AudioGraph.create();
    if (stale()) { await graph.close(); return false; }
    state.graph = graph;
    graph.onLevel = (level, inputLevel) => { setMeter($("audio-meter"), level); setMeter($("mic-meter-box"), inputLevel || 0); };
    const wantsMic = info.input_audio && !watch && (state.mode !== "avatar" || $("use-mic").checked);
    // the avatar hears what it says from a loudspeaker unless the browser cancels the echo
    const echoCancellation = state.mode === "avatar" && !$("headphones").checked;
    const mic = wantsMic ? await openMic(graph, state.synthetic, { echoCancellation }) : null;
    if (stale()) { if (mic) mic.stop(); return false; }
    state.mic = mic;
    const options = {
      model, params: paramsFor(model), share: !watch && state.mode === "video" && $("share").checked, watch,
      mic, graph, wantsAudio: Boolean(info.output_audio), wantsVideo: Boolean(info.output_video),
      iceServers: state.iceServers, videoEl: $("remote-video"), audioEl: $("remote-audio"), canvas: $("ws-canvas"),
    };
    const conn = (state.conn = transport === "ws" ? new WsConnection(options) : new RtcConnection(options));
    conn.addEventListener("message", (e) => { if (state.conn === conn) onMessage(e.detail); });
    conn.addEventListener("closed", (e) => { if (state.conn === conn) onLost(e.detail.reason); });
    await conn.start();
    if (stale()) return false;
    state.phase = "running";
    state.retries = 0;
    const name = modelName(model);
    showMessage(watch ? `Watching a shared ${name} stream over ${via}; its producer switches the prompts.`
      : `Streaming with ${name} over ${via}.${emptyPrompt ? " Empty prompt: the model shows its default scene." : ""}`);
    state.statsTimer = setInterval(pollStats, 1000);
    updateControls();
    if (conn._closed) onLost("the connection closed while it was starting"); // its one `closed` event came early
    return true;
  } catch (e) {
    if (stale() || e.code === "cancelled") return false; // the user stopped it: not an error
    state.attempt++;
    await teardown();
    Object.assign(state, { phase: "idle", watching: null, pendingText: null });
    resetMedia();
    showRows();
    updateControls();
    if (watch) writeUrl({ watch: null });
    if (e.code === "capacity") showMessage(`The server is at capacity, try again in a moment. (${e.message})`, true);
    else if (e.code === "mic_denied") showMessage(e.message, true);
    else if (e.code === "unknown_session") showMessage(`That stream is no longer shared. (${e.message})`, true);
    else showMessage(`Could not start: ${e.message}`, true);
    if (watch) streams.refresh();
    return false;
  }
}

function watch(sessionId, model) {
  if (busy()) return;
  start({ watch: sessionId, model });
}

/** A `?watch=ID` link: open the Video tab and watch that stream, or say it is gone. */
async function openWatchLink(id) {
  selectMode("video");
  const list = await streams.refresh();
  const stream = list.find((s) => s.session === id);
  if (!stream) {
    writeUrl({ watch: null });
    showMessage("The stream in this link is not shared any more (its producer stopped), or the link is wrong.", true);
    return;
  }
  await start({ watch: id, model: stream.model });
}

function onMessage(m) {
  state.last[m.type] = m;
  if (m.type === "pong") {
    state.rttMs = performance.now() - m.t; // the control channel's round trip: kept, not shown (not the voice's delay)
  } else if (m.type === "stats") {
    // a viewer's stats are its own: frames it lost, packets that came late to it
    $("stat-late").textContent = m.viewer ? `${m.late_packets} late packets` : `${m.late_chunks} of ${m.chunks_out}`;
    $("stat-underruns").textContent = m.viewer ? `${m.dropped_frames} dropped frames` : String((m.audio_underruns || 0) + (m.video_underruns || 0));
    showDelay(m);
  } else if (m.type === "ready" || m.type === "watching") {
    logLine(`${m.type}: session ${m.session} (${m.model})`);
    if (m.output_video) timeline.fps = m.output_video.fps;
    if (m.params && m.params.prompt) addPromptSwitch({ text: m.params.prompt, frame: 0, switch: "first prompt" });
    if (m.type === "ready" && state.pendingText) { sendText(state.pendingText); state.pendingText = null; }
    if (m.type === "ready" && state.pendingSay) { sendSay(state.pendingSay); state.pendingSay = null; }
    if (m.type === "ready" && (m.events || []).includes("prompt") && m.model !== "video" && $("prompt").value.trim()) switchPrompt();
    if (m.type === "ready" && state.mode === "video" && $("share").checked) {
      streams.ownSession = m.session;
      const link = watchLink(m.session);
      $("share-status").replaceChildren("Shared: others can watch it with ", el("a", { href: link, id: "watch-link" }, "this link"),
        ` (stream ${m.session}).`);
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

/** A model's notice: prompt switches to the timeline, the avatar's state to its badge, all to the log. */
function onNotice(m) {
  state.notices.push(m);
  if (m.type === "prompt_applied") addPromptSwitch(m);
  else if (m.type === "state") $("conv-state").textContent = m.state.replace("_", " ");
  else if (m.type === "barge_in") {
    $("conv-state").textContent = "interrupted";
    $("say-note").textContent = m.reason === "user"
      ? "You interrupted — the avatar stopped talking (it heard you speak over it)."
      : "You pressed Interrupt — the avatar stopped talking.";
  } else if (m.type === "interrupted") $("speak-note").textContent = "Stopped talking.";
  else if (m.type === "reference_set" && m.voice === "reference" && state.reference) {
    $("ref-note").textContent = `${state.reference.name}: in use`;
  }
  logLine(`${m.type}: ${JSON.stringify(m).slice(0, 120)}`);
}

function addPromptSwitch(m) {
  timeline.add(m);
  $("current-prompt").textContent = m.text;
  const ignored = promptHelp.unknownWords(m.text);
  if (!state.watching && m.switch !== "first prompt") {
    $("prompt-note").textContent = `Now showing “${m.text}”.${ignored.length ? ` The model ignored ${quoteList(ignored)} (not words it knows).` : ""}`;
    $("prompt-note").classList.toggle("warn", ignored.length > 0);
  }
}

/** A model that turns the microphone's voice into another (its output follows its input chunk by chunk). */
function convertsVoice(info) {
  return Boolean(info && info.pacing === "input" && info.input_audio && info.output_audio);
}

/** The delay a person hears: for voice models, mouth to ear (a chunk of input, the model's look-ahead, the
 * server's time per chunk, the client's playout buffer); otherwise the server's time per chunk. */
function showDelay(stats) {
  const info = state.models[state.model];
  const serverMs = stats.chunk_latency_ms_p50;
  if (!info || serverMs == null) return;
  if (convertsVoice(info)) {
    const bufferMs = (state.last.client_stats && state.last.client_stats.bufferMs) || 0;
    const parts = { chunk: info.chunk_ms, "look-ahead": info.lookahead_ms || 0, model: serverMs, "playout buffer": bufferMs };
    const total = Object.values(parts).reduce((a, b) => a + b, 0);
    $("stat-delay").textContent = `≈ ${total.toFixed(0)} ms mouth to ear`;
    $("stat-delay").title = Object.entries(parts).map(([k, v]) => `${k} ${v.toFixed(0)} ms`).join(" + ");
  } else {
    $("stat-delay").textContent = `${serverMs.toFixed(0)} ms per chunk on the server`;
  }
}

function onLost(reason) {
  if (state.phase !== "running") return; // a start in flight reports its own failure
  const expected = state.expectClose; // a fatal error or a stop came first: no reconnect
  state.attempt++;
  teardown().then(() => {
    Object.assign(state, { phase: "idle", watching: null });
    resetMedia();
    showRows();
    updateControls();
    if (expected) return;
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
  send({ type: "ping", t: performance.now() }); // the control channel's round trip, kept for the log
  const s = await conn.stats();
  state.last.client_stats = s;
  $("stat-fps").textContent = s.fps == null ? "–" : `${s.fps.toFixed(1)} fps`;
  $("stat-kbps").textContent = s.kbps == null ? "–" : `${s.kbps.toFixed(0)} kbps`;
  if (state.mode === "video" && streams.ownSession && !state.watching) {
    const viewers = streams.ownViewers();
    const count = $("share-count") || $("share-status").appendChild(el("span", { id: "share-count" }));
    if (viewers != null) count.textContent = ` ${viewers} watching.`;
  }
}

function send(message) { if (state.conn) state.conn.send(message); }

function sendText(text) {
  const messages = textMessages(text);
  for (const message of messages) send(message);
  logLine(`text: ${text.length > 80 ? `${text.slice(0, 80)}… (${text.length} characters in ${messages.length} pieces)` : text}`);
}

/** Speak the typed text: the first Speak starts the session; empty or wordless text is explained. */
function say() {
  const text = $("text").value;
  const why = whyNotSpoken(text);
  $("speak-note").textContent = why;
  if (why || state.watching) return;
  if (state.phase === "running") sendText(text);
  else if (state.phase === "idle") start({ text });
}

function switchPrompt() {
  const text = $("prompt").value.trim();
  if (!state.conn || state.watching) return;
  if (!text) { $("prompt-note").textContent = "Type a prompt to switch to (the scene stays as it is)."; return; }
  const event = { type: "prompt", text };
  if (state.model === "video") event.switch = $("switch-strategy").value;
  send(event);
  logLine(`prompt: ${text}`);
}

/** Say the typed text with the avatar's voice; the first Say starts the session. */
function avatarSayText() {
  const text = $("say-text").value.trim();
  if (!text) { $("say-note").textContent = "Type something for the avatar to say first."; return; }
  $("say-note").textContent = "";
  if (state.phase === "running") sendSay(text);
  else if (state.phase === "idle") start({ say: text });
}

function sendSay(text) {
  send({ type: "say", text });
  logLine(`say: ${text}`);
}

async function avatarSayFile() {
  const file = $("agent-audio").files[0];
  if (!file || state.phase !== "running") return;
  try {
    const samples = await decodeAudioFile(file);
    for (const message of sayAudioMessages(samples)) send(message);
    logLine(`say: ${file.name} (${(samples.length / SAY_RATE_HZ).toFixed(1)} s of agent audio)`);
  } catch (e) {
    showMessage(`Could not use ${file.name}: ${e.message}`, true);
  }
  $("agent-audio").value = ""; // the same file can be sent again
}

/** Stop the session, or cancel a start in flight (the server is told to drop it; no error follows). */
async function stop(reason = "stopped", tellServer = true) {
  clearTimeout(state.retryTimer);
  state.attempt++;
  const wasStarting = state.phase === "starting";
  if (tellServer) send({ type: "stop" });
  state.expectClose = true;
  await teardown();
  Object.assign(state, { phase: "idle", watching: null, pendingText: null, pendingSay: null });
  streams.ownSession = null;
  resetMedia();
  showRows();
  updateControls();
  writeUrl({ watch: null });
  $("reconnect").hidden = true;
  if (reason !== "stopped") showMessage(`Stopped: ${reason}`);
  else showMessage(wasStarting ? "Cancelled." : "");
  if (state.mode === "video") streams.refresh();
}

async function teardown() {
  clearInterval(state.statsTimer);
  const { conn, mic, graph } = state;
  state.conn = state.mic = state.graph = null;
  if (conn) conn.close();
  if (mic) mic.stop();
  if (graph) { graph.onLevel = null; await graph.close(); } // no level report lands after the meters reset
  state.expectClose = false;
}

function shownVideo() {
  return $("remote-video").hidden ? $("ws-canvas") : $("remote-video");
}

// -- hooks for tests and the latency bench ---------------------------------------------------------------
window.causalcast = {
  ready: null,
  state: () => ({ mode: state.mode, running: busy(), phase: state.phase, model: currentModel(), transport: $("transport").value,
    watching: state.watching, message: $("message").textContent, log: state.log, errors: state.errors, last: state.last,
    notices: state.notices, timeline: timeline.entries, conversation: $("conv-state").textContent,
    mic: state.mic ? state.mic.settings : null,
    health: health && { reachable: health.reachable, delayMs: health.delayMs, failures: health.failures, polls: health.polls } }),
  selectMode: (mode) => selectMode(mode),
  /** Pick a model of the current tab (e.g. `pitch` rather than `vc` on the Voice tab). */
  selectModel: (name) => { $("model").value = name; renderModel(); },
  setTransport: (t) => { $("transport").value = t; writeUrl({ transport: t }); },
  /** Use this access token from now on (an embedding application's hook; see token.js). */
  setToken: async (t) => {
    setToken(t);
    await health.poll();
    state.iceServers = (await getJson("/config")).ice_servers || [];
    showMessage("");
    selectMode(state.mode);
  },
  start: () => start(),
  stop: () => stop(),
  watch: (sessionId, model) => watch(sessionId, model),
  refreshStreams: () => streams.refresh(),
  /** Poll /healthz now (tests: no need to wait for the next poll). */
  pollHealth: () => health.poll(),
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
