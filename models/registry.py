"""Which generators exist, and how to build one from a ``name[:key=value,...]`` spec.

The runtime loads models only through this table, so adding a family is one entry here. Families whose
issue has not landed are listed as unavailable so clients (and the web page) can say so instead of
failing.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from typing import Any

from models.base import Generator


@dataclass(frozen=True)
class ModelEntry:
    """Where a generator class lives and what it is for."""

    module: str | None  # None: not implemented yet
    cls: str
    description: str


MODELS: dict[str, ModelEntry] = {
    "pitch": ModelEntry("models.diagnostic.pitch", "PitchShifter", "diagnostic: causal pitch shifter (mic -> audio)"),
    "testcard": ModelEntry("models.diagnostic.testcard", "Testcard", "diagnostic: test pattern video with a beep"),
    "tts": ModelEntry(
        "models.tts.generator", "TTSGenerator", "streaming text-to-speech (after CLEAR): text -> 16 kHz speech"
    ),
    "vc": ModelEntry(
        "models.vc.generator", "VCGenerator", "streaming voice conversion (after MeanVC): mic -> 16 kHz speech"
    ),
    "avatar": ModelEntry("models.avatar.generator", "Avatar", "interactive talking-head avatar (after ARIG)"),
    "video": ModelEntry("models.video.generator", "VideoGenerator", "long interactive text-to-video (after LongLive)"),
}

# tts onnx: RTF 0.14 vs 0.37 (torch)
DEFAULT_MODELS = ("pitch", "testcard", "vc", "avatar", "video", "tts:backend=onnx")


def parse_model_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"pitch:simulated_cost_ms=4,chunk_ms=20"`` -> ``("pitch", {"simulated_cost_ms": 4, "chunk_ms": 20})``."""
    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, raw = item.partition("=")
        if not eq or not key:
            raise ValueError(f"model option {item!r} in {spec!r} is not key=value")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return name.strip(), options


def load_model(name: str, device: str = "cpu", options: dict[str, Any] | None = None) -> Generator:
    """Build generator ``name`` on ``device``; raises ValueError with a clear message.

    With a ``weights=DIR`` option the family serves a published release from that folder instead of its
    shipped checkpoint (models/weights.py); bad or missing weights raise WeightsError naming the file,
    never a fallback to the shipped model.
    """
    entry = MODELS.get(name)
    if entry is None:
        raise ValueError(f"unknown model {name!r}; known models: {sorted(MODELS)}")
    options = dict(options or {})
    if "weights" in options:
        from models.weights import load_published

        return load_published(name, str(options.pop("weights")), device, options)
    if entry.module is None:
        raise ValueError(f"model {name!r} ({entry.description}) is not implemented yet")
    cls = getattr(importlib.import_module(entry.module), entry.cls)
    try:
        return cls(device=device, **(options or {})) if _takes_device(cls) else cls(**(options or {}))
    except TypeError as e:
        raise ValueError(f"bad options for model {name!r}: {e}") from e


def _takes_device(cls: type) -> bool:
    import inspect

    return "device" in inspect.signature(cls.__init__).parameters


def catalogue(loaded: dict[str, Generator]) -> list[dict[str, Any]]:
    """Every known model with its status (loaded, available, unavailable) for /healthz."""
    out = []
    for name, entry in MODELS.items():
        if name in loaded:
            out.append({"status": "loaded", "description": entry.description, **loaded[name].describe()})
        else:
            status = "available" if entry.module else "unavailable"
            out.append({"name": name, "status": status, "description": entry.description})
    return out
