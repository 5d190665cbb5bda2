"""Sizes and settings of a Pocket TTS release, read from the release's own config layout.

The package describes each release in a YAML file (``flow_lm`` / ``mimi`` sections); :meth:`PocketConfig.
from_dict` reads that layout, so a test builds the package's model and ours from one dict, and a published
release is one such dict (``ENGLISH``, the default ~100M English model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TransformerShape:
    """A causal transformer (flow LM backbone or Mimi's)."""

    d_model: int
    num_heads: int
    num_layers: int
    dim_feedforward: int
    max_period: float = 10_000.0
    attn_dim: int | None = None  # query/output width; d_model when None
    num_kv_heads: int | None = None  # grouped-query attention; num_heads when None
    context: int | None = None  # attention window in frames (Mimi); None: unbounded
    layer_scale: float | None = None  # residual scales (Mimi)
    input_dimension: int | None = None  # Mimi's projected transformer: width of its input/output

    @property
    def width(self) -> int:
        """Query (and attention output) width."""
        return self.attn_dim or self.d_model

    @property
    def kv_heads(self) -> int:
        """Heads of keys and values (the cache holds these)."""
        return self.num_kv_heads or self.num_heads

    @property
    def head_dim(self) -> int:
        """Channels per head."""
        return self.width // self.num_heads


@dataclass(frozen=True)
class SEANetShape:
    """A SEANet convolutional encoder or decoder."""

    dimension: int
    n_filters: int
    n_residual_layers: int
    ratios: tuple[int, ...]
    kernel_size: int
    residual_kernel_size: int
    last_kernel_size: int
    dilation_base: int
    compress: int
    channels: int = 1

    @property
    def hop(self) -> int:
        """Audio samples per frame."""
        out = 1
        for r in self.ratios:
            out *= r
        return out


@dataclass(frozen=True)
class PocketConfig:
    """One release: flow LM, Mimi codec, sampling defaults and text rules."""

    backbone: TransformerShape
    latent_dim: int  # Mimi latent channels (quantizer dimension)
    flow_dim: int
    flow_depth: int
    flow_type: str  # "lsd" (2 time conditions), "flow_matching" (1), "pointwise" / "drifting" (0)
    n_bins: int  # text tokens
    lut_dim: int
    lut_rank: int | None
    z_dim: int | None
    insert_bos_before_voice: bool
    encoder: SEANetShape
    decoder: SEANetShape
    encoder_transformer: TransformerShape
    decoder_transformer: TransformerShape
    inner_dim: int | None
    outer_dim: int | None
    quantizer_output_dim: int
    sample_rate_hz: int = 24_000
    frame_rate_hz: float = 12.5
    temperature: float = 0.3
    eos_threshold: float = -4.0
    frames_after_eos: int | None = None  # the release's recommendation; None: from the text length
    text_rules: dict[str, Any] = field(default_factory=dict)

    @property
    def num_time_conds(self) -> int:
        """Time inputs of the flow head."""
        return {"lsd": 2, "flow_matching": 1, "pointwise": 0, "drifting": 0}[self.flow_type]

    @property
    def samples_per_latent(self) -> int:
        """Audio samples one latent frame decodes to (1920 at 24 kHz, 12.5 Hz)."""
        return round(self.sample_rate_hz / self.frame_rate_hz)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PocketConfig:
        """Read the package's YAML layout (``flow_lm``, ``mimi`` and the top-level text options)."""
        f, m = d["flow_lm"], d["mimi"]
        t = f["transformer"]
        backbone = TransformerShape(
            d_model=t["d_model"], num_heads=t["num_heads"], num_layers=t["num_layers"],
            dim_feedforward=t.get("dim_feedforward") or int(t["d_model"] * t["hidden_scale"]),
            max_period=float(t["max_period"]), attn_dim=t.get("attn_dim"), num_kv_heads=t.get("num_kv_heads"),
        )
        enc_t = _mimi_transformer(m["transformer"])
        enc_s = _seanet(m["seanet"])
        rules = {k: d[k] for k in ("pad_with_spaces_for_short_inputs", "remove_semicolons",
                                   "append_terminal_punctuation", "capitalize_first_letter",
                                   "replace_characters") if k in d}
        return cls(
            backbone=backbone, latent_dim=m["quantizer"]["dimension"], flow_dim=f["flow"]["dim"],
            flow_depth=f["flow"]["depth"], flow_type=f["flow"].get("type", "lsd"),
            n_bins=f["lookup_table"]["n_bins"], lut_dim=f["lookup_table"]["dim"],
            lut_rank=f["lookup_table"].get("rank"), z_dim=f.get("z_dim"),
            insert_bos_before_voice=bool(f.get("insert_bos_before_voice", False)),
            encoder=enc_s, decoder=_seanet(m["decoder_seanet"]) if m.get("decoder_seanet") else enc_s,
            encoder_transformer=enc_t,
            decoder_transformer=_mimi_transformer(m["decoder_transformer"]) if m.get("decoder_transformer")
            else enc_t,
            inner_dim=m.get("inner_dim"), outer_dim=m.get("outer_dim"),
            quantizer_output_dim=m["quantizer"]["output_dimension"], sample_rate_hz=m["sample_rate"],
            frame_rate_hz=m["frame_rate"], temperature=d.get("default_temperature", 0.3),
            eos_threshold=d.get("default_eos_threshold", -4.0),
            frames_after_eos=d.get("model_recommended_frames_after_eos"), text_rules=rules,
        )


def _seanet(s: dict[str, Any]) -> SEANetShape:
    return SEANetShape(
        dimension=s["dimension"], n_filters=s["n_filters"], n_residual_layers=s["n_residual_layers"],
        ratios=tuple(s["ratios"]), kernel_size=s["kernel_size"], residual_kernel_size=s["residual_kernel_size"],
        last_kernel_size=s["last_kernel_size"], dilation_base=s["dilation_base"], compress=s["compress"],
        channels=s.get("channels", 1),
    )


def _mimi_transformer(t: dict[str, Any]) -> TransformerShape:
    if list(t.get("output_dimensions", [t["input_dimension"]])) != [t["input_dimension"]]:
        raise ValueError("Mimi transformers with other output widths than their input are not supported")
    return TransformerShape(
        d_model=t["d_model"], num_heads=t["num_heads"], num_layers=t["num_layers"],
        dim_feedforward=t["dim_feedforward"], max_period=float(t.get("max_period", 10_000.0)),
        context=t["context"], layer_scale=t["layer_scale"], input_dimension=t["input_dimension"],
    )


_SEANET = {"dimension": 512, "channels": 1, "n_filters": 64, "n_residual_layers": 1, "ratios": [6, 5, 4],
           "kernel_size": 7, "residual_kernel_size": 3, "last_kernel_size": 3, "dilation_base": 2,
           "pad_mode": "constant", "compress": 2}
_MIMI_TRANSFORMER = {"d_model": 512, "num_heads": 8, "num_layers": 2, "layer_scale": 0.01, "context": 250,
                     "dim_feedforward": 2048, "input_dimension": 512, "output_dimensions": [512]}

# The default English release (kyutai/pocket-tts ``languages/english``): a 6-layer width-1024 flow LM with a
# 6-block LSD head, and Mimi at 12.5 Hz with 32 latent channels.
ENGLISH: dict[str, Any] = {
    "default_temperature": 0.3,
    "replace_characters": {"\u2019": "'", "\u2018": "'"},
    "flow_lm": {
        "insert_bos_before_voice": True, "dtype": "float32", "flow": {"depth": 6, "dim": 512},
        "transformer": {"d_model": 1024, "hidden_scale": 4, "max_period": 10000, "num_heads": 16, "num_layers": 6},
        "lookup_table": {"dim": 1024, "n_bins": 4000, "tokenizer": "tokenizers", "tokenizer_path": "tokenizer.json"},
    },
    "mimi": {
        "dtype": "float32", "sample_rate": 24000, "inner_dim": 32, "outer_dim": 512, "channels": 1,
        "frame_rate": 12.5, "seanet": _SEANET, "transformer": _MIMI_TRANSFORMER,
        "quantizer": {"dimension": 32, "output_dimension": 512},
    },
}
