// The Avatar tab's agent speech: text for the avatar to say (spoken by the tts model inside the avatar)
// and uploaded agent audio (a WAV), both sent as `say` events (docs/models/avatar.md). Audio goes in
// pieces of at most a second, each well inside a data-channel message (64 KiB), the last one `final`; and
// the portrait a person uploads, scaled down in the page before it is sent as a start parameter.

import { toBase64Pcm16 } from "./media.js";

export const SAY_RATE_HZ = 16000;
const PIECE_S = 1.0; // base64 of 1 s of 16 kHz PCM16 is ~43 kB

/** Decode an audio file (WAV, or anything the browser decodes) to mono Float32 samples at `rate`. */
export async function decodeAudioFile(file, rate = SAY_RATE_HZ) {
  const bytes = await file.arrayBuffer();
  const ctx = new OfflineAudioContext(1, 1, rate); // decodeAudioData resamples to the context's rate
  let buffer;
  try {
    buffer = await ctx.decodeAudioData(bytes);
  } catch (e) {
    throw new Error(`cannot decode ${file.name} as audio (${e.message || e})`);
  }
  const mono = new Float32Array(buffer.length);
  for (let c = 0; c < buffer.numberOfChannels; c++) {
    const channel = buffer.getChannelData(c);
    for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / buffer.numberOfChannels;
  }
  return mono;
}

/** `say` events carrying `samples` (mono Float32 at `rate`) in pieces; only the last is final. */
export function sayAudioMessages(samples, rate = SAY_RATE_HZ, pieceS = PIECE_S) {
  const n = Math.max(1, Math.round(rate * pieceS));
  const messages = [];
  for (let i = 0; i < samples.length; i += n) {
    messages.push({ type: "say", audio: toBase64Pcm16(samples.subarray(i, i + n)), sample_rate_hz: rate,
      final: i + n >= samples.length });
  }
  return messages;
}

/** Whether an error answering a `say` with text means no speech generator is loaded. */
export function isNoTtsError(message) {
  return message.type === "error" && message.code === "bad_params" && /\btts\b/.test(message.message || "");
}

/** A portrait image file scaled to fit `width`x`height` (the model's frame), as base64 JPEG for `portrait`. */
export async function portraitFromFile(file, width, height) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch (e) {
    throw new Error(`cannot read ${file.name} as an image (${e.message || e})`);
  }
  const scale = Math.min(1, Math.max(width / bitmap.width, height / bitmap.height));
  const canvas = document.createElement("canvas");
  canvas.width = Math.round(bitmap.width * scale);
  canvas.height = Math.round(bitmap.height * scale);
  canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  const dataUrl = canvas.toDataURL("image/jpeg", 0.9);
  return { name: file.name, width: canvas.width, height: canvas.height, data: dataUrl.slice(dataUrl.indexOf(",") + 1) };
}
