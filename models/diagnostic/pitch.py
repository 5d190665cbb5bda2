"""A causal pitch shifter: the built-in diagnostic generator `pitch` (input-paced audio -> audio).

Two read taps sweep through a delay line at rate (1 - ratio), each faded in and out with sin^2 so their
gains always sum to one; reading faster than writing raises the pitch. Everything about sample n depends
only on its absolute index and on past input, so streaming chunk by chunk equals one offline pass to the
bit, and sessions in one batch never touch each other: the two invariants every family must keep, in the
smallest model that can show them end to end.

Per-session state is a slot in one preallocated history tensor (the same pattern as the KV cache), so a
batch is a gather of rows, not a concatenation of per-session buffers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.base import AudioFormat, ControlEvent, Generator, Pacing, StepInput, StepOutput, StreamSpec
from models.cache import SlotAllocator
from models.errors import ParamError

MAX_SEMITONES = 12.0


@dataclass
class PitchState:
    """One session: its history slot, samples consumed so far, and the pitch ratio."""

    slot: int
    num_samples_seen: int
    ratio: float


def shift_pitch(
    history: torch.Tensor, chunk: torch.Tensor, start_index: torch.Tensor, ratio: torch.Tensor, grain: int
) -> torch.Tensor:
    """Pitch-shift a batch of chunks.

    history: (B, grain + 1) the samples before the chunk; chunk: (B, C); start_index: (B,) absolute index
    of the chunk's first sample; ratio: (B,) frequency ratio. Returns (B, C).
    """
    buffer = torch.cat([history, chunk], dim=1)  # (B, grain + 1 + C)
    num = chunk.shape[1]
    n = start_index[:, None].double() + torch.arange(num, dtype=torch.float64, device=chunk.device)  # (B, C)
    phase = torch.remainder(n * (1.0 - ratio[:, None].double()) / grain, 1.0)  # (B, C) in [0, 1)
    out = torch.zeros_like(chunk)
    base = torch.arange(num, device=chunk.device)[None, :] + grain + 1  # buffer index of sample n
    for offset in (0.0, 0.5):
        tap_phase = torch.remainder(phase + offset, 1.0)
        delay = tap_phase * grain  # (B, C) samples, in [0, grain)
        whole = torch.floor(delay)
        frac = (delay - whole).to(chunk.dtype)
        idx = base - whole.long()  # reads x[n - floor(delay)] and the sample before it
        newer = torch.gather(buffer, 1, idx)
        older = torch.gather(buffer, 1, idx - 1)
        sample = newer * (1 - frac) + older * frac
        gain = torch.sin(math.pi * tap_phase).pow(2).to(chunk.dtype)
        out = out + gain * sample
    return out


class PitchShifter(Generator):
    """Model `pitch`: shifts mic audio by a number of semitones, chunk by chunk."""

    name = "pitch"

    def __init__(
        self,
        *,
        sample_rate_hz: int = 16_000,
        chunk_ms: float = 20.0,
        grain_ms: float = 30.0,
        max_sessions: int = 1024,
        max_batch_size: int = 256,
        device: str = "cpu",
        simulated_cost_ms: float = 0.0,
    ) -> None:
        fmt = AudioFormat(sample_rate_hz)
        self.spec = StreamSpec(
            chunk_ms=chunk_ms,
            pacing=Pacing.INPUT,
            input_audio=fmt,
            output_audio=fmt,
            event_types=frozenset({"set_pitch"}),
        )
        self.max_batch_size = max_batch_size
        self.device = torch.device(device)
        self.pads_to_bucket = self.device.type == "cuda"
        self.grain = int(sample_rate_hz * grain_ms / 1000)
        # One extra row is scratch space for padding rows of a bucket (GPU shape stability).
        self._history = torch.zeros(max_sessions + 1, self.grain + 1, device=self.device)
        self._pad_slot = max_sessions
        self._slots = SlotAllocator(max_sessions)
        # Diagnostic knob: sleep this long per session per step, to emulate a heavier model in
        # admission-control tests and load benches.
        self.simulated_cost_s = simulated_cost_ms / 1000.0

    def validate_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Accepts ``semitones`` (float, -12..12, default 4)."""
        unknown = set(params) - {"semitones"}
        if unknown:
            raise ParamError(f"model 'pitch' does not know parameters {sorted(unknown)}; it takes 'semitones'")
        return {"semitones": _semitones(params.get("semitones", 4.0))}

    def open_session(self, params: Mapping[str, Any]) -> PitchState:
        """Allocate a history slot; ``params`` come from :meth:`validate_params`."""
        slot = self._slots.allocate()
        self._history[slot].zero_()
        return PitchState(slot=slot, num_samples_seen=0, ratio=2.0 ** (params["semitones"] / 12.0))

    def close_session(self, state: PitchState) -> None:
        """Free the session's slot."""
        self._slots.free(state.slot)

    def handle_event(self, state: PitchState, event: ControlEvent) -> list[dict[str, Any]]:
        """``set_pitch`` with ``semitones`` changes the shift from the next chunk on."""
        if event.type != "set_pitch":
            return super().handle_event(state, event)
        semitones = _semitones(event.payload.get("semitones"))
        state.ratio = 2.0 ** (semitones / 12.0)
        return [{"type": "pitch", "semitones": semitones}]

    @torch.inference_mode()
    def step(
        self, states: Sequence[PitchState], inputs: Sequence[StepInput], padded_batch_size: int
    ) -> list[StepOutput]:
        """Shift one chunk for every session of the batch."""
        if self.simulated_cost_s:
            time.sleep(self.simulated_cost_s * len(states))
        # On a GPU, pad to the bucket so every step of a bucket has the same shapes (graph replay).
        rows = padded_batch_size if self.pads_to_bucket else len(states)
        num_pad = rows - len(states)
        slots = torch.tensor([s.slot for s in states] + [self._pad_slot] * num_pad, device=self.device)
        chunk = torch.from_numpy(np.stack([i.audio for i in inputs] + [np.zeros_like(inputs[0].audio)] * num_pad))
        chunk = chunk.to(self.device, torch.float32)
        start = torch.tensor([s.num_samples_seen for s in states] + [0] * num_pad, device=self.device)
        ratio = torch.tensor([s.ratio for s in states] + [1.0] * num_pad, device=self.device)
        history = self._history[slots]
        out = shift_pitch(history, chunk, start, ratio, self.grain)
        self._history[slots] = torch.cat([history, chunk], dim=1)[:, -(self.grain + 1) :]
        for s in states:
            s.num_samples_seen += chunk.shape[1]
        out_np = out[: len(states)].cpu().numpy()
        return [StepOutput(audio=row) for row in out_np]


def _semitones(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParamError(f"'semitones' must be a number, got {value!r}")
    if abs(value) > MAX_SEMITONES:
        raise ParamError(f"'semitones' must be within ±{MAX_SEMITONES:g}, got {value}")
    return float(value)
