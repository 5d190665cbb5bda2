"""Model `tts` on Pocket TTS weights: text in word by word, 24 kHz speech out, many sessions batched per step.

Design note of the step loop. One step is one latent frame (80 ms) for every session of the batch:

1. A session with a decided chunk and none running starts it: its cache slot is refilled with the voice's
   keys/values, the chunk's text tokens are prefilled after them, its Mimi decoder stream restarts.
2. Every running session feeds its last latent (BOS first) through one batched backbone step against its
   slot; the EOS head and the flow head (one step from per-session noise) give each its next latent.
3. The release's stopping rule: EOS counts from the 6th frame; ``frames_after_eos`` more frames are kept,
   or the chunk ends at its length budget. A session whose next frame would be dropped ends now.
4. New latents are decoded by one batched streaming Mimi call (rows = slots); the first 5 ms of a chunk
   fade in, as the release does against the decoder's start-up click.

Text arrives as ``text`` events (LLM tokens or words); :class:`~models.tts.pocket.text.ChunkStream` turns
complete sentences into chunks at once (``chunking=eager``, the default: speech starts after the first
sentence) or exactly as the package groups the whole text (``chunking=exact``: a chunk is decided when more
text can no longer change it); ``flush`` (or ``final``) decides the rest. Text sent whole (``final``) is
grouped as the package does in both modes. Noise comes from a
per-session generator drawn in the package's order (one draw per backbone call, prompts included), so a
session's audio equals the package's for the same text, voice and seed, whatever batch it shares and however
its text was split into messages.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.audio.dsp import resample
from models.base import AudioFormat, ControlEvent, Pacing, StepInput, StepOutput, StreamSpec
from models.cache import RingKVCache
from models.errors import ParamError
from models.graphs import BucketGraphs
from models.params import WavUpload, decode_wav, unknown_params, wav_upload
from models.tts.pocket.checkpoint import PocketTTS, Voice
from models.tts.pocket.mimi import SlotDecoder
from models.tts.pocket.model import advance_written, attention_layers, claim
from models.tts.pocket.text import ChunkStream, TextRules, Tokenizer
from models.tts.sessions import EVENTS, SpeechGenerator, SpeechState, session_text_params

MAX_TOKENS_PER_CHUNK = 50  # the package's chunk size
MAX_TOKENS_PER_SEGMENT = 2 * MAX_TOKENS_PER_CHUNK  # hard cut of an oversized chunk
MIN_FRAMES_BEFORE_EOS = 6  # EOS is ignored on the first frames (some voices cross the threshold early)
TOKENS_PER_SECOND = 3.0  # the package's length budget: tokens / 3 + 2 s of frames
BUDGET_PADDING_S = 2.0
MAX_REFERENCE_S = 10.0  # a cloned voice's prompt (the window holds it with a chunk)
FADE_IN_S = 0.005


@dataclass
class Chunk:
    """Text tokens of one chunk and how many frames it keeps after EOS."""

    ids: list[int]
    frames_after_eos: int


@dataclass(kw_only=True)
class PocketState(SpeechState):
    """One session: its ``text`` is a :class:`ChunkStream`, its ``queue`` holds :class:`Chunk` items."""

    text: ChunkStream
    voice: Voice
    position: int = 0  # next position in the slot's sequence
    frame: int = 0  # latents generated in the running chunk (the package's generation_step)
    max_frames: int = 0
    eos_frame: int | None = None
    frames_after_eos: int = 0
    last: torch.Tensor | None = None  # (D,) normalised latent fed next (NaN: BOS)
    fade_in: bool = False


class PocketGenerator(SpeechGenerator):
    """Model `tts` serving a Pocket TTS release (see module docstring)."""

    name = "tts"

    def __init__(
        self,
        model: PocketTTS,
        tokenizer: Tokenizer,
        voices: Mapping[str, Voice],
        *,
        device: str = "cpu",
        max_sessions: int = 16,
        max_batch_size: int = 16,
        window: int = 512,
        sampler_steps: int = 1,
        temperature: float | None = None,
        eos_threshold: float | None = None,
        graphs: bool | None = None,
        chunking: str = "eager",
    ) -> None:
        if chunking not in ("eager", "exact"):
            raise ValueError(f"chunking must be 'eager' or 'exact', not {chunking!r}")
        self.eager_chunks = chunking == "eager"
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.cfg = model.cfg
        self.tokenizer = tokenizer
        self.rules = TextRules(**self.cfg.text_rules)
        self.voices = {name: Voice(v.k.to(self.device), v.v.to(self.device)) for name, v in voices.items()}
        if not self.voices and not model.has_voice_cloning:
            raise ValueError("a release without voice cloning needs at least one voice file")
        for name, voice in self.voices.items():
            if voice.num_frames > window // 2:
                raise ValueError(f"voice {name!r} has {voice.num_frames} frames; the window of {window} holds "
                                 f"at most {window // 2} (raise window=)")
        self.sampler_steps = int(sampler_steps)
        self.noise_std = math.sqrt(self.cfg.temperature if temperature is None else float(temperature))
        self.eos_threshold = self.cfg.eos_threshold if eos_threshold is None else float(eos_threshold)
        self.max_batch_size = min(int(max_batch_size), int(max_sessions))  # warm-up opens a full batch
        self.window = window
        self.samples_per_latent = self.cfg.samples_per_latent
        self.spec = StreamSpec(
            chunk_ms=1000.0 * self.samples_per_latent / self.cfg.sample_rate_hz,
            pacing=Pacing.CLOCK,
            output_audio=AudioFormat(self.cfg.sample_rate_hz),
            event_types=EVENTS,
        )
        shape = self.cfg.backbone
        self.cache = RingKVCache(num_layers=shape.num_layers, num_slots=max_sessions + 1, num_heads=shape.kv_heads,
                                 head_dim=shape.head_dim, window=window, device=self.device)
        self.pad_slot = self.cache.allocate()  # padding rows of a graph bucket write here, never a session's
        self.use_graphs = self.device.type == "cuda" if graphs is None else bool(graphs)
        self.pads_to_bucket = self.use_graphs
        self.decoder = SlotDecoder(model.mimi, max_sessions + 1, self.device, graphs=self.use_graphs)  # rows = slots
        self.fade = torch.linspace(0, 1, int(FADE_IN_S * self.cfg.sample_rate_hz), device=self.device)
        self._ar = BucketGraphs(self._ar_core, enabled=self.use_graphs)

    # -- sessions ---------------------------------------------------------------------------------------
    @property
    def default_voice(self) -> str | None:
        """The first shipped voice (None: only cloned voices)."""
        return sorted(self.voices)[0] if self.voices else None

    def validate_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``voice`` (a shipped voice), ``reference_audio`` (base64 WAV, cloning variant), ``seed``, ``text``.

        Cheap: an upload's header is checked here; its samples are read and encoded in prepare_session.
        """
        unknown_params("tts", params, {"voice", "reference_audio", "seed", "text", "language"})
        out: dict[str, Any] = {}
        if "reference_audio" in params:
            out["reference_audio"] = self.check_reference(params["reference_audio"])
        else:
            out["voice"] = self._voice_name(params.get("voice", self.default_voice))
        return {**out, **session_text_params(params)}

    def _voice_name(self, voice: Any) -> str:
        if voice not in self.voices:
            raise ParamError(f"unknown voice {voice!r}; known voices: {sorted(self.voices)}")
        return voice

    def check_reference(self, data: Any) -> WavUpload:
        """A base64 WAV's header: PCM, 8-48 kHz, 0.5-10 s (on the loop); only the cloning variant takes one."""
        if not self.model.has_voice_cloning:
            raise ParamError("these weights have no voice cloning (the gated variant adds it); pick a 'voice'")
        return wav_upload(data, "reference_audio", min_s=0.5, max_s=MAX_REFERENCE_S)

    @torch.inference_mode()
    def encode_reference(self, upload: WavUpload) -> Voice:
        """Decode, resample and encode a clip into its voice (Mimi's encoder and the voice prefix: the heavy part)."""
        audio, rate = decode_wav(upload)
        if float(np.abs(audio).max()) < 1e-3:
            raise ParamError("'reference_audio' is silent")
        audio = resample(audio, rate, self.cfg.sample_rate_hz)
        return self.model.voice_from_audio(torch.from_numpy(audio).to(self.device))

    def open_session(self, params: Mapping[str, Any]) -> PocketState:
        """Take a cache slot; params come from :meth:`prepare_session`."""
        voice = params.get("reference")  # an uploaded reference's, encoded by prepare_session
        if voice is None:
            voice = self.voices[params["voice"]]
        rng = torch.Generator(device=self.device)
        rng.manual_seed(params["seed"])
        state = PocketState(slot=self.cache.allocate(), voice=voice, rng=rng,
                            text=ChunkStream(self.tokenizer, self.rules, MAX_TOKENS_PER_CHUNK, self.eager_chunks))
        if params.get("text"):
            self.add_text(state, params["text"], final=True)
        return state

    def describe_session(self, state: PocketState, params: Mapping[str, Any]) -> dict[str, Any]:
        """``voice`` (a shipped voice, or "reference" for an uploaded one), ``seed``, ``text``."""
        voice = "reference" if "reference" in params else params["voice"]
        return {"voice": voice, "seed": params["seed"], "text": params["text"]}

    def close_session(self, state: PocketState) -> None:
        """Free the cache slot (the decoder's rows are the same slot)."""
        self.cache.free(state.slot)

    def set_voice(self, state: PocketState, event: ControlEvent) -> None:
        """``set_voice {voice | reference_audio}``: the voice from the next chunk."""
        if event.prepared is not None:
            state.voice = event.prepared
        else:
            state.voice = self.voices[self._voice_name(event.payload.get("voice"))]

    def end_segment(self, state: PocketState) -> None:
        """Stop the running chunk (the next one refills the slot)."""
        state.running = False

    def queue_segments(self, state: PocketState, chunks: list[str]) -> int:
        """Queue chunks as token ids with their frames after EOS (an oversized one cut to the window)."""
        count = 0
        for chunk in chunks:
            prompt, guess = self.rules.prepare(chunk)
            after = self.cfg.frames_after_eos if self.cfg.frames_after_eos is not None else guess + 2
            ids = self.tokenizer.encode(prompt)
            # a run-on sentence without commas can pass the chunker whole; the window must still hold voice,
            # text and frames, so it is cut (the package would generate it and likely skip words)
            for start in range(0, len(ids), MAX_TOKENS_PER_SEGMENT):
                state.queue.append(Chunk(ids[start: start + MAX_TOKENS_PER_SEGMENT], after))
                count += 1
        return count

    def describe(self) -> dict[str, Any]:
        """/healthz: the contract's summary plus voices and whether reference clips are taken."""
        return {**super().describe(), "voices": sorted(self.voices),
                "reference_audio": bool(self.model.has_voice_cloning)}

    # -- stepping ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, states: Sequence[PocketState], inputs: Sequence[StepInput], padded_batch_size: int
             ) -> list[StepOutput]:
        """One latent frame (80 ms of audio) for every session (see module docstring)."""
        for s in states:
            if not s.running and s.queue:
                self._start_chunk(s)
        running = [s for s in states if s.running]
        emitted: dict[int, torch.Tensor] = {}
        if running:
            latents, eos = self._sample(running, max(padded_batch_size, len(running)))
            for r, s in enumerate(running):
                if self._advance(s, latents[r], bool(eos[r])):
                    emitted[id(s)] = latents[r]
        audio: dict[int, np.ndarray] = {}
        if emitted:
            talking = [s for s in states if id(s) in emitted]
            raw = torch.stack([emitted[id(s)] for s in talking]) * self.model.flow_lm.emb_std \
                + self.model.flow_lm.emb_mean
            pad = max(padded_batch_size, len(talking)) if self.use_graphs else None
            decoded = self.decoder.decode([s.slot for s in talking], raw[:, None], pad_to=pad)  # (E, samples)
            for r, s in enumerate(talking):
                if s.fade_in:
                    decoded[r, : self.fade.numel()] *= self.fade
                    s.fade_in = False
            out = decoded.cpu().numpy().astype(np.float32)
            audio = {id(s): out[r] for r, s in enumerate(talking)}
        outputs = []
        for s in states:
            if id(s) in audio:
                outputs.append(StepOutput(audio=audio[id(s)]))
            elif s.busy:  # between chunks: a frame of silence keeps the clock going
                outputs.append(StepOutput(audio=np.zeros(self.samples_per_latent, np.float32)))
            else:
                outputs.append(StepOutput(idle=True))
        return outputs

    def _start_chunk(self, s: PocketState) -> None:
        """Voice keys/values into the slot, then the chunk's text prefilled after them."""
        chunk = s.queue.popleft()
        voice, num_tokens = s.voice, len(chunk.ids)
        budget = math.ceil((num_tokens / TOKENS_PER_SECOND + BUDGET_PADDING_S) * self.cfg.frame_rate_hz)
        room = self.window - voice.num_frames - num_tokens
        if room <= 0:  # cannot happen with chunks of <= 50 tokens and voices of <= window / 2
            return
        self.cache.clear([s.slot], keep_sink=False)
        index = self.cache.reserve([s.slot], torch.arange(voice.num_frames)[None])
        for layer in range(self.cfg.backbone.num_layers):
            self.cache.write(layer, [s.slot], index, voice.k[layer][None], voice.v[layer][None])
        ids = torch.tensor([chunk.ids], device=self.device)
        positions = voice.num_frames + torch.arange(num_tokens, device=self.device)[None]
        index = self.cache.reserve([s.slot], positions)
        attention_layers(self.model.flow_lm.transformer, self.model.flow_lm.conditioner(ids), positions,
                         self.cache, [s.slot], index, used=voice.num_frames + num_tokens)
        self._noise(s)  # the package samples (and discards) a latent after every prompt: keep its draws
        s.running, s.position, s.frame, s.eos_frame = True, voice.num_frames + num_tokens, 0, None
        s.max_frames, s.frames_after_eos = min(budget, room), chunk.frames_after_eos
        s.last = torch.full((self.cfg.latent_dim,), float("nan"), device=self.device)
        self.decoder.reset([s.slot])
        s.fade_in = True

    def _noise(self, s: PocketState) -> torch.Tensor:
        noise = torch.empty(self.cfg.latent_dim, device=self.device)
        return noise.normal_(0.0, self.noise_std, generator=s.rng)

    def _sample(self, running: list[PocketState], padded: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One batched backbone step and the heads: (latents (R, D), EOS (R,) bool).

        With graphs the batch is padded to the engine's bucket (rows past R use the padding slot) and the
        step replays one captured graph per bucket; eagerly only the entries in use are attended.
        """
        batch = len(running)
        rows = [s.slot for s in running]
        last = torch.stack([s.last for s in running])
        positions = [s.position for s in running]
        noise = torch.stack([self._noise(s) for s in running])
        if self.use_graphs and padded > batch:
            extra = padded - batch
            rows += [self.pad_slot] * extra
            positions += [0] * extra
            last = torch.cat([last, last.new_zeros(extra, last.shape[1])])
            noise = torch.cat([noise, noise.new_zeros(extra, noise.shape[1])])
        rows_t = torch.tensor(rows, device=self.device)
        positions_t = torch.tensor(positions, device=self.device)[:, None]
        if self.use_graphs:
            latents, eos_logit = self._ar(rows_t, positions_t, last, noise)
        else:
            latents, eos_logit = self._ar_core(rows_t, positions_t, last, noise, used=max(positions) + 1)
        advance_written(self.cache, rows[:batch], 1)
        return latents[:batch].clone(), (eos_logit[:batch] > self.eos_threshold).cpu()

    def _ar_core(self, rows: torch.Tensor, positions: torch.Tensor, last: torch.Tensor, noise: torch.Tensor,
                 used: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Tensors in, tensors out (capturable): feed the last latents, sample the next ones and EOS logits."""
        flow_lm = self.model.flow_lm
        claim(self.cache, rows, positions, positions)  # a chunk never wraps the ring: entry n sits at index n
        h = attention_layers(flow_lm.transformer, flow_lm.latent_in(last[:, None]), positions, self.cache, rows,
                             positions, used=used)
        return flow_lm.sample(flow_lm.heads(h[:, 0]), noise, self.sampler_steps)

    def _advance(self, s: PocketState, latent: torch.Tensor, eos: bool) -> bool:
        """Apply the stopping rule to a new frame; True when it is kept (spoken)."""
        if eos and s.eos_frame is None and s.frame >= MIN_FRAMES_BEFORE_EOS:
            s.eos_frame = s.frame
        if s.eos_frame is not None and s.frame >= s.eos_frame + s.frames_after_eos:
            s.running = False
            return False
        s.last, s.frame, s.position = latent, s.frame + 1, s.position + 1
        if s.frame >= s.max_frames:
            s.running = False
        elif s.eos_frame is not None and s.frame >= s.eos_frame + s.frames_after_eos:
            # the package would compute this frame only to drop it: skip the work, keep its noise draw
            self._noise(s)
            s.running = False
        return True


def load_generator(model: PocketTTS, tokenizer_path: Path, voices: Mapping[str, Voice], **options: Any
                   ) -> PocketGenerator:
    """A generator from loaded parts (the published entry and tests share this)."""
    tokenizer = Tokenizer(tokenizer_path, vocab_size=model.cfg.n_bins)
    return PocketGenerator(model, tokenizer, voices, **options)
