"""Merging a published LoRA (PEFT's state-dict layout) into a module's linear weights at load time.

LongLive ships its generator as a base checkpoint plus a rank-256 LoRA on every linear layer of the DiT's
attention blocks, saved with ``peft.get_peft_model_state_dict``: ``base_model.model.<module>.lora_A.weight``
(rank, in) and ``...lora_B.weight`` (out, rank). Merging once (W += alpha / rank * B @ A) makes serving cost
exactly the base network's; nothing of PEFT is needed at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from models.errors import WeightsError

PEFT_PREFIX = "base_model.model."


@torch.no_grad()
def merge_lora(module: nn.Module, lora: Mapping[str, torch.Tensor], *, alpha: float, rank: int, source: str,
               rename: Callable[[str], str] = lambda k: k, dry_run: bool = False) -> int:
    """Add every A/B pair of ``lora`` into ``module``'s weights; returns how many layers were merged.

    Every tensor must belong to a complete pair whose target weight exists with matching shapes, else
    :class:`WeightsError` names ``source`` and the keys. Merging is done in float32, then cast back.
    ``dry_run`` only checks (shapes suffice: the module may live on the meta device).
    """
    own = module.state_dict()
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    faults = []
    for key, value in lora.items():
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in name:
                target = rename(name.split(marker)[0]) + ".weight"
                pairs.setdefault(target, {})[part] = value
                break
        else:
            faults.append(f"unexpected key {key}")
    for target, pair in pairs.items():
        if set(pair) != {"lora_A", "lora_B"}:
            faults.append(f"{target}: incomplete pair ({sorted(pair)})")
        elif target not in own:
            faults.append(f"no layer {target} for its LoRA")
        else:
            a, b = pair["lora_A"].float(), pair["lora_B"].float()
            if a.shape[0] != rank or b.shape[1] != rank or (b.shape[0], a.shape[1]) != tuple(own[target].shape):
                shapes = f"A {list(a.shape)} / B {list(b.shape)}"
                faults.append(f"{target}: LoRA {shapes} does not fit {list(own[target].shape)}")
    if faults:
        more = f" (+{len(faults) - 10} more)" if len(faults) > 10 else ""
        raise WeightsError(f"{source}: " + "; ".join(faults[:10]) + more)
    if dry_run:
        return len(pairs)
    for target, pair in pairs.items():
        weight = own[target]
        delta = (alpha / rank) * (pair["lora_B"].float() @ pair["lora_A"].float())
        weight.copy_((weight.float() + delta.to(weight.device)).to(weight.dtype))
    return len(pairs)
