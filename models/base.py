"""The one contract between the streaming runtime and every generator family.

A generator declares a :class:`StreamSpec` (what it consumes and produces, and at which pace), creates
per-session state, and steps a *batch* of sessions by one chunk. Control events (new prompt, new reference
voice, text to speak, barge-in) travel through the same object. The runtime never knows which family it
serves: it only sees this interface.

Threading: the event loop never runs model code. Three places run a generator's methods:

- the event loop: :meth:`Generator.validate_params` only, cheap checks (types, ranges, sizes, the header of
  an uploaded WAV or image; models/params.py);
- the engine's preparation thread(s): :meth:`Generator.prepare_session` and :meth:`Generator.prepare_event`,
  the heavy, stateless work on what a client sent (decode, resample, embed a reference, encode a clip). They
  run beside the steps of other sessions, so a 300 ms reference embedding delays only the session that sent
  it; they may read the model's weights and constant tables but touch no session state, slot or cache;
- one worker thread per device: every other method, never concurrently, so a generator's state needs no
  locks.

Drivers without an engine (tests, benches, warm-up, a family driving another) chain the stages in one thread
with :func:`open_direct` and :func:`apply_event`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from models.errors import ParamError


class Pacing(str, Enum):
    """What makes a session's next step due."""

    INPUT = "input"  # a full chunk of input audio has arrived (voice conversion, pitch shifter)
    CLOCK = "clock"  # the output clock needs the next chunk (speech synthesis, avatar, video)


@dataclass(frozen=True)
class AudioFormat:
    """Mono or multi-channel float32 PCM at a fixed rate."""

    sample_rate_hz: int
    num_channels: int = 1


@dataclass(frozen=True)
class VideoFormat:
    """RGB24 frames of a fixed size at a fixed rate."""

    width: int
    height: int
    fps: float


@dataclass(frozen=True)
class StreamSpec:
    """What a generator consumes and produces per step, and how the runtime paces it."""

    chunk_ms: float  # media duration one step consumes and produces
    pacing: Pacing
    input_audio: AudioFormat | None = None  # None: the model takes no microphone audio
    output_audio: AudioFormat | None = None
    output_video: VideoFormat | None = None
    lookahead_ms: float = 0.0  # algorithmic delay beyond the chunk (right context the model waits for)
    # How long a due chunk may take before it is late: clock-paced, the lead over playout; input-paced,
    # from its last input sample. None: one chunk. A larger allowance admits more sessions per device
    # (admission keeps twice a full engine turn inside it) at the price of that much added latency.
    latency_allowance_ms: float | None = None
    # Control messages this model accepts ("prompt", "text", ...). "interrupt" is special: the runtime also
    # drops the session's queued output at once (barge-in), before the model sees the event.
    event_types: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.chunk_ms <= 0:
            raise ValueError("chunk_ms must be positive")
        if self.output_audio is None and self.output_video is None:
            raise ValueError("a generator must produce audio, video or both")
        if self.pacing is Pacing.INPUT and self.input_audio is None:
            raise ValueError("input-paced generators need input audio")
        for fmt in (self.input_audio, self.output_audio):
            if fmt is not None and not _whole(fmt.sample_rate_hz * self.chunk_ms / 1000):
                raise ValueError(f"chunk of {self.chunk_ms} ms is not a whole number of samples at {fmt}")
        if self.output_video is not None and not _whole(self.output_video.fps * self.chunk_ms / 1000):
            raise ValueError(f"chunk of {self.chunk_ms} ms is not a whole number of frames")

    @property
    def chunk_s(self) -> float:
        """Chunk duration in seconds."""
        return self.chunk_ms / 1000.0

    @property
    def input_chunk_samples(self) -> int:
        """Input samples per step (0 without input audio)."""
        if self.input_audio is None:
            return 0
        return round(self.input_audio.sample_rate_hz * self.chunk_s)

    @property
    def output_chunk_samples(self) -> int:
        """Output samples per step (0 without output audio)."""
        if self.output_audio is None:
            return 0
        return round(self.output_audio.sample_rate_hz * self.chunk_s)

    @property
    def frames_per_chunk(self) -> int:
        """Output video frames per step (0 without output video)."""
        if self.output_video is None:
            return 0
        return round(self.output_video.fps * self.chunk_s)

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary for /healthz and the `ready` message."""
        out: dict[str, Any] = {
            "chunk_ms": self.chunk_ms,
            "pacing": self.pacing.value,
            "lookahead_ms": self.lookahead_ms,
            "latency_allowance_ms": self.latency_allowance_ms or self.chunk_ms,
            "events": sorted(self.event_types),
        }
        if self.input_audio:
            out["input_audio"] = {"sample_rate_hz": self.input_audio.sample_rate_hz}
        if self.output_audio:
            out["output_audio"] = {"sample_rate_hz": self.output_audio.sample_rate_hz}
        if self.output_video:
            v = self.output_video
            out["output_video"] = {"width": v.width, "height": v.height, "fps": v.fps}
        return out


def _whole(x: float) -> bool:
    return abs(x - round(x)) < 1e-6 and round(x) > 0


@dataclass
class ControlEvent:
    """A control message for one session, applied before its next step (control overtakes media)."""

    type: str
    payload: Mapping[str, Any] = field(default_factory=dict)  # the client's JSON fields
    # What :meth:`Generator.prepare_event` made of the payload (an embedded reference, decoded samples); never
    # from the client, so handle_event can trust it. None: not prepared (cheap events need no preparation).
    prepared: Any = None
    is_prepared: bool = False  # prepare_event has run on it (the engine prepares an event once)


@dataclass
class StepInput:
    """One session's input for one step."""

    # (input_chunk_samples,) float32 in [-1, 1] at the input rate, or None for models without input audio.
    # Clock-paced models get what has arrived, zero-padded; `num_valid_samples` says how much is real.
    audio: np.ndarray | None = None
    num_valid_samples: int = 0


@dataclass
class StepOutput:
    """One session's output for one step. Media covers exactly one chunk unless `idle` is set."""

    audio: np.ndarray | None = None  # (output_chunk_samples,) float32 at the output rate
    video: np.ndarray | None = None  # (frames_per_chunk, H, W, 3) uint8 RGB
    notices: list[dict[str, Any]] = field(default_factory=list)  # JSON messages for the client
    # Nothing to produce until the next control event (e.g. speech synthesis with no text left). The
    # runtime stops stepping the session and pauses its output clock; media fields are ignored.
    idle: bool = False


class Generator(ABC):
    """A frame-level causal generator served by the engine.

    Subclasses set ``name`` and ``spec`` and implement the four abstract methods. ``step`` receives the
    sessions of one batch; ``padded_batch_size`` is the engine's size bucket (>= len(states)) so a GPU
    model can pad to it and replay one captured graph per bucket. A CPU model may ignore it.
    """

    name: str = ""
    spec: StreamSpec
    max_batch_size: int = 64  # the engine never passes more sessions than this to one step
    # True when step() pads the batch to padded_batch_size (GPU graphs): its cost then follows the
    # bucket, not the number of sessions, and admission control prices it that way.
    pads_to_bucket: bool = False
    # Set by the registry when the generator serves a published release (models/weights.py): the release,
    # its folder and each file's SHA-256, shown in /healthz.
    published_weights: dict[str, Any] | None = None
    # Event types that pass through prepare_event (on the preparation thread) before handle_event sees them.
    prepared_events: frozenset[str] = frozenset()

    def validate_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Check a session's start parameters cheaply, on the event loop, before any state exists.

        Only checks that cost microseconds whatever the client sent: types, ranges, sizes, the header of an
        upload (models/params.py) -- never a decode, a resample or a model. Returns the normalised parameters
        (an upload may still be in them, undecoded) for :meth:`prepare_session`; raises :class:`ParamError`
        with a message for the client. The default accepts no parameters.
        """
        if params:
            raise ParamError(f"model '{self.name}' takes no parameters, got {sorted(params)}")
        return {}

    def prepare_session(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The heavy, stateless work of a new session, off the event loop and off the step thread.

        Runs on the engine's preparation thread after admission, concurrently with steps (see the module
        docstring): decode and check uploads, embed a reference, encode a clip. Returns the parameters
        :meth:`open_session` gets; raises :class:`ParamError` for an upload that proves unusable. Default:
        nothing to do.
        """
        return dict(params)

    @abstractmethod
    def open_session(self, params: Mapping[str, Any]) -> Any:
        """Create the state of a new session from prepared parameters (cheap: slots, copies)."""

    def describe_session(self, state: Any, params: Mapping[str, Any]) -> dict[str, Any]:
        """What the client is told about its opened session: the ``params`` of `ready` (JSON-able).

        Called on the worker right after :meth:`open_session` with the parameters it got. Families whose
        parameters carry uploads or tensors return a summary instead (a digest, ``"voice": "reference"``).
        Default: the parameters.
        """
        return dict(params)

    @abstractmethod
    def close_session(self, state: Any) -> None:
        """Release a session's state (cache slots, buffers). Must not raise."""

    def prepare_event(self, event: ControlEvent, scratch: dict[str, Any]) -> ControlEvent | None:
        """The heavy, stateless part of a control event whose type is in ``prepared_events``.

        Runs on the preparation thread, as :meth:`prepare_session`, in the order the session's events came:
        returns the event :meth:`handle_event` will get (the work's result in ``prepared``), or None when the
        event was consumed here (a piece of an upload sent in parts). ``scratch`` is the session's own memory
        for this stage (those pieces), touched by nothing else. Raises :class:`ParamError` for a bad event;
        the session keeps running. Default: the event unchanged.
        """
        return event

    def handle_event(self, state: Any, event: ControlEvent) -> list[dict[str, Any]]:
        """Apply a control event to one session; returns notices for the client.

        Raises :class:`ParamError` for a bad event; the session keeps running. Work that grows with what the
        client sent belongs in :meth:`prepare_event` or is spread over steps (text is phonemized a segment
        at a time), so one session's event cannot delay another's step.
        """
        raise ParamError(f"model '{self.name}' does not accept '{event.type}' events")

    @abstractmethod
    def step(self, states: Sequence[Any], inputs: Sequence[StepInput], padded_batch_size: int) -> list[StepOutput]:
        """Advance every session in the batch by one chunk; one output per state, in order."""

    def warmup_events(self) -> list[ControlEvent]:
        """Events that give a fresh session work to do, for warm-up and cost calibration.

        Clock-paced models that idle without input (speech synthesis without text) return e.g. a text
        event here, so the engine measures real steps.
        """
        return []

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary of the model for /healthz."""
        out = {"name": self.name, "max_batch_size": self.max_batch_size, **self.spec.describe()}
        if self.published_weights is not None:
            out["weights"] = self.published_weights
        return out


def open_direct(generator: Generator, params: Mapping[str, Any]) -> Any:
    """Validate, prepare and open a session in the calling thread (drivers without an engine)."""
    return generator.open_session(generator.prepare_session(generator.validate_params(params)))


def apply_event(
    generator: Generator, state: Any, event: ControlEvent, scratch: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Prepare (if its type needs it) and apply one event in the calling thread (drivers without an engine).

    Pass the same ``scratch`` for every event of one session when its uploads come in parts.
    """
    if event.type in generator.prepared_events:
        prepared = generator.prepare_event(event, {} if scratch is None else scratch)
        if prepared is None:
            return []
        event = prepared
    return generator.handle_event(state, event)
