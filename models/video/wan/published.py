"""Release ``longlive``: LongLive-1.3B (generator + LoRA) on Wan2.1-T2V-1.3B's VAE and umT5, served as ``video``.

Files (``causalcast weights download longlive --dir D``), laid out in the weights folder as:

- ``longlive/longlive_base.pt``, ``longlive/lora.pt`` from ``Efficient-Large-Model/LongLive-1.3B`` (CC BY-NC 4.0):
  ``torch.save`` dicts, ``{"generator": {"model.<Wan name>": tensor}}`` and ``{"generator_lora": {PEFT keys}}``
  (rank 256, alpha 256 in LongLive's configs). The LoRA is merged into the base weights at load.
- ``vae/`` and ``text_encoder/``, ``tokenizer/`` from ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` (Apache-2.0):
  diffusers' VAE safetensors (decoder used) and transformers' umT5-XXL encoder (sharded safetensors).

``check`` reads headers only (safetensors headers; the ``.pt`` pickles memory-mapped, so only their
tensor index is read). ``load`` builds :class:`~models.video.wan.generator.WanVideoGenerator`; the release
needs a GPU to serve (``needs_gpu``): a CPU server refuses it with that said.

The hub file names and sizes below are as LongLive's and Wan's READMEs describe them; they have not been
downloaded in this project's CI (no network), so a renamed file shows up at download with its name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from models.errors import WeightsError
from models.video.wan.dit import WanConfig, WanDiT, longlive_key
from models.video.wan.lora import merge_lora
from models.video.wan.vae import StreamingWanDecoder, vae_key
from models.weights import (
    HubFile,
    PublishedModel,
    check_shapes,
    header_shapes,
    load_mapped,
    read_tensors,
    read_torch_file,
)

LONGLIVE_REPO = "Efficient-Large-Model/LongLive-1.3B"
WAN_REPO = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
GENERATOR = "longlive/longlive_base.pt"
LORA = "longlive/lora.pt"
VAE = "vae/diffusion_pytorch_model.safetensors"
TEXT_INDEX = "text_encoder/model.safetensors.index.json"
TEXT_SHARDS = tuple(f"text_encoder/model-{i:05d}-of-00005.safetensors" for i in range(1, 6))
UMT5_XXL = {"shared.weight": (256384, 4096), "encoder.final_layer_norm.weight": (4096,)}
DEFAULT_PROMPT = "A majestic eagle soaring over snow-capped mountains at sunrise, cinematic lighting"


def _files() -> tuple[HubFile, ...]:
    nc, apache = "CC-BY-NC-4.0", "Apache-2.0"
    files = [
        HubFile(LONGLIVE_REPO, "models/longlive_base.pt", nc, approx_bytes=5_680_000_000, local_name=GENERATOR),
        HubFile(LONGLIVE_REPO, "models/lora.pt", nc, approx_bytes=700_000_000, local_name=LORA),
        HubFile(WAN_REPO, VAE, apache, approx_bytes=508_000_000),
        HubFile(WAN_REPO, "vae/config.json", apache, approx_bytes=1_000),
        HubFile(WAN_REPO, "text_encoder/config.json", apache, approx_bytes=1_000),
        HubFile(WAN_REPO, TEXT_INDEX, apache, approx_bytes=30_000),
    ]
    files += [HubFile(WAN_REPO, shard, apache, approx_bytes=2_280_000_000) for shard in TEXT_SHARDS]
    files += [HubFile(WAN_REPO, f"tokenizer/{name}", apache, approx_bytes=size) for name, size in (
        ("tokenizer.json", 16_800_000), ("tokenizer_config.json", 60_000), ("special_tokens_map.json", 7_000),
        ("spiece.model", 4_500_000))]
    return tuple(files)


def _expected_dit(cfg: WanConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = WanDiT(cfg)
    return {f"model.{k}": tuple(v.shape) for k, v in model.state_dict().items()}


def _generator_state(path: Path) -> dict[str, torch.Tensor]:
    data = read_torch_file(path)
    if isinstance(data, dict) and isinstance(data.get("generator"), dict):
        return data["generator"]
    what = sorted(data)[:5] if isinstance(data, dict) else type(data).__name__
    raise WeightsError(f"{path}: no 'generator' state dict (found {what})")


def _lora_state(path: Path) -> dict[str, torch.Tensor]:
    data = read_torch_file(path)
    if isinstance(data, dict) and isinstance(data.get("generator_lora"), dict):
        return data["generator_lora"]
    if isinstance(data, dict) and all(isinstance(v, torch.Tensor) for v in data.values()):
        return data  # LongLive's loader accepts a bare PEFT state dict too
    raise WeightsError(f"{path}: no 'generator_lora' state dict")


def _shape_problems(path: Path, found: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]) -> list[str]:
    problems = [f"{path}: missing key {k!r}" for k in expected if k not in found]
    problems += [f"{path}: unexpected key {k!r}" for k in found if k not in expected]
    problems += [f"{path}: {k!r} has shape {list(found[k].shape)}, expected {list(s)}"
                 for k, s in expected.items() if k in found and tuple(found[k].shape) != s]
    return problems[:20]


def check(folder: Path, cfg: WanConfig | None = None, vae: dict[str, Any] | None = None,
          text_shapes: dict[str, tuple[int, ...]] | None = None) -> list[str]:
    """Problems of a release folder (file and key named), from headers and tensor indexes only.

    ``cfg``, ``vae`` (decoder sizes) and ``text_shapes`` (keys the text encoder must hold) default to the
    release's; tests pass tiny ones.
    """
    cfg = cfg or WanConfig.longlive()
    folder = Path(folder)
    problems: list[str] = []
    try:
        problems += _shape_problems(folder / GENERATOR, _generator_state(folder / GENERATOR), _expected_dit(cfg))
    except WeightsError as e:
        problems.append(str(e))
    try:
        with torch.device("meta"):
            dit = WanDiT(cfg)
        lora = _lora_state(folder / LORA)
        merge_lora(dit, lora, alpha=1.0, rank=_lora_rank(lora), source=str(folder / LORA), rename=longlive_key,
                   dry_run=True)
    except WeightsError as e:
        problems.append(str(e))
    with torch.device("meta"):
        decoder = StreamingWanDecoder(**(vae or {}))
    expected = {k: tuple(v.shape) for k, v in decoder.state_dict().items()}
    problems += check_shapes(folder / VAE, expected, allow_extra=True)
    problems += _check_text(folder, text_shapes or UMT5_XXL)
    return problems


def _check_text(folder: Path, must_hold: dict[str, tuple[int, ...]]) -> list[str]:
    index_path = folder / TEXT_INDEX
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError) as e:
        return [f"{index_path}: not a readable shard index ({e})"]
    problems, found = [], {}
    for shard in sorted(set(weight_map.values())):
        try:
            found.update(header_shapes(folder / "text_encoder" / shard))
        except WeightsError as e:
            problems.append(str(e))
    for key, shape in must_hold.items():
        if key not in found:
            problems.append(f"{folder / 'text_encoder'}: missing key {key!r} (not umT5-XXL's encoder?)")
        elif found[key][0] != shape:
            where = folder / "text_encoder"
            problems.append(f"{where}: {key!r} has shape {list(found[key][0])}, expected {list(shape)}")
    return problems


def _lora_rank(lora: dict[str, torch.Tensor]) -> int:
    ranks = {v.shape[0] for k, v in lora.items() if ".lora_A." in k}
    if len(ranks) != 1:
        raise WeightsError(f"LoRA ranks {sorted(ranks)}: expected one rank")
    return ranks.pop()


def load_dit(folder: Path, cfg: WanConfig, lora: bool = True, lora_alpha: float | None = None) -> WanDiT:
    """The generator in float32 on the CPU: LongLive's base weights with its LoRA merged."""
    with torch.device("meta"):
        dit = WanDiT(cfg)
    dit = dit.to_empty(device="cpu")
    load_mapped(dit, _generator_state(folder / GENERATOR), longlive_key, source=str(folder / GENERATOR))
    if lora:
        state = _lora_state(folder / LORA)
        rank = _lora_rank(state)
        merge_lora(dit, state, alpha=float(lora_alpha if lora_alpha is not None else rank), rank=rank,
                   source=str(folder / LORA), rename=longlive_key)
    return dit


def load_vae(folder: Path, sizes: dict[str, Any] | None = None) -> StreamingWanDecoder:
    """Wan2.1's VAE decoder (float32, CPU) from diffusers' safetensors."""
    vae = StreamingWanDecoder(**(sizes or {}))
    load_mapped(vae, read_tensors(folder / VAE), vae_key, source=str(folder / VAE))
    return vae


def load(folder: Path, device: str = "cuda", dtype: str = "bfloat16", max_sessions: int = 1, switch: str = "recache",
         lora: bool = True, lora_alpha: float | None = None, compile: bool = False, cfg: WanConfig | None = None,
         vae: dict[str, Any] | None = None, prompt: str = DEFAULT_PROMPT) -> Any:
    """Build the served generator from a release folder (see :func:`check` for what it must hold).

    Options (``video:weights=D,max_sessions=2,...``): ``dtype`` (bfloat16), ``max_sessions``, ``switch``,
    ``lora`` (merge LongLive's LoRA, default yes), ``lora_alpha`` (default: the rank, LongLive's 256/256),
    ``compile``, ``prompt`` (the default first prompt). ``cfg`` / ``vae`` are for tests (tiny shapes).
    """
    from models.video.wan.generator import WanVideoGenerator
    from models.video.wan.text import WanTextEncoder

    cfg = cfg or WanConfig.longlive()
    torch_dtype = getattr(torch, dtype)
    dit = load_dit(Path(folder), cfg, lora, lora_alpha)
    decoder = load_vae(Path(folder), vae)
    text = WanTextEncoder.from_folder(folder, device=device, dtype=torch_dtype, text_len=cfg.text_len)
    generator = WanVideoGenerator(dit=dit, decoder=decoder, text_encoder=text, device=device, dtype=torch_dtype,
                                  switch=switch, max_sessions=max_sessions, default_prompt=prompt)
    if compile:
        generator.compile()
    return generator


PUBLISHED_MODEL = PublishedModel(
    name="longlive",
    family="video",
    description="LongLive-1.3B (Wan2.1-T2V-1.3B, frame sink + window, KV-recache) at 832x480, 16 fps",
    files=_files(),
    check=check,
    load=load,
    terms="LongLive-1.3B's weights are licensed CC BY-NC 4.0 (non-commercial use only); Wan2.1's VAE and "
          "umT5 encoder Apache-2.0. About 18 GB in all.",
    needs_gpu=True,
)
