"""Streaming voice activity detection shared by every family: silero-vad's ONNX model, batched over sessions.

The silero-vad wheel ships its ONNX model, so nothing is downloaded. The model reads 16 kHz audio in windows
of 512 samples (32 ms) with 64 samples of left context and a recurrent state of (2, 128) per stream. A
:class:`VadStream` holds one stream's context, state and partial window; :meth:`SileroVad.push` advances
any number of streams by arbitrary amounts of audio, running every window that is complete in one batched
ONNX call per window position, so a batch of sessions costs about what one session costs.

Streaming equals offline: feeding a signal in pieces of any size gives the same window probabilities as
feeding it whole, because windows are cut at multiples of 512 samples of each stream's own timeline.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

VAD_RATE_HZ = 16_000
WINDOW = 512  # samples per VAD decision at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous window the model sees


@dataclass
class VadStream:
    """One audio stream's VAD state."""

    state: np.ndarray = field(default_factory=lambda: np.zeros((2, 128), np.float32))
    context: np.ndarray = field(default_factory=lambda: np.zeros(CONTEXT, np.float32))
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # < WINDOW samples
    prob: float = 0.0  # probability of speech in the last complete window
    num_windows: int = 0

    def reset(self) -> None:
        """Forget everything (a new stream)."""
        self.state[:] = 0
        self.context[:] = 0
        self.pending = np.zeros(0, np.float32)
        self.prob = 0.0


class SileroVad:
    """The silero-vad ONNX model on CPU, single-threaded (sessions are batched instead)."""

    def __init__(self) -> None:
        import onnxruntime as ort

        try:
            path = importlib.resources.files("silero_vad").joinpath("data/silero_vad.onnx")
        except ModuleNotFoundError as e:
            raise RuntimeError("silero-vad is not installed (pip install silero-vad)") from e
        opts = ort.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        self._session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self._sr = np.array(VAD_RATE_HZ, dtype=np.int64)

    def push(self, streams: Sequence[VadStream], audio: Sequence[np.ndarray]) -> list[list[float]]:
        """Append 16 kHz float32 audio to each stream; returns each stream's new window probabilities."""
        if len(streams) != len(audio):
            raise ValueError("one audio array per stream")
        for s, a in zip(streams, audio, strict=True):
            s.pending = np.concatenate([s.pending, np.asarray(a, np.float32).reshape(-1)])
        out: list[list[float]] = [[] for _ in streams]
        while True:
            ready = [i for i, s in enumerate(streams) if len(s.pending) >= WINDOW]
            if not ready:
                return out
            x = np.stack([np.concatenate([streams[i].context, streams[i].pending[:WINDOW]]) for i in ready])
            state = np.stack([streams[i].state for i in ready], axis=1)  # (2, B, 128)
            prob, state = self._session.run(None, {"input": x, "state": state, "sr": self._sr})
            for j, i in enumerate(ready):
                s = streams[i]
                s.context = x[j, -CONTEXT:].copy()
                s.pending = s.pending[WINDOW:]
                s.state = state[:, j].copy()
                s.prob = float(prob[j, 0])
                s.num_windows += 1
                out[i].append(s.prob)

    def probabilities(self, audio: np.ndarray) -> np.ndarray:
        """Offline: speech probability of every complete 512-sample window of a 16 kHz signal."""
        stream = VadStream()
        return np.asarray(self.push([stream], [audio])[0], np.float32)
