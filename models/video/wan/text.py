"""umT5 prompt features for the Wan DiT, through transformers' ``UMT5EncoderModel`` (encoded once per prompt).

Wan2.1 (and so LongLive) conditions on umT5-XXL's last hidden states: the prompt is tokenised to at most 512
tokens (with the closing ``</s>``), encoded with its attention mask, and the features past the prompt's
tokens are replaced by zero vectors (the DiT then attends to all 512 positions, unmasked). Prompts are
encoded when a session starts or switches, never per block, and the last few are kept (LRU) so switching back
and forth costs nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from models.lru import LRU


class WanTextEncoder:
    """Prompt -> (text_len, d_model) umT5 features, zero past the prompt; an LRU of recent prompts."""

    def __init__(self, encoder: Any, tokenizer: Any, text_len: int = 512, cache_size: int = 16) -> None:
        self.encoder = encoder.eval()
        self.tokenizer = tokenizer
        self.text_len = text_len
        self._cache: LRU[torch.Tensor] = LRU(cache_size)
        self.num_encoded = 0  # prompts actually run through the encoder (cache misses)

    @classmethod
    def from_folder(cls, folder: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32,
                    text_len: int = 512) -> WanTextEncoder:
        """Load ``folder/text_encoder`` (UMT5EncoderModel, safetensors) and ``folder/tokenizer``, offline."""
        from transformers import AutoTokenizer, UMT5EncoderModel

        folder = Path(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
        encoder = UMT5EncoderModel.from_pretrained(folder / "text_encoder", dtype=dtype, local_files_only=True)
        return cls(encoder.to(device), tokenizer, text_len)

    @property
    def dim(self) -> int:
        """Feature width (4096 for umT5-XXL)."""
        return int(self.encoder.config.d_model)

    @torch.no_grad()
    def encode(self, text: str) -> torch.Tensor:
        """Features (text_len, dim) of one prompt, on the encoder's device and dtype."""
        hit = self._cache.get(text)
        if hit is not None:
            return hit
        device = next(self.encoder.parameters()).device
        tokens = self.tokenizer([text], padding="max_length", max_length=self.text_len, truncation=True,
                                add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state[0]  # (text_len, dim)
        features = torch.where(mask[0, :, None].bool(), hidden, torch.zeros_like(hidden))
        self.num_encoded += 1
        return self._cache.put(text, features)
