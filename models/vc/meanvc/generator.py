"""Model `vc` on MeanVC's published networks: mic audio in, converted audio out, sessions batched per step.

Design note of the step loop (the chunk loop itself: ``models/vc/meanvc/stream.py``). For a batch of
sessions: each session's chunk goes through the published ASR (TorchScript, one call per session: its
exported chunk interface has no batch dimension) to content frames at the mel rate; then, for all sessions
at once, the MRTE makes the content timbre-aware against each session's reference (its projections
computed once per reference and kept per slot), the DiT denoises the chunk in 1 or 2 mean-flow passes
against the session's ring-cache slot (the previous clean chunk's keys/values are written there after
the last pass), and the Vocos decodes it with its 3 frames of left context, cross-fading the seam. On a GPU
the batched part runs as one captured CUDA graph per batch bucket and step count.

Per-session state lives in preallocated per-slot tensors (ring cache, previous clean chunk, speaker vector,
reference memory, vocoder context) plus the ASR's caches (bounded by its 2 chunks of left context): nothing
grows with stream length. Noise comes from a per-session generator, so a session's output depends on its
input, reference and seed, never on its batch.

Output chunk k covers input chunk k, 65 ms late: 45 ms of ASR look-ahead (the fbank window and the
conformer's subsampling context past the chunk; zeros at the stream's start) and 20 ms of vocoder seam.
A reference's speaker vector comes from WavLM-Large + ECAPA, which is heavy (6 s of a CPU core for a 10 s
clip): an upload is decoded and checked when validated (on the loop, cheap) and embedded on a thread of its
own (``async_reference``), so the worker keeps stepping every session; until it is ready a new session
outputs silence and a switching one keeps its old voice, and the step that applies it says
``reference_set``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch

from models.audio.dsp import read_wav, resample, trim_silence
from models.base import AudioFormat, ControlEvent, Generator, Pacing, StepInput, StepOutput, StreamSpec
from models.cache import RingKVCache, SlotAllocator
from models.errors import ParamError
from models.graphs import BucketGraphs
from models.params import base64_param
from models.vc.meanvc.dit import MeanVCDiT
from models.vc.meanvc.features import MEL_HOP, SAMPLE_RATE_HZ, MeanVCMel
from models.vc.meanvc.speaker import SpeakerModel
from models.vc.meanvc.stream import LOOKAHEAD_SAMPLES, SCHEDULES, ContentState, ContentStream, denoise_chunk
from models.vc.meanvc.vocos import FADE_FRAMES, StreamingVocoder, Vocos

PARAMS = frozenset({"voice", "reference_audio", "steps", "seed"})
EVENTS = frozenset({"set_reference", "set_steps"})
MIN_REFERENCE_S = 1.0  # of speech after trimming silence
MAX_REFERENCE_UPLOAD_S = 30.0
MAX_PENDING = 64


@dataclass
class MeanVCState:
    """One session: slot, position, sampling settings, noise generator and the ASR's streaming state."""

    slot: int
    rng: torch.Generator
    steps: int
    voice: str
    content: ContentState
    num_frames: int = 0  # mel frames generated so far (the next chunk's first position)
    has_previous: bool = False  # a clean chunk to run as the cache chunk (False at the start, after a switch)
    reference_parts: list[str] = field(default_factory=list)
    waiting: Future | None = None  # an uploaded reference being embedded in the background
    silent: bool = False  # no reference yet (its upload is still being embedded): the output is silence


def _steps(value: Any) -> int:
    if isinstance(value, bool) or value not in SCHEDULES:
        raise ParamError(f"'steps' must be 1 or 2, got {value!r}")
    return int(value)


def _bucket(num: int, padded: int) -> int:
    """The engine's bucket for the whole batch, or the next power of two for a smaller group of it."""
    return padded if num == padded else min(padded, 1 << max(0, num - 1).bit_length())


class MeanVCGenerator(Generator):
    """Model `vc` served from MeanVC's published weights (``vc:weights=DIR``)."""

    name = "vc"

    def __init__(
        self,
        *,
        dit: MeanVCDiT,
        asr: torch.jit.ScriptModule,
        vocos: Vocos,
        speaker: SpeakerModel,
        voices: Mapping[str, np.ndarray],
        device: str = "cpu",
        chunk_ms: float = 200.0,
        max_sessions: int = 64,
        max_batch_size: int = 16,
        num_threads: int | None = None,
        cuda_graphs: bool = True,
        max_reference_s: float = 10.0,
        context_frames: int = 100,
        asr_threads: int = 1,
        async_reference: bool = True,
    ) -> None:
        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.device = torch.device(device)
        self.dit, self.vocos, self.speaker = dit.to(self.device).eval(), vocos.to(self.device).eval(), speaker
        self.asr = asr.to(self.device)
        frames = float(chunk_ms) / 10.0
        if frames != int(frames) or int(frames) % 4 or not 4 <= frames <= 100:
            raise ValueError(f"chunk_ms must be a multiple of 40 ms up to 1 s (MeanVC: 200, 160, 80), got {chunk_ms}")
        self.chunk_frames = c = int(frames)
        # the released DiT looks back 5 chunks of 20 frames: other chunk sizes keep about that many frames
        self.lookback = max(1, int(context_frames) // c)
        self.max_batch_size = max_batch_size
        self.pads_to_bucket = self.device.type == "cuda"
        fmt = AudioFormat(SAMPLE_RATE_HZ)
        lookahead_ms = 1000.0 * (LOOKAHEAD_SAMPLES + FADE_FRAMES * MEL_HOP) / SAMPLE_RATE_HZ
        self.spec = StreamSpec(chunk_ms=float(chunk_ms), pacing=Pacing.INPUT, input_audio=fmt, output_audio=fmt,
                               lookahead_ms=lookahead_ms, event_types=EVENTS)
        cfg = dit.cfg
        rows, dev = max_sessions + 1, self.device
        self._slots = SlotAllocator(max_sessions)
        self._pad_slot = max_sessions  # scratch row for the padding of a bucket
        self.cache = RingKVCache(num_layers=cfg.depth, num_slots=rows, num_heads=cfg.heads, head_dim=cfg.head_dim,
                                 window=(self.lookback + 1) * c, device=dev)
        self._content = ContentStream(self.asr, c, dev)
        self._mel = MeanVCMel().to(dev)
        self.max_reference_s = float(max_reference_s)
        self.num_ref_frames = int(self.max_reference_s * SAMPLE_RATE_HZ) // MEL_HOP + 1
        d_k = cfg.bn_dim // cfg.mrte_heads
        self._memory = [(torch.zeros(rows, cfg.mrte_heads, self.num_ref_frames, d_k, device=dev),
                         torch.zeros(rows, cfg.mrte_heads, self.num_ref_frames, d_k, device=dev))
                        for _ in range(cfg.mrte_blocks)]
        self._memory_mask = torch.zeros(rows, self.num_ref_frames, dtype=torch.bool, device=dev)
        self._memory_mask[:, 0] = True  # the pad row attends to something
        self._spk = torch.zeros(rows, cfg.spk_dim, device=dev)
        self._previous = torch.zeros(rows, c, cfg.mel_dim, device=dev)
        self._vocoder = StreamingVocoder(self.vocos, rows, dev)
        self._voices = {name: self._embed(audio) for name, audio in sorted(voices.items())}
        self._pending: OrderedDict[int, np.ndarray] = OrderedDict()
        self._num_pending = 0
        # The ASR runs once per session; TorchScript releases the GIL while it runs, so threads overlap the
        # sessions' calls (their host overhead, on a GPU their launches). 1: in turn, on the worker thread.
        self._asr_pool = ThreadPoolExecutor(int(asr_threads), "meanvc-asr") if int(asr_threads) > 1 else None
        # An upload's embedding (WavLM-Large: ~6 s of a CPU core for 10 s of audio) runs on its own thread, so
        # the worker keeps stepping every session meanwhile; the session keeps its voice (or, at its start,
        # outputs silence) until it is ready. Off: embedded on the worker, in turn (deterministic timing).
        self._reference_pool = ThreadPoolExecutor(1, "meanvc-reference") if async_reference else None
        self._graphs = {n: BucketGraphs(partial(self._core, num_steps=n), enabled=cuda_graphs and self.pads_to_bucket)
                        for n in SCHEDULES}

    # -- references ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def _embed(self, audio: np.ndarray) -> tuple[torch.Tensor, ...]:
        """Reference audio at 16 kHz -> speaker vector, per-layer MRTE keys/values and their mask (one slot's)."""
        audio = audio[: int(self.max_reference_s * SAMPLE_RATE_HZ)]
        wav = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None]
        spk = self.speaker(wav).to(self.device)  # (1, spk_dim); the speaker model stays on its own device
        prompt = self._mel(wav.to(self.device))  # (1, S, mel)
        memory = self.dit.timbre_encoder.memory(prompt, spk)
        num = prompt.shape[1]
        pad = self.num_ref_frames - num
        flat = [torch.nn.functional.pad(t[0], (0, 0, 0, pad)) for kv in memory for t in kv]
        mask = torch.arange(self.num_ref_frames, device=self.device) < num
        return (spk[0], mask, *flat)

    def _embed_later(self, audio: np.ndarray) -> Future:
        """Start embedding on the reference thread."""
        assert self._reference_pool is not None
        return self._reference_pool.submit(self._embed, audio)

    def _set_reference(self, slot: int, reference: tuple[torch.Tensor, ...]) -> None:
        spk, mask, *flat = reference
        self._spk[slot], self._memory_mask[slot] = spk, mask
        for i, (k, v) in enumerate(self._memory):
            k[slot], v[slot] = flat[2 * i], flat[2 * i + 1]

    def _decode_upload(self, data: Any) -> np.ndarray:
        """A base64 WAV reference (any rate) -> 16 kHz speech; ParamError when unusable. Cheap: no model runs."""
        raw = base64_param(data, "reference_audio", "a WAV file")
        try:
            audio, rate = read_wav(raw)
        except ValueError as e:
            raise ParamError(f"'reference_audio' is not a usable WAV: {e}") from e
        if not np.isfinite(audio).all():
            raise ParamError("'reference_audio' has NaN or infinite samples")
        if len(audio) / rate > MAX_REFERENCE_UPLOAD_S:
            seconds = len(audio) / rate
            raise ParamError(f"'reference_audio' is {seconds:.1f} s; send at most {MAX_REFERENCE_UPLOAD_S:g} s")
        audio = resample(audio, rate, SAMPLE_RATE_HZ)
        peak = float(np.abs(audio).max()) if len(audio) else 0.0
        if peak < 1e-3:
            raise ParamError("'reference_audio' is silent")
        speech = trim_silence(audio, SAMPLE_RATE_HZ)
        if len(speech) < MIN_REFERENCE_S * SAMPLE_RATE_HZ:
            raise ParamError(f"'reference_audio' is too short: {len(speech) / SAMPLE_RATE_HZ:.1f} s of speech, "
                             f"{MIN_REFERENCE_S:g}-{self.max_reference_s:g} s are needed")
        return speech.astype(np.float32)  # at its own level, as MeanVC reads a reference (its mel is not level-free)

    def _voice(self, payload: Mapping[str, Any]) -> str:
        voice = payload.get("voice") or self.default_voice
        if voice not in self._voices:
            raise ParamError(f"unknown voice {voice!r}; voices: {sorted(self._voices)} (or send 'reference_audio')")
        return voice

    @property
    def default_voice(self) -> str:
        """The first voice of the weights folder."""
        return next(iter(self._voices))

    # -- sessions -----------------------------------------------------------------------------------------
    def validate_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``voice`` (a clip of the weights folder) or ``reference_audio`` (base64 WAV), ``steps``, ``seed``."""
        unknown = set(params) - PARAMS
        if unknown:
            raise ParamError(f"model 'vc' does not know parameters {sorted(unknown)}; it takes {sorted(PARAMS)}")
        out: dict[str, Any] = {"steps": _steps(params.get("steps", 1))}
        seed = params.get("seed", int.from_bytes(os.urandom(4), "little"))
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ParamError(f"'seed' must be an integer, got {seed!r}")
        out["seed"] = seed
        if "reference_audio" in params:
            self._num_pending += 1
            audio = self._decode_upload(params["reference_audio"])
            # async: the embedding starts now, off the event loop; otherwise the worker embeds it at open
            self._pending[self._num_pending] = audio if self._reference_pool is None else self._embed_later(audio)
            while len(self._pending) > MAX_PENDING:
                self._pending.popitem(last=False)
            out |= {"voice": "reference", "reference_id": self._num_pending}
        else:
            out["voice"] = self._voice(params)
        return out

    def open_session(self, params: Mapping[str, Any]) -> MeanVCState:
        """Take a slot, reset its state and set its reference (an upload is embedded here, on the worker)."""
        waiting = None
        if params["voice"] == "reference":
            pending = self._pending.pop(params["reference_id"], None)
            if pending is None:
                raise ParamError("the session's reference expired before it started; start again")
            if isinstance(pending, Future) and not pending.done():
                reference, waiting = None, pending
            else:
                reference = pending.result() if isinstance(pending, Future) else self._embed(pending)
        else:
            reference = self._voices[params["voice"]]
        slot = self._slots.allocate()
        self.cache.clear([slot], keep_sink=False)
        self._vocoder.reset([slot])
        if reference is not None:
            self._set_reference(slot, reference)
        rng = torch.Generator()  # on the host: the same noise on any device, whatever the batch
        rng.manual_seed(params["seed"])
        return MeanVCState(slot=slot, rng=rng, steps=params["steps"], voice=params["voice"],
                           content=self._content.initial_state(), waiting=waiting, silent=waiting is not None)

    def close_session(self, state: MeanVCState) -> None:
        """Free the slot."""
        self._slots.free(state.slot)

    @torch.inference_mode()
    def handle_event(self, state: MeanVCState, event: ControlEvent) -> list[dict[str, Any]]:
        """``set_reference {voice | reference_audio | reference_audio_part, final}``, ``set_steps {steps}``.

        A new reference takes effect at the next chunk: speaker vector and reference memory replaced, the
        DiT's context dropped (the chunk is generated as at a stream's start), the vocoder's context kept.
        """
        if event.type == "set_steps":
            state.steps = _steps(event.payload.get("steps"))
            return [{"type": "steps_set", "steps": state.steps}]
        if event.type != "set_reference":
            return super().handle_event(state, event)
        payload = event.payload
        if "reference_audio_part" in payload:
            part = payload["reference_audio_part"]
            if not isinstance(part, str):
                state.reference_parts = []
                raise ParamError("'reference_audio_part' must be a piece of a base64-encoded WAV file")
            state.reference_parts.append(part)
            if sum(map(len, state.reference_parts)) > MAX_REFERENCE_UPLOAD_S * 48_000 * 8 / 3 + 4096:
                state.reference_parts = []
                raise ParamError(f"the reference sent in parts is over {MAX_REFERENCE_UPLOAD_S:g} s of 48 kHz audio")
            if not payload.get("final", False):
                return []
            payload, state.reference_parts = {"reference_audio": "".join(state.reference_parts)}, []
        if "reference_audio" in payload:
            audio = self._decode_upload(payload["reference_audio"])
            if self._reference_pool is not None:  # applied by a later step, which then says reference_set
                state.waiting = self._embed_later(audio)
                return []
            voice, reference = "reference", self._embed(audio)
        else:
            voice = self._voice(payload)
            reference = self._voices[voice]
        self._switch(state, voice, reference)
        return [{"type": "reference_set", "voice": voice}]

    def _switch(self, state: MeanVCState, voice: str, reference: tuple[torch.Tensor, ...]) -> None:
        """A new reference from the next chunk: the DiT's context dropped, the vocoder's kept (no click)."""
        self._set_reference(state.slot, reference)
        self.cache.clear([state.slot], keep_sink=False)
        state.has_previous, state.voice, state.silent, state.waiting = False, voice, False, None

    def _apply_ready_references(self, states: Sequence[MeanVCState]) -> dict[int, list[dict[str, Any]]]:
        """Switch the sessions whose background embedding finished; their notices, by batch index."""
        notices: dict[int, list[dict[str, Any]]] = {}
        for i, s in enumerate(states):
            if s.waiting is None or not s.waiting.done():
                continue
            try:
                reference = s.waiting.result()
            except Exception as e:  # a fault in one upload ends nothing: the session keeps its voice
                s.waiting = None
                notices[i] = [{"type": "error", "code": "bad_params", "fatal": False,
                               "message": f"the reference could not be embedded: {type(e).__name__}: {e}"}]
                continue
            self._switch(s, "reference", reference)
            notices[i] = [{"type": "reference_set", "voice": "reference"}]
        return notices

    # -- stepping -----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, states: Sequence[MeanVCState], inputs: Sequence[StepInput],
             padded_batch_size: int) -> list[StepOutput]:
        """Convert one chunk for every session (see the module docstring); one core call per step count."""
        c, mel_dim = self.chunk_frames, self.dit.cfg.mel_dim
        audio = np.nan_to_num(np.stack([i.audio for i in inputs]), nan=0.0, posinf=0.0, neginf=0.0).clip(-1, 1)
        chunk = torch.from_numpy(audio.astype(np.float32)).to(self.device)
        if self._asr_pool is None:
            content = [self._content(s.content, chunk[i]) for i, s in enumerate(states)]  # (1, C, bn) each
        else:
            content = list(self._asr_pool.map(self._content_no_grad, [s.content for s in states], chunk.unbind(0)))
        out: list[StepOutput | None] = [None] * len(states)
        notices = self._apply_ready_references(states)
        for i, s in enumerate(states):  # no reference yet: the ASR has run (its context stays current), silence
            if s.silent:
                out[i] = StepOutput(audio=np.zeros(c * MEL_HOP, np.float32))
        span = torch.arange(c)
        for num_steps in sorted({s.steps for s in states if not s.silent}):
            index = [i for i, s in enumerate(states) if s.steps == num_steps and not s.silent]
            group = [states[i] for i in index]
            size = _bucket(len(index), padded_batch_size) if self.pads_to_bucket else len(index)
            pad = size - len(index)
            slots = [s.slot for s in group] + [self._pad_slot] * pad
            offset = torch.tensor([s.num_frames for s in group] + [c] * pad)
            has_previous = torch.tensor([s.has_previous for s in group] + [False] * pad)
            # The previous chunk's entries, labelled with its positions; never visible (-1) without one.
            labels = torch.where(has_previous[:, None], offset[:, None] - c + span, torch.full((size, c), -1))
            rows = torch.tensor(slots, device=self.device)
            entries = self.cache.entry_index(rows, self.cache.reserve(slots, labels))
            noise = torch.zeros(size, c, mel_dim)
            for j, s in enumerate(group):
                noise[j] = torch.randn(c, mel_dim, generator=s.rng)
            noise = noise.to(self.device)
            bn = torch.cat([content[i] for i in index] + [torch.zeros_like(content[0])] * pad)
            wav = self._graphs[num_steps](rows, entries, noise, bn, has_previous.to(self.device),
                                          offset.to(self.device))
            wav = wav[: len(index)].clamp(-1, 1).float().cpu().numpy()
            for j, (i, s) in enumerate(zip(index, group, strict=True)):
                s.num_frames += c
                s.has_previous = True
                out[i] = StepOutput(audio=wav[j])
        for i, extra in notices.items():
            out[i].notices.extend(extra)  # type: ignore[union-attr]
        return out  # type: ignore[return-value]

    def _content_no_grad(self, state: ContentState, audio: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():  # inference mode is per thread
            return self._content(state, audio)

    def _core(self, rows: torch.Tensor, entries: torch.Tensor, noise: torch.Tensor, content: torch.Tensor,
              has_previous: torch.Tensor, offset: torch.Tensor, *, num_steps: int) -> torch.Tensor:
        """The batched tensor work of a step (captured as a graph per bucket on a GPU): audio (B, C * hop)."""
        memory = [(k[rows], v[rows]) for k, v in self._memory]
        spk = self._spk[rows]
        cond = self.dit.timbre_encoder(content, memory, self._memory_mask[rows])
        clean = denoise_chunk(self.dit, self.cache, rows, entries, noise, self._previous[rows], has_previous, cond,
                              spk, offset, num_steps, self.lookback)
        self._previous[rows] = clean
        return self._vocoder(rows, clean)

    @torch.inference_mode()
    def resynthesize(self, audio: np.ndarray) -> np.ndarray:
        """Real speech through the mel and the streaming vocoder (a bench's upper bound), delay removed."""
        from models.vc.meanvc.vocos import vocode_chunked

        mel = self._mel(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None].to(self.device))
        mel = mel[:, : mel.shape[1] // self.chunk_frames * self.chunk_frames]
        out = vocode_chunked(self.vocos, mel, self.chunk_frames)[0].clamp(-1, 1).cpu().numpy()
        return out[FADE_FRAMES * MEL_HOP :]

    def describe(self) -> dict[str, Any]:
        """Adds the voices of the weights folder, the step counts and the reference length used."""
        return {**super().describe(), "voices": [{"id": v} for v in self._voices], "steps": sorted(SCHEDULES),
                "reference_s": [MIN_REFERENCE_S, self.max_reference_s], "chunk_frames": self.chunk_frames}
