"""What the two speech generators share: text in as events, queued for the steps, barge-in, reference clips.

The shipped TTS (models/tts/generator.py) and Pocket TTS (models/tts/pocket/generator.py) serve the same
events the same way; only what a segment of text becomes, and what a voice is, differ:

- ``text {text, final?}`` pieces (an LLM's words) go to the session's :class:`TextCutter`
  (:class:`~models.speech_text.TextSegmenter` / :class:`~models.tts.pocket.text.ChunkStream`), which hands
  back the segments they complete; the family turns each into bounded queue items
  (:meth:`SpeechGenerator.queue_segments`: phoneme text, token chunks). ``flush`` ends the utterance.
- ``interrupt`` (barge-in) drops the cutter's text, the queue and the running segment.
- ``set_voice`` switches the voice from the next segment; an uploaded ``reference_audio`` (and one given at
  session start) is checked from its header on the loop and encoded by :meth:`SpeechGenerator.encode_reference`
  on the preparation thread (models/base.py), never on the loop or the step thread.
- A session with neither a running segment nor queued items is idle (:attr:`SpeechState.busy`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from models.base import ControlEvent, Generator
from models.errors import ParamError
from models.params import WavUpload, seed_param
from models.speech_text import MAX_TEXT_CHARS

EVENTS = frozenset({"text", "flush", "interrupt", "set_voice"})
WARMUP_TEXT = "Warming up the speech model."


class TextCutter(Protocol):
    """Incremental text -> complete segments, independent of how the text was split into messages."""

    def push(self, text: str, final: bool = False) -> list[str]:
        """Add text; the segments it completes (all of them when ``final``)."""
        ...

    def flush(self) -> list[str]:
        """End of the utterance: the remaining segments."""
        ...

    def reset(self) -> None:
        """Drop buffered text (barge-in)."""
        ...


@dataclass(kw_only=True)
class SpeechState:
    """A speech session's cache slot, noise and text on its way to speech (families add their fields)."""

    slot: int
    rng: torch.Generator
    text: TextCutter
    queue: deque[Any] = field(default_factory=deque)  # segments not started yet, in the family's form
    running: bool = False  # a segment is being generated

    @property
    def busy(self) -> bool:
        """Something to say: a running segment or queued ones (else the session idles)."""
        return self.running or bool(self.queue)


def session_text_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """``seed`` (random when absent) and ``text`` (spoken at once), checked."""
    text = params.get("text", "")
    if not isinstance(text, str):
        raise ParamError("'text' must be a string")
    return {"seed": seed_param(params), "text": text}


class SpeechGenerator(Generator):
    """The text events of a speech family (module docstring); subclasses queue segments and set voices."""

    prepared_events = frozenset({"set_voice"})  # a reference clip is encoded off the step thread

    # -- hooks ---------------------------------------------------------------------------------------------
    @abstractmethod
    def check_reference(self, data: Any) -> WavUpload:
        """Cheap check of an uploaded reference clip (its header; on the loop)."""

    @abstractmethod
    def encode_reference(self, upload: WavUpload) -> Any:
        """Decode and encode a checked clip into the family's voice (heavy: the preparation thread)."""

    @abstractmethod
    def queue_segments(self, state: Any, segments: list[str]) -> int:
        """Queue complete segments as the family's bounded items; returns how many items were queued."""

    @abstractmethod
    def end_segment(self, state: Any) -> None:
        """Stop the running segment (if any)."""

    @abstractmethod
    def set_voice(self, state: Any, event: ControlEvent) -> None:
        """Apply ``set_voice``: ``event.prepared`` is an encoded reference, else the payload names a voice."""

    def check_text(self, state: Any, text: str) -> None:
        """Refuse a ``text`` message the session cannot take (default: the per-message limit)."""
        if len(text) > MAX_TEXT_CHARS:
            raise ParamError(f"text of {len(text)} characters is over the limit of {MAX_TEXT_CHARS} per message")

    def drop_text(self, state: Any) -> None:
        """Barge-in: forget buffered and queued text and stop the running segment."""
        state.text.reset()
        state.queue.clear()
        self.end_segment(state)

    # -- the contract ----------------------------------------------------------------------------------------
    def prepare_session(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Encode an uploaded reference (``reference_audio`` -> ``reference``, the family's voice)."""
        out = dict(params)
        if (upload := out.pop("reference_audio", None)) is not None:
            out["reference"] = self.encode_reference(upload)
        return out

    def prepare_event(self, event: ControlEvent, scratch: dict[str, Any]) -> ControlEvent:
        """`set_voice` with ``reference_audio``: check, decode and encode it (off the loop and the steps)."""
        p = event.payload
        if "reference_audio" not in p:
            return event
        voice = self.encode_reference(self.check_reference(p["reference_audio"]))
        return ControlEvent(event.type, {k: v for k, v in p.items() if k != "reference_audio"}, prepared=voice)

    def handle_event(self, state: Any, event: ControlEvent) -> list[dict[str, Any]]:
        """``text {text, final?}``, ``flush``, ``interrupt``, ``set_voice`` (module docstring)."""
        p = event.payload
        if event.type == "text":
            text = p.get("text")
            if not isinstance(text, str):
                raise ParamError("'text' event needs a string 'text'")
            return [{"type": "text_queued", "segments": self.add_text(state, text, bool(p.get("final", False)))}]
        if event.type == "flush":
            return [{"type": "text_queued", "segments": self.queue_segments(state, state.text.flush())}]
        if event.type == "interrupt":
            self.drop_text(state)
            return [{"type": "interrupted"}]
        if event.type == "set_voice":
            if event.prepared is None and "reference_audio" in p:
                raise ValueError("an uploaded reference must go through prepare_event (models.base.apply_event)")
            self.set_voice(state, event)
            return [{"type": "voice_set"}]  # applies from the next segment
        return super().handle_event(state, event)

    def add_text(self, state: Any, text: str, final: bool) -> int:
        """Cut ``text`` into the session's segments and queue the complete ones; returns the items queued."""
        self.check_text(state, text)
        return self.queue_segments(state, state.text.push(text, final))

    def warmup_events(self) -> list[ControlEvent]:
        """A sentence to speak."""
        return [ControlEvent("text", {"text": WARMUP_TEXT, "final": True})]
