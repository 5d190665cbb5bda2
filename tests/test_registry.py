"""models/registry.py: the table of families, model specs, building a generator and the /healthz catalogue."""

from __future__ import annotations

import importlib

import pytest

from models.base import Generator
from models.registry import DEFAULT_MODELS, MODELS, catalogue, load_model, parse_model_spec


def test_parse_model_spec_reads_json_values_and_plain_strings():
    assert parse_model_spec("pitch") == ("pitch", {})
    assert parse_model_spec("pitch:simulated_cost_ms=4,chunk_ms=20") == ("pitch", {"simulated_cost_ms": 4,
                                                                                   "chunk_ms": 20})
    assert parse_model_spec("tts:backend=onnx,cfg_scale=1.5,x=true") == ("tts", {"backend": "onnx", "cfg_scale": 1.5,
                                                                               "x": True})
    assert parse_model_spec("avatar:checkpoint=") == ("avatar", {"checkpoint": ""})
    for bad in ("pitch:chunk_ms", "pitch:=4"):
        with pytest.raises(ValueError, match="is not key=value"):
            parse_model_spec(bad)


def test_every_entry_names_a_generator_class_and_the_defaults_are_known():
    for name, entry in MODELS.items():
        assert entry.description
        if entry.module is None:
            continue
        cls = getattr(importlib.import_module(entry.module), entry.cls)
        assert issubclass(cls, Generator) and cls.name == name, name
    assert {parse_model_spec(spec)[0] for spec in DEFAULT_MODELS} <= set(MODELS)


def test_load_model_builds_with_options_and_refuses_clearly():
    pitch = load_model("pitch", "cpu", {"chunk_ms": 40.0})
    assert pitch.name == "pitch" and pitch.spec.chunk_ms == 40.0
    with pytest.raises(ValueError, match=r"unknown model 'nope'; known models: \["):
        load_model("nope")
    with pytest.raises(ValueError, match="bad options for model 'pitch'"):
        load_model("pitch", "cpu", {"no_such_option": 1})


def test_catalogue_lists_every_family_with_its_status():
    pitch = load_model("pitch")
    entries = {e["name"]: e for e in catalogue({"pitch": pitch})}
    assert set(entries) == set(MODELS)
    assert entries["pitch"]["status"] == "loaded" and entries["pitch"]["chunk_ms"] == pitch.spec.chunk_ms
    assert all(e["status"] in ("available", "unavailable") for n, e in entries.items() if n != "pitch")
