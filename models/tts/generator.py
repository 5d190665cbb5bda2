"""Model `tts`: serves the TTS model through the generator contract, many sessions batched per step.

Design note of the step loop. A step produces ``chunk_latents`` latents (``chunk_ms`` of audio) for every
session of the batch. For each latent slot: sessions that have a queued text segment and none running
prefill it ([SPK ; phonemes ; BOS] into their KV-cache slot); every running session samples its next
latent from the hidden state it holds (stop head + flow head, one batched call); those that continue feed
the latent back through one batched AR step; those that stop free their cache for the next segment. A slot
with no speech (between segments, after the end) gets the latent of silence, so the decoder's stream
never breaks. The chunk's latents are then decoded by the causal VAE with a fixed left context.

Per-session state is O(window): a KV-cache slot, the last ``context_latents`` latents, queued text (at most
``MAX_PENDING_TEXT_CHARS`` of it). Text is cut into segments when it arrives (linear, milliseconds for the
longest message) but phonemized one segment at a time, when the segment starts: one session's long text
costs each step at most a segment's phonemizing (~1 ms), never seconds of everyone's time.
Randomness comes from a per-session generator drawn in a fixed order, so a session's audio depends on
its seed and text only — not on the batch it shares, nor on how its text was split into messages.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.audio.dsp import resample
from models.audio.slot_vocoder import SlotVocoder
from models.base import AudioFormat, ControlEvent, Pacing, StepInput, StepOutput, StreamSpec
from models.cache import RingKVCache
from models.checkpoint_io import read_metadata
from models.errors import ParamError
from models.flow import check_temperature
from models.graphs import BucketGraphs
from models.params import WavUpload, decode_wav, unknown_params, wav_upload
from models.speech_text import (
    LANGUAGES,
    MAX_TEXT_CHARS,
    WORD_SEP,
    PhonemeVocab,
    TextSegmenter,
    check_language,
    phonemize,
)
from models.tts.backends import make_backend
from models.tts.checkpoint import Checkpoint, load_checkpoint
from models.tts.model import TTSConfig, TTSModel, speaker_stats
from models.tts.sessions import EVENTS, SpeechGenerator, SpeechState, session_text_params

DEFAULT_CHECKPOINT = os.path.join(os.path.dirname(__file__), "..", "..", "checkpoints", "tts_default.safetensors")
SAMPLE_RATE_HZ = 16_000
MAX_REFERENCE_S = 30.0
MAX_PENDING_TEXT_CHARS = MAX_TEXT_CHARS  # text waiting to be spoken, per session
MAX_SEGMENT_CHARS = 400  # longer segments (only giant "words") are cut before phonemizing (bounded per step)
GRAPH_CACHE_STEP = 64  # with CUDA graphs, the attended cache length is rounded up to this


@dataclass(kw_only=True)
class TTSState(SpeechState):
    """One session.

    Its ``text`` is a :class:`TextSegmenter`; its ``queue`` holds (text, language) until phonemized when the
    segment starts, then phoneme ids.
    """

    text: TextSegmenter
    language: str
    speaker: torch.Tensor  # (2 * latent_dim,) reference-encoder input
    num_queued_chars: int = 0  # characters of text in the queue (bounded, with the segmenter's)
    position: int = 0  # next cache position in the running segment
    num_latents: int = 0  # latents produced in the running segment
    max_latents: int = 0
    hidden: torch.Tensor | None = None  # (C,) hidden state predicting the next latent
    num_samples: int = 0  # audio samples produced so far


class TTSGenerator(SpeechGenerator):
    """Model `tts`: text in (incrementally), 16 kHz speech out, paced by the output clock."""

    name = "tts"

    def __init__(
        self,
        *,
        device: str = "cpu",
        config: str = "default",
        checkpoint: str | None = None,
        backend: str = "torch",
        chunk_latents: int = 2,
        max_sessions: int = 64,
        max_batch_size: int = 16,
        flow_steps: int | None = None,
        cfg_scale: float | None = None,
        temperature: float | None = None,
        max_words: int = 10,
        num_threads: int = 1,
        cuda_graphs: bool = True,
    ) -> None:
        self.device = torch.device(device)
        ckpt = self._load(config, checkpoint)
        self.model, self.vae = ckpt.model.to(self.device), ckpt.vae.to(self.device)
        cfg = self.model.cfg
        if flow_steps is not None:
            cfg.flow_steps = int(flow_steps)
        if cfg_scale is not None:
            cfg.cfg_scale = float(cfg_scale)
        cfg.temperature = check_temperature(cfg.temperature if temperature is None else temperature)
        self.cfg: TTSConfig = cfg
        self.vocab = PhonemeVocab(ckpt.phonemes)
        self.voice_stats, self.voice_info = ckpt.voice_stats, ckpt.voice_info
        self.silence_raw = ckpt.silence.to(self.device)  # (D,) un-normalised latent of silence
        self.silence = self.vae.normalize(self.silence_raw[None, :, None])[0, :, 0]  # normalised
        self.backend = make_backend(backend, self.model, num_threads)
        # On CUDA the AR step and the flow head replay one captured graph per input shape (batch size, and the
        # cache length rounded up to GRAPH_CACHE_STEP entries): eager launches dominate a GPU step otherwise.
        graphs = cuda_graphs and self.device.type == "cuda" and backend == "torch"
        self._ar = BucketGraphs(self.backend.ar, enabled=graphs)
        self._sample = BucketGraphs(self.backend.sample, enabled=graphs)
        self.chunk_latents = chunk_latents
        self.max_words = max_words
        self.max_batch_size = max_batch_size
        hop = cfg.vae.hop
        self.spec = StreamSpec(
            chunk_ms=1000.0 * chunk_latents * hop / SAMPLE_RATE_HZ,
            pacing=Pacing.CLOCK,
            output_audio=AudioFormat(SAMPLE_RATE_HZ),
            lookahead_ms=1000.0 * self.vae.delay_samples / SAMPLE_RATE_HZ,
            event_types=EVENTS,
        )
        heads = cfg.num_heads
        self.cache = RingKVCache(
            num_layers=cfg.num_layers, num_slots=max_sessions, num_heads=heads, head_dim=cfg.dim // heads,
            window=cfg.window, device=self.device,
        )
        self.vocoder = SlotVocoder(self.vae, max_sessions, self.silence_raw, self.device)  # rows = cache slots

    def _load(self, config: str, checkpoint: str | None) -> Checkpoint:
        path = checkpoint or DEFAULT_CHECKPOINT
        if config == "default":
            if not os.path.exists(path):
                raise ValueError(f"TTS checkpoint {path} not found (train it: scripts/train_tts.py)")
            return load_checkpoint(path, str(self.device))
        if config != "paper":
            raise ValueError(f"unknown TTS config {config!r}; use 'default' or 'paper'")
        # CLEAR-Base sizes with random weights (GPU benchmarks): vocabulary and voices from the default.
        meta = read_metadata(path)
        phonemes, voices = meta["phonemes"], meta["voices"]
        cfg = TTSConfig.paper(vocab_size=len(phonemes))
        from models.audio.vae import WaveformVAE

        torch.manual_seed(0)
        model, vae = TTSModel(cfg).eval(), WaveformVAE(cfg.vae).eval()
        stats = {v: torch.cat([torch.zeros(cfg.latent_dim), torch.ones(cfg.latent_dim)]) for v in voices}
        return Checkpoint(model, vae, torch.zeros(cfg.latent_dim), phonemes, stats, voices)

    # -- sessions ---------------------------------------------------------------------------------------
    def validate_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``voice`` (a trained voice id), ``reference_audio`` (base64 WAV), ``language``, ``seed``, ``text``.

        Cheap: an upload's header is checked here, its samples are read and encoded in prepare_session.
        """
        unknown_params("tts", params, {"voice", "reference_audio", "language", "seed", "text"})
        out: dict[str, Any] = {"voice": self._voice(params.get("voice", self.default_voice))}
        out["language"] = check_language(params.get("language", self.voice_info[out["voice"]]["language"]))
        if "reference_audio" in params:
            out["reference_audio"] = self.check_reference(params["reference_audio"])
            out["language"] = check_language(params.get("language", LANGUAGES[0]))
        return {**out, **session_text_params(params)}

    @property
    def default_voice(self) -> str:
        """The first trained voice."""
        return sorted(self.voice_stats)[0]

    def _voice(self, voice: Any) -> str:
        if voice not in self.voice_stats:
            raise ParamError(f"unknown voice {voice!r}; known voices: {sorted(self.voice_stats)}")
        return voice

    def check_reference(self, data: Any) -> WavUpload:
        """A base64 WAV's header: PCM, 8-48 kHz, 0.5-30 s (on the loop)."""
        return wav_upload(data, "reference_audio", min_s=0.5, max_s=MAX_REFERENCE_S)

    def reference_speaker(self, data: Any) -> torch.Tensor:
        """Speaker vector of a base64 WAV (any rate, 0.5-30 s) in the calling thread; ParamError if unusable."""
        return self.encode_reference(self.check_reference(data))

    @torch.inference_mode()
    def encode_reference(self, upload: WavUpload) -> torch.Tensor:
        """Decode, resample and encode a reference into its speaker vector (the VAE encoder: the heavy part)."""
        audio, rate = decode_wav(upload)
        audio = resample(audio, rate, SAMPLE_RATE_HZ)
        if float(np.abs(audio).max()) < 1e-3:
            raise ParamError("'reference_audio' is silent")
        audio = 0.7 * audio / float(np.abs(audio).max())  # the corpus's peak level
        hop = self.cfg.vae.hop
        audio = audio[: len(audio) // hop * hop]
        mean, _ = self.vae.encode(torch.from_numpy(audio)[None].to(self.device))
        return speaker_stats(self.vae.normalize(mean)[0].T)

    def open_session(self, params: Mapping[str, Any]) -> TTSState:
        """Allocate a cache slot; params come from :meth:`prepare_session`."""
        rng = torch.Generator(device=self.device)
        rng.manual_seed(params["seed"])
        speaker = params.get("reference")  # an uploaded reference's, encoded by prepare_session
        state = TTSState(
            slot=self.cache.allocate(),
            language=params["language"],
            speaker=self.voice_stats[params["voice"]] if speaker is None else speaker,
            rng=rng,
            text=TextSegmenter(self.max_words),
        )
        self.vocoder.reset(state.slot)
        if params.get("text"):
            self.add_text(state, params["text"], final=True)
        return state

    def describe(self) -> dict[str, Any]:
        """/healthz: the contract's summary plus the trained voices (with their espeak-ng origin, for labels)."""
        voices = [{"id": v, **self.voice_info.get(v, {})} for v in sorted(self.voice_stats)]
        return {**super().describe(), "voices": voices, "reference_audio": True}

    def describe_session(self, state: TTSState, params: Mapping[str, Any]) -> dict[str, Any]:
        """``voice`` (a trained id, or "reference" for an uploaded one), ``language``, ``seed``, ``text``."""
        voice = "reference" if "reference" in params else params["voice"]
        return {"voice": voice, "language": params["language"], "seed": params["seed"], "text": params["text"]}

    def close_session(self, state: TTSState) -> None:
        """Free the cache slot."""
        self.cache.free(state.slot)

    def set_voice(self, state: TTSState, event: ControlEvent) -> None:
        """``set_voice {voice | reference_audio, language?}``: the speaker vector from the next segment."""
        p = event.payload
        if event.prepared is not None:
            state.speaker = event.prepared
        else:
            voice = self._voice(p.get("voice"))
            state.speaker = self.voice_stats[voice]
            state.language = self.voice_info[voice]["language"]
        state.language = check_language(p.get("language", state.language))

    def check_text(self, state: TTSState, text: str) -> None:
        """The per-message limit, and at most ``MAX_PENDING_TEXT_CHARS`` waiting to be spoken."""
        super().check_text(state, text)
        waiting = state.num_queued_chars + len(state.text.pending)
        if waiting + len(text) > MAX_PENDING_TEXT_CHARS:
            raise ParamError(f"{waiting} characters of text are waiting to be spoken; {len(text)} more would pass "
                             f"the limit of {MAX_PENDING_TEXT_CHARS} (send more as it is spoken)")

    def drop_text(self, state: TTSState) -> None:
        """Barge-in: the waiting text goes, with its count."""
        super().drop_text(state)
        state.num_queued_chars = 0

    def queue_segments(self, state: TTSState, segments: list[str]) -> int:
        """Queue segments to be phonemized when they start (a giant word is cut to bounded pieces first)."""
        count = 0
        for segment in segments:
            for start in range(0, len(segment), MAX_SEGMENT_CHARS):
                piece = segment[start : start + MAX_SEGMENT_CHARS]
                state.queue.append((piece, state.language))
                state.num_queued_chars += len(piece)
                count += 1
        return count

    def _next_phonemes(self, state: TTSState) -> list[int] | None:
        """Phoneme ids of the next queued segment (phonemized now, split to the model's limit); None: no more."""
        while state.queue:
            head = state.queue.popleft()
            if not isinstance(head, tuple):
                return head
            text, language = head
            state.num_queued_chars -= len(text)
            pieces = [self.vocab.encode(p) for p in _split_tokens(phonemize(text, language), self.cfg.max_phonemes)]
            state.queue.extendleft(reversed(pieces[1:]))
            if pieces:
                return pieces[0]
        return None

    # -- stepping ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, states: Sequence[TTSState], inputs: Sequence[StepInput], padded_batch_size: int) -> list[StepOutput]:
        """Produce one chunk of audio for every session (see module docstring)."""
        idle = [not s.busy for s in states]
        latents = self.silence.expand(len(states), self.chunk_latents, -1).clone()  # (B, K, D) normalised
        for j in range(self.chunk_latents):
            for s in states:
                if not s.running and s.queue and (ids := self._next_phonemes(s)) is not None:
                    self._start_segment(s, ids)
            running = [i for i, s in enumerate(states) if s.running]
            if not running:
                continue
            hidden = torch.stack([states[i].hidden for i in running])  # (R, C)
            noise = torch.stack([
                torch.randn(self.cfg.latent_dim, generator=states[i].rng, device=self.device) for i in running
            ])
            stop, sampled = self._sample(hidden, noise)
            stops = (stop > 0.5).tolist()  # one device-to-host copy for the batch, not one per session
            cont = []
            for r, i in enumerate(running):
                s = states[i]
                if stops[r] or s.num_latents >= s.max_latents:
                    self.end_segment(s)
                else:
                    latents[i, j] = sampled[r]
                    cont.append((r, i))
            if cont:
                self._advance([states[i] for _, i in cont], sampled[[r for r, _ in cont]])
        audio = self._decode(states, latents)
        return [StepOutput(idle=True) if idle[b] else StepOutput(audio=audio[b]) for b in range(len(states))]

    def _start_segment(self, s: TTSState, ids: list[int]) -> None:
        """Prefill [SPK ; phonemes ; BOS] of a segment's phoneme ids into the session's cache slot."""
        self.cache.clear([s.slot], keep_sink=False)
        phonemes = torch.tensor([ids], device=self.device)
        x = self.model.prefix(s.speaker[None], phonemes)  # (1, T, C)
        h = self._ar_write([s], x, torch.arange(x.shape[1], device=self.device)[None])
        s.hidden, s.position, s.num_latents = h[0, -1], x.shape[1], 0
        s.max_latents, s.running = self.cfg.max_latents(len(ids)), True

    def _advance(self, states: list[TTSState], latents: torch.Tensor) -> None:
        """Feed each session's new latent (R, D) through one batched AR step."""
        x = self.model.latent_in(latents)[:, None]  # (R, 1, C)
        positions = torch.tensor([[s.position] for s in states], device=self.device)
        h = self._ar_write(states, x, positions)
        for r, s in enumerate(states):
            s.hidden, s.position, s.num_latents = h[r, -1], s.position + 1, s.num_latents + 1

    def _ar_write(self, states: list[TTSState], x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Run new tokens against the sessions' caches, then store their keys/values; returns hidden states."""
        slots = [s.slot for s in states]
        t = x.shape[1]
        # A segment never wraps the ring (it fits the window; no sink), so entry n sits at index n: only
        # the first max(position) entries can be visible.
        used = int(positions.min()) if t > 1 else max(s.position for s in states)
        graphed = self._ar.enabled and t == 1  # a prefill's length varies too much to capture: eager
        if graphed:  # fewer shapes to capture; the extra entries are empty (label -1), so masked
            used = min(-(-used // GRAPH_CACHE_STEP) * GRAPH_CACHE_STEP, self.cache.capacity)
        cached = self.cache.mask(slots, positions)[..., :used]  # (B, 1, T, used): before the new entries exist
        causal = torch.ones(t, t, dtype=torch.bool, device=self.device).tril().expand(len(slots), 1, t, t)
        mask = torch.cat([cached, causal], dim=-1)
        k_cache, v_cache = self.cache.k[:, slots, :used], self.cache.v[:, slots, :used]  # (L, B, used, H, D)
        h, new_k, new_v = (self._ar if graphed else self.backend.ar)(x, positions, k_cache, v_cache, mask)
        index = self.cache.reserve(slots, positions)
        for layer in range(self.cfg.num_layers):
            self.cache.write(layer, slots, index, new_k[layer], new_v[layer])
        return h.clone() if graphed else h  # a graph's output is overwritten by its next replay

    def end_segment(self, s: TTSState) -> None:
        """Stop the running segment and empty its cache slot."""
        s.running, s.hidden = False, None
        self.cache.clear([s.slot], keep_sink=False)

    def _decode(self, states: Sequence[TTSState], latents: torch.Tensor) -> np.ndarray:
        """Decode (B, K, D) normalised latents, carrying each session's vocoder state; returns (B, K * hop)."""
        audio = self.vocoder.decode([s.slot for s in states], latents)  # (B, K * hop)
        for s in states:
            s.num_samples += audio.shape[1]
        return audio.cpu().numpy().astype(np.float32)


def _split_tokens(tokens: list[str], limit: int) -> list[list[str]]:
    """Split a phoneme sequence longer than ``limit`` at word boundaries (or hard, inside a huge word)."""
    out = []
    while len(tokens) > limit:
        cut = max((i for i in range(1, limit) if tokens[i] == WORD_SEP), default=limit)
        out.append(tokens[:cut])
        tokens = tokens[cut + 1 if cut < len(tokens) and tokens[cut] == WORD_SEP else cut :]
    if tokens:
        out.append(tokens)
    return out
