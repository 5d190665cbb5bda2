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
clip). Following the generator contract (models/base.py), ``validate_params`` only checks an upload's header
on the event loop; the decode, resample and embedding run in ``prepare_session`` / ``prepare_event`` on the
engine's preparation thread, beside the steps of every other session; ``open_session`` and ``handle_event``
on the worker only install the result in the session's slot. A new session therefore starts (`ready`) in
its uploaded voice, and a session switching to an upload keeps its old voice until the engine hands it the
prepared event, whose ``reference_set`` reply comes with the switch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from models.base import AudioFormat, Pacing, StepInput, StepOutput, StreamSpec
from models.cache import RingKVCache, SlotAllocator
from models.graphs import BucketGraphs
from models.params import WavUpload
from models.vc.meanvc.dit import MeanVCDiT
from models.vc.meanvc.features import MEL_HOP, SAMPLE_RATE_HZ, MeanVCMel
from models.vc.meanvc.speaker import SpeakerModel
from models.vc.meanvc.stream import LOOKAHEAD_SAMPLES, SCHEDULES, ContentState, ContentStream, denoise_chunk
from models.vc.meanvc.vocos import FADE_FRAMES, StreamingVocoder, Vocos
from models.vc.serving import EVENTS, ReferenceVoiceGenerator, clean_audio, group_bucket, reference_speech

MIN_REFERENCE_S = 1.0  # of speech after trimming silence


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


class MeanVCGenerator(ReferenceVoiceGenerator):
    """Model `vc` served from MeanVC's published weights (``vc:weights=DIR``)."""

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
        # The ASR runs once per session; TorchScript releases the GIL while it runs, so threads overlap the
        # sessions' calls (their host overhead, on a GPU their launches). 1: in turn, on the worker thread.
        self._asr_pool = ThreadPoolExecutor(int(asr_threads), "meanvc-asr") if int(asr_threads) > 1 else None
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

    def _set_reference(self, slot: int, reference: tuple[torch.Tensor, ...]) -> None:
        spk, mask, *flat = reference
        self._spk[slot], self._memory_mask[slot] = spk, mask
        for i, (k, v) in enumerate(self._memory):
            k[slot], v[slot] = flat[2 * i], flat[2 * i + 1]

    def _embed_upload(self, upload: WavUpload) -> tuple[torch.Tensor, ...]:
        """Decode, resample, trim and embed a reference whose header was checked (the preparation stage)."""
        speech, _ = reference_speech(upload, SAMPLE_RATE_HZ, MIN_REFERENCE_S, self.max_reference_s)
        return self._embed(speech)  # at its own level, as MeanVC reads a reference (its mel is not level-free)

    # -- sessions -----------------------------------------------------------------------------------------
    def open_session(self, params: Mapping[str, Any]) -> MeanVCState:
        """Take a slot, reset its state and install its reference; params come from :meth:`prepare_session`."""
        slot, reference = self._take_slot(params)
        self._vocoder.reset([slot])
        self._set_reference(slot, reference)
        rng = torch.Generator()  # on the host: the same noise on any device, whatever the batch
        rng.manual_seed(params["seed"])
        return MeanVCState(slot=slot, rng=rng, steps=params["steps"], voice=params["voice"],
                           content=self._content.initial_state())

    @torch.inference_mode()
    def _switch_reference(self, state: MeanVCState, voice: str, reference: tuple[torch.Tensor, ...]) -> None:
        """A new reference from the next chunk: speaker vector and reference memory replaced.

        The DiT's context is dropped (the chunk is generated as at a stream's start), the vocoder's kept (no click).
        """
        self._set_reference(state.slot, reference)
        self.cache.clear([state.slot], keep_sink=False)
        state.has_previous = False

    # -- stepping -----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, states: Sequence[MeanVCState], inputs: Sequence[StepInput],
             padded_batch_size: int) -> list[StepOutput]:
        """Convert one chunk for every session (see the module docstring); one core call per step count."""
        c, mel_dim = self.chunk_frames, self.dit.cfg.mel_dim
        chunk = torch.from_numpy(clean_audio(np.stack([i.audio for i in inputs]))).to(self.device)
        if self._asr_pool is None:
            content = [self._content(s.content, chunk[i]) for i, s in enumerate(states)]  # (1, C, bn) each
        else:
            content = list(self._asr_pool.map(self._content_no_grad, [s.content for s in states], chunk.unbind(0)))
        out: list[StepOutput | None] = [None] * len(states)
        span = torch.arange(c)
        for num_steps in sorted({s.steps for s in states}):
            index = [i for i, s in enumerate(states) if s.steps == num_steps]
            group = [states[i] for i in index]
            size = group_bucket(len(index), padded_batch_size) if self.pads_to_bucket else len(index)
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
