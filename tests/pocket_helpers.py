"""Tiny Pocket TTS configs, a tokenizer trained on the spot and random weights in the release's naming."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from models.tts.pocket.random_release import SENTENCES, tiny_config, train_tokenizer  # noqa: F401 (used by tests)


def package_model(config: dict, seed: int = 0, eos_threshold: float = -4.0):
    """The pocket-tts package's TTSModel built from ``config`` with random weights (every tensor drawn)."""
    from pocket_tts.models.tts_model import TTSModel
    from pocket_tts.utils.config import Config

    cfg = Config(**copy.deepcopy(config))
    model = TTSModel._from_pydantic_config_with_weights(cfg, cfg.default_temperature, 1, None, eos_threshold)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("freqs"):
                continue
            if name.endswith("emb_std"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen))
            elif name.endswith(("norm1.weight", "norm2.weight", "out_norm.weight", "alpha", "in_ln.weight")):
                tensor.copy_(1 + 0.1 * torch.randn(tensor.shape, generator=gen))
            else:
                tensor.copy_(0.2 * torch.randn(tensor.shape, generator=gen))
    return model.eval()


def release_tensors(model) -> dict[str, torch.Tensor]:
    """The package model's state dict as a release file holds it."""
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def english_2m_config(tokenizer: Path, vocab_size: int) -> dict:
    """The package's english_2m release config (its published shapes) with the test's tokenizer."""
    import yaml
    from pocket_tts.utils.config import CONFIGS_DIR

    config = yaml.safe_load((CONFIGS_DIR / "english_2m_2026-10.yaml").read_text())
    for key in ("weights_path", "weights_path_without_voice_cloning"):
        config.pop(key, None)
    table = config["flow_lm"]["lookup_table"]
    table.update(n_bins=vocab_size, tokenizer_path=str(tokenizer), tokenizer="sentencepiece")
    return config


def write_release(folder: Path, tokenizer: Path, vocab_size: int, voice_audio: torch.Tensor) -> Path:
    """A weights folder as `causalcast weights download` leaves it: random english_2m weights, the
    tokenizer, one voice exported by the package itself, config.json and the manifest."""
    import json
    import shutil

    from pocket_tts.models.model_state import export_model_state
    from safetensors.torch import save_file

    from models import weights
    from models.tts.pocket.published import PUBLISHED_MODEL

    config = english_2m_config(tokenizer, vocab_size)
    theirs = package_model(config, seed=5)
    (folder / "voices").mkdir(parents=True, exist_ok=True)
    save_file(release_tensors(theirs), str(folder / "model.safetensors"))
    shutil.copy(tokenizer, folder / "tokenizer.model")
    export_model_state(theirs.get_state_for_audio_prompt(voice_audio[None]), folder / "voices" / "alba.safetensors")
    (folder / "config.json").write_text(json.dumps(config))
    weights.write_manifest(folder, PUBLISHED_MODEL, {})
    return folder
