"""The published Pocket TTS release (Kyutai, English, ~100M) as ``tts:weights=DIR``.

Folder layout (``causalcast weights download pocket-tts --dir DIR`` fills it)::

    model.safetensors                  flow LM + Mimi, without the voice-cloning encoder (open)
    model_voice_cloning.safetensors    the same with the encoder and speaker projection (gated, optional)
    tokenizer.json                     the text tokenizer (or tokenizer.model: sentencepiece)
    voices/NAME.safetensors            shipped voices (the package's exported voice states)
    config.json                        optional: another release's config in the package's layout
                                       (e.g. english_2m); default: the English ~100M model

``check`` reads safetensors headers only (names, shapes, dtypes against our modules built on the meta
device); ``load`` builds a :class:`~models.tts.pocket.generator.PocketGenerator`, preferring the cloning
variant when present. Sizes are approximate (float32 tensors counted from the shapes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from models.errors import WeightsError
from models.tts.pocket.checkpoint import CLONING_PREFIXES, PocketTTS, voice_from_state_file
from models.tts.pocket.config import ENGLISH, PocketConfig
from models.weights import HubFile, PublishedModel, check_shapes, header_shapes, read_tensors

OPEN_REPO = "kyutai/pocket-tts-without-voice-cloning"
GATED_REPO = "kyutai/pocket-tts"
OPEN_REVISION = "a7056f505a4a8ca72d8b5fb1440071d6f1a35739"  # pinned as the pocket-tts 4.0.1 package pins them
GATED_REVISION = "db04f0e653473e5c7333c69686ac92b7460b0c1d"
TOKENIZER_REVISION = "00eac05ed3d16bdc3f6b5d598874019c34a89214"
WEIGHTS_LICENSE = "CC-BY-4.0"
VOICES = ("alba", "marius", "javert", "jean", "fantine", "cosette", "eponine", "azelma")
MODEL_FILE, CLONING_FILE, TOKENIZER_FILE = "model.safetensors", "model_voice_cloning.safetensors", "tokenizer.json"

TERMS = (
    "Pocket TTS weights (Kyutai) are published under CC-BY-4.0 (attribute Kyutai); the package's code is MIT.\n"
    f"The voice-cloning variant ({GATED_REPO}) is gated: open https://huggingface.co/{GATED_REPO}, accept its "
    "terms (among them: do not clone a voice without its owner's consent, do not use it to deceive or "
    "impersonate), then log in (`hf auth login`) before downloading. Without it, only the shipped voices "
    "are served."
)


def _files() -> tuple[HubFile, ...]:
    lang = "languages/english"
    files = [
        HubFile(OPEN_REPO, f"{lang}/model.safetensors", WEIGHTS_LICENSE, approx_bytes=400_000_000,
                local_name=MODEL_FILE, revision=OPEN_REVISION),
        HubFile(GATED_REPO, f"{lang}/model.safetensors", WEIGHTS_LICENSE, approx_bytes=438_000_000,
                local_name=CLONING_FILE, revision=GATED_REVISION, gated=True, optional=True),
        HubFile(OPEN_REPO, f"{lang}/tokenizer.json", WEIGHTS_LICENSE, approx_bytes=300_000,
                local_name=TOKENIZER_FILE, revision=TOKENIZER_REVISION, optional=True),  # check() requires a tokenizer
    ]
    for i, name in enumerate(VOICES):
        files.append(HubFile(OPEN_REPO, f"{lang}/embeddings/{name}.safetensors", WEIGHTS_LICENSE,
                             approx_bytes=6_000_000, local_name=f"voices/{name}.safetensors", revision=OPEN_REVISION,
                             optional=i > 0))
    return tuple(files)


def expected_shapes(cfg: PocketConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the release and its shape, from our modules built without memory."""
    with torch.device("meta"):
        model = PocketTTS(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def folder_config(folder: Path) -> PocketConfig:
    """The folder's ``config.json`` if it has one, else the English release; WeightsError naming the file."""
    path = folder / "config.json"
    if not path.exists():
        return PocketConfig.from_dict(ENGLISH)
    try:
        return PocketConfig.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WeightsError(f"{path}: not a Pocket TTS config ({type(e).__name__}: {e})") from e


def tokenizer_path(folder: Path) -> Path:
    """tokenizer.json, else tokenizer.model (the smaller releases ship sentencepiece)."""
    json_path = folder / TOKENIZER_FILE
    return json_path if json_path.exists() or not (folder / "tokenizer.model").exists() else folder / "tokenizer.model"


def check(folder: Path) -> list[str]:
    """Problems with a folder from headers alone, each naming the file (and key)."""
    try:
        expected = expected_shapes(folder_config(folder))
    except WeightsError as e:
        return [str(e)]
    problems: list[str] = []
    if (folder / CLONING_FILE).exists():
        problems += check_shapes(folder / CLONING_FILE, expected)
    without = {k: s for k, s in expected.items() if not k.startswith(CLONING_PREFIXES)}
    found = _keys(folder / MODEL_FILE, problems)
    if found is not None:  # the open file may or may not carry the cloning parts: check what is there
        problems += check_shapes(folder / MODEL_FILE, {**without, **{k: expected[k] for k in found if k in expected}})
    if not tokenizer_path(folder).exists():
        problems.append(f"{folder / TOKENIZER_FILE}: missing")
    for path in sorted((folder / "voices").glob("*.safetensors")) if (folder / "voices").is_dir() else []:
        _keys(path, problems)
    return problems


def _keys(path: Path, problems: list[str]) -> set[str] | None:
    try:
        return set(header_shapes(path))
    except WeightsError as e:
        problems.append(str(e))
        return None


def load(folder: Path, device: str = "cpu", **options: Any):
    """The generator serving ``folder`` (options go to PocketGenerator: max_sessions, window, ...)."""
    from models.tts.pocket.generator import load_generator

    cfg = folder_config(folder)
    model = PocketTTS(cfg)
    path = folder / CLONING_FILE if (folder / CLONING_FILE).exists() else folder / MODEL_FILE
    model.load_release(read_tensors(path), source=str(path))
    voices = {}
    if (folder / "voices").is_dir():
        for voice_path in sorted((folder / "voices").glob("*.safetensors")):
            voices[voice_path.stem] = voice_from_state_file(voice_path, cfg.backbone.num_layers)
    return load_generator(model, tokenizer_path(folder), voices, device=device, **options)


PUBLISHED_MODEL = PublishedModel(
    name="pocket-tts",
    family="tts",
    description="Kyutai Pocket TTS, English (~100M: 6-layer width-1024 flow LM, LSD head, Mimi at 12.5 Hz, "
                "24 kHz); streamed word by word and batched by our runtime",
    files=_files(),
    check=check,
    load=load,
    terms=TERMS,
)
