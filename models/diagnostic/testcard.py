"""A broadcast-style test card: the built-in diagnostic generator `testcard` (clock-paced video + audio).

Each frame shows colour bars tinted by the current prompt, a box that moves one step per frame, and the
frame number as 16 black/white blocks along the top (readable after lossy coding, so tests can check
order and gaps). Once a second a beep sounds for two frames while a white marker shows in the bottom-right
corner, so audio/video offset can be measured on received streams. A `prompt` event re-tints the card from
the next chunk on: the Video tab and the prompt-switch plumbing work before the video family lands.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.base import AudioFormat, ControlEvent, Generator, Pacing, StepInput, StepOutput, StreamSpec, VideoFormat
from models.errors import ParamError

NUM_COUNTER_BITS = 16
BEEP_HZ = 1000.0
MAX_PROMPT_CHARS = 2000


@dataclass
class TestcardState:
    """One session: frames drawn so far and the tint of the current prompt."""

    num_frames: int = 0
    tint: tuple[int, int, int] = (255, 255, 255)
    prompt: str = ""


def prompt_tint(text: str) -> tuple[int, int, int]:
    """A stable, saturated colour for a prompt."""
    digest = hashlib.sha256(text.encode()).digest()
    rgb = np.array(list(digest[:3]), dtype=np.float32)
    rgb = 64 + 191 * (rgb - rgb.min()) / max(1.0, float(np.ptp(rgb)))
    return (int(rgb[0]), int(rgb[1]), int(rgb[2]))


def read_frame_number(frame: np.ndarray) -> int:
    """Decode the frame counter drawn by :func:`draw_frame` (tolerates lossy coding)."""
    width = frame.shape[1]
    block = width // NUM_COUNTER_BITS
    value = 0
    for bit in range(NUM_COUNTER_BITS):
        patch = frame[2 : block - 2, bit * block + 2 : (bit + 1) * block - 2]
        value |= int(patch.mean() > 127) << (NUM_COUNTER_BITS - 1 - bit)
    return value


def has_beep_marker(frame: np.ndarray) -> bool:
    """True when the frame carries the once-a-second marker."""
    h, w = frame.shape[:2]
    return bool(frame[h - 14 : h - 2, w - 14 : w - 2].mean() > 200)


class Testcard(Generator):
    """Model `testcard`: a moving test pattern with a once-a-second beep."""

    name = "testcard"

    def __init__(
        self,
        *,
        width: int = 256,
        height: int = 192,
        fps: float = 25.0,
        chunk_ms: float = 40.0,
        sample_rate_hz: int = 16_000,
        max_batch_size: int = 64,
    ) -> None:
        if width % NUM_COUNTER_BITS:
            raise ValueError(f"width must be a multiple of {NUM_COUNTER_BITS}")
        self.spec = StreamSpec(
            chunk_ms=chunk_ms,
            pacing=Pacing.CLOCK,
            output_audio=AudioFormat(sample_rate_hz),
            output_video=VideoFormat(width, height, fps),
            event_types=frozenset({"prompt"}),
        )
        self.max_batch_size = max_batch_size
        x = np.linspace(0.0, 1.0, width, dtype=np.float32)
        bars = np.stack([(x * 7).astype(int) & 1, (x * 7).astype(int) >> 1 & 1, (x * 7).astype(int) >> 2 & 1], -1)
        self._bars = (0.35 + 0.65 * bars.astype(np.float32))[None, :, :].repeat(height, 0)  # (H, W, 3)

    def open_session(self, params: Mapping[str, Any]) -> TestcardState:
        """A fresh card; params were validated (none are taken)."""
        return TestcardState()

    def close_session(self, state: TestcardState) -> None:
        """Nothing to free."""

    def handle_event(self, state: TestcardState, event: ControlEvent) -> list[dict[str, Any]]:
        """`prompt` with `text` re-tints the card from the next chunk on."""
        if event.type != "prompt":
            return super().handle_event(state, event)
        text = event.payload.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ParamError("'prompt' needs a non-empty string 'text'")
        if len(text) > MAX_PROMPT_CHARS:
            raise ParamError(f"prompt of {len(text)} characters exceeds {MAX_PROMPT_CHARS}")
        state.prompt, state.tint = text, prompt_tint(text)
        return [{"type": "prompt_applied", "text": text, "frame": state.num_frames}]

    def step(
        self, states: Sequence[TestcardState], inputs: Sequence[StepInput], padded_batch_size: int
    ) -> list[StepOutput]:
        """Draw the next chunk of frames and audio for each session."""
        return [self._draw_chunk(state) for state in states]

    def _draw_chunk(self, state: TestcardState) -> StepOutput:
        spec = self.spec
        fps = spec.output_video.fps
        frames = np.stack([self.draw_frame(state.num_frames + i, state.tint) for i in range(spec.frames_per_chunk)])
        rate = spec.output_audio.sample_rate_hz
        n = spec.output_chunk_samples
        t = (state.num_frames / fps) + np.arange(n, dtype=np.float64) / rate  # seconds since start
        beeping = (t % 1.0) < (2.0 / fps)
        audio = (0.3 * np.sin(2 * np.pi * BEEP_HZ * t) * beeping).astype(np.float32)
        state.num_frames += spec.frames_per_chunk
        return StepOutput(audio=audio, video=frames)

    def draw_frame(self, index: int, tint: tuple[int, int, int]) -> np.ndarray:
        """Render frame ``index`` (H, W, 3) uint8."""
        video = self.spec.output_video
        h, w, fps = video.height, video.width, video.fps
        img = (self._bars * np.array(tint, dtype=np.float32)).astype(np.uint8)
        block = w // NUM_COUNTER_BITS
        for bit in range(NUM_COUNTER_BITS):
            on = (index >> (NUM_COUNTER_BITS - 1 - bit)) & 1
            img[0:block, bit * block : (bit + 1) * block] = 255 if on else 0
        size = h // 5
        x = int((index * 4) % (w - size))
        y = h // 2 - size // 2
        img[y : y + size, x : x + size] = (240, 240, 240)
        img[y + 4 : y + size - 4, x + 4 : x + size - 4] = (20, 20, 20)
        if (index % round(fps)) < 2:
            img[h - 16 :, w - 16 :] = 255
        else:
            img[h - 16 :, w - 16 :] = 0
        return img
