// The Voice tab's target voice for the `vc` model: a shipped reference voice, or a clip of the user's
// own (uploaded, or recorded from the microphone) sent as a WAV (docs/models/vc.md). A clip goes at
// the start as the `reference_audio` param, or live as `set_reference` in pieces of its base64 text,
// each well inside a data-channel message (64 KiB); the piece marked `final` completes it. A clip is
// checked here (3-10 s, not silent) so a person learns at once what is wrong with it.

import { decodeAudioFile } from "./avatar.js";
import { AudioGraph, openMic } from "./media.js";

export const REFERENCE_RATE_HZ = 16000; // the model's rate: a clip is resampled to it before sending
export const MAX_REFERENCE_S = 12; // the model uses the first 10 s of speech; a little more is kept
export const CLIP_RANGE_S = [3, 10]; // what a clip should hold, checked here before anything is sent
const PIECE_CHARS = 48000;

/** A reference clip {name, seconds, note, wav (base64)} from an audio file the browser can decode. */
export async function referenceFromFile(file, range = CLIP_RANGE_S) {
  const samples = await decodeAudioFile(file, REFERENCE_RATE_HZ);
  return makeReference(file.name, samples, range);
}

/** A reference clip recorded from the microphone for `seconds`; `onTick(secondsLeft)` counts down. */
export async function recordReference(seconds, onTick = () => {}, range = CLIP_RANGE_S) {
  const graph = await AudioGraph.create();
  let mic = null;
  let timer = null;
  try {
    mic = await openMic(graph, null);
    const started = performance.now();
    onTick(seconds);
    timer = setInterval(() => onTick(Math.max(0, Math.ceil(seconds - (performance.now() - started) / 1000))), 250);
    const r = await graph.record(seconds);
    return makeReference("recording", await resample(r.recorded[0], r.rate, REFERENCE_RATE_HZ), range);
  } finally {
    clearInterval(timer);
    if (mic) mic.stop();
    await graph.close();
  }
}

function makeReference(name, samples, [minS, maxS] = CLIP_RANGE_S) {
  const seconds = samples.length / REFERENCE_RATE_HZ;
  if (seconds < minS) {
    throw new Error(`${name} is ${seconds.toFixed(1)} s long; a voice clip needs ${minS}–${maxS} s of speech`);
  }
  const clip = samples.subarray(0, MAX_REFERENCE_S * REFERENCE_RATE_HZ);
  let peak = 0;
  for (const x of clip) peak = Math.max(peak, Math.abs(x));
  if (peak < 1e-3) throw new Error(`${name} is silent`);
  const note = seconds > maxS ? `${seconds.toFixed(1)} s: only the first ${maxS} s of speech are used` : "";
  return { name, seconds: clip.length / REFERENCE_RATE_HZ, note, wav: wavBase64(clip, REFERENCE_RATE_HZ) };
}

async function resample(samples, fromRate, toRate) {
  if (fromRate === toRate) return samples;
  const length = Math.max(1, Math.round((samples.length * toRate) / fromRate));
  const ctx = new OfflineAudioContext(1, length, toRate);
  const buffer = ctx.createBuffer(1, samples.length, fromRate);
  buffer.copyToChannel(samples, 0);
  const source = ctx.createBufferSource();
  source.buffer = buffer;
  source.connect(ctx.destination);
  source.start();
  return (await ctx.startRendering()).getChannelData(0);
}

/** Mono Float32 samples as a 16-bit PCM WAV file, base64-encoded. */
export function wavBase64(samples, rate) {
  const bytes = new Uint8Array(44 + 2 * samples.length);
  const view = new DataView(bytes.buffer);
  const text = (offset, s) => { for (let i = 0; i < s.length; i++) bytes[offset + i] = s.charCodeAt(i); };
  text(0, "RIFF"); view.setUint32(4, 36 + 2 * samples.length, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, 2 * rate, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); text(36, "data"); view.setUint32(40, 2 * samples.length, true);
  for (let i = 0; i < samples.length; i++) view.setInt16(44 + 2 * i, Math.max(-1, Math.min(1, samples[i])) * 32767, true);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

/** The `set_reference` messages that send a clip live, in pieces; only the last is final. */
export function setReferenceMessages(wav) {
  const messages = [];
  for (let i = 0; i < wav.length; i += PIECE_CHARS) {
    messages.push({ type: "set_reference", reference_audio_part: wav.slice(i, i + PIECE_CHARS),
      final: i + PIECE_CHARS >= wav.length });
  }
  return messages;
}
