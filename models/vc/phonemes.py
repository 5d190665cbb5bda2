"""CTC phoneme symbols of the content recognizer, greedy decoding and phoneme error counting.

The recognizer's classes are espeak-ng's phoneme tokens (``models.speech_text.phonemize``) without the
marks that are not sounds (stress, pauses, word separators), plus the CTC blank at id 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

BLANK = "<blank>"
NOT_SOUNDS = frozenset({"'", ",", "%", "=", "|", ".", ";", "?", "!", ":", "_"})


def ctc_symbols(inventory: Iterable[str]) -> list[str]:
    """CTC classes for a phoneme inventory: blank first, then the sound tokens in sorted order."""
    return [BLANK, *sorted(t for t in set(inventory) if t not in NOT_SOUNDS)]


def ctc_labels(tokens: Iterable[str], symbols: Sequence[str]) -> list[int]:
    """Class ids of the sound tokens of a phoneme sequence (unknown tokens are skipped)."""
    index = {s: i for i, s in enumerate(symbols)}
    return [index[t] for t in tokens if t in index and t != BLANK]


def ctc_phoneme_loss(logits: torch.Tensor, frames: Sequence[int], phonemes: Sequence[Sequence[str]],
                     symbols: Sequence[str]) -> torch.Tensor:
    """CTC loss of logits (B, N, V) whose first ``frames[i]`` frames say row i's phoneme tokens (mean per label)."""
    logp = logits.log_softmax(-1).transpose(0, 1)  # (N, B, V)
    labels = [torch.tensor(ctc_labels(p, symbols)) for p in phonemes]
    return F.ctc_loss(logp, torch.cat(labels), torch.tensor(list(frames)), torch.tensor([len(lb) for lb in labels]),
                      zero_infinity=True)


def posterior_kl(pred_logp: torch.Tensor, target_logp: torch.Tensor) -> torch.Tensor:
    """KL(target || pred) of log phoneme posteriors (..., V), summed over classes, mean over the rest."""
    return F.kl_div(pred_logp, target_logp, log_target=True, reduction="none").sum(-1).mean()


def greedy_ctc(logits: torch.Tensor, symbols: Sequence[str]) -> list[str]:
    """Best-path decoding of (N, V) logits: collapse repeats, drop blanks."""
    best = logits.argmax(-1).tolist()
    out, prev = [], -1
    for i in best:
        if i != prev and i != 0:
            out.append(symbols[i])
        prev = i
    return out


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance between two token sequences (phonemes or words)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def phoneme_errors(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Edit distance between two phoneme sequences."""
    return edit_distance(ref, hyp)
