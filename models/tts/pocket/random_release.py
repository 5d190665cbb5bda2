"""A Pocket TTS release's shapes without a download: a tokenizer trained on the spot and toy-sized configs.

For tests and ``bench/tts_pocket.py`` (random weights of the published layout); nothing here touches a hub.
"""

from __future__ import annotations

from pathlib import Path

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
