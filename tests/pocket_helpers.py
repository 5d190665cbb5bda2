"""Tiny Pocket TTS configs, a tokenizer trained on the spot and random weights in the release's naming."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

SENTENCES = [
    "Hello world. I am a small speech model.",
    "The quick brown fox jumps over the lazy dog!",
    "Is this the real life? Is this just fantasy?",
    "We stream words as they arrive, one by one, from a language model.",
    "Numbers like 3.5 and 42 are read out loud; commas, colons: and dashes too.",
    "She said that the weather would be fine tomorrow, and then she left.",
    "Many sessions share one core, batched together in a single step.",
    "Voices can be cloned from a short reference clip of someone speaking.",
]


def train_tokenizer(folder: Path, vocab_size: int = 100) -> Path:
    """A sentencepiece model over the sentences above (seconds; no hub file)."""
    import sentencepiece

    prefix = folder / "tok"
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 20), model_prefix=str(prefix), vocab_size=vocab_size,
        model_type="unigram", character_coverage=1.0, minloglevel=2,
    )
    return prefix.with_suffix(".model")


def tiny_config(tokenizer: Path, vocab_size: int, flow_type: str = "lsd") -> dict:
    """The release's config layout at toy sizes (GQA, low-rank table, z projection, two transformers)."""
    seanet = {"dimension": 32, "channels": 1, "n_filters": 4, "n_residual_layers": 1, "ratios": [6, 5, 4],
              "kernel_size": 7, "residual_kernel_size": 3, "last_kernel_size": 3, "dilation_base": 2,
              "pad_mode": "constant", "compress": 2}
    return {
        "flow_lm": {
            "insert_bos_before_voice": True, "dtype": "float32",
            "flow": {"depth": 2, "dim": 32, "type": flow_type},
            "transformer": {"d_model": 48, "hidden_scale": 2, "max_period": 10000, "num_heads": 4,
                            "num_layers": 2, "attn_dim": 64, "num_kv_heads": 2},
            "lookup_table": {"dim": 48, "n_bins": vocab_size, "tokenizer": "sentencepiece",
                             "tokenizer_path": str(tokenizer), "rank": 16},
            "z_dim": 40,
        },
        "mimi": {
            "dtype": "float32", "sample_rate": 24000, "inner_dim": 8, "outer_dim": 16, "channels": 1,
            "frame_rate": 12.5, "seanet": seanet,
            "transformer": {"d_model": 32, "num_heads": 2, "num_layers": 1, "layer_scale": 0.01, "context": 20,
                            "dim_feedforward": 64, "input_dimension": 32, "output_dimensions": [32]},
            "quantizer": {"dimension": 8, "output_dimension": 16},
            "decoder_seanet": {**seanet, "dimension": 16, "kernel_size": 3},
            "decoder_transformer": {"d_model": 16, "num_heads": 2, "num_layers": 2, "layer_scale": 0.01,
                                    "context": 24, "dim_feedforward": 32, "input_dimension": 16,
                                    "output_dimensions": [16]},
        },
        "replace_characters": {"\u2019": "'"},
    }


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
