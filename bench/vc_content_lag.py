r"""How far behind the sound the VC content features are: what a linear map from them says about the latents.

The content encoder is causal (its features at a frame have heard only the audio up to it) and trained with
CTC, which names a sound once it has been heard. This measures by how much, on a DiT run's training features
(``--run``: features_latents.pt, features_content_0.pt, as ``scripts/train_vc.py features`` writes them):

- ``vc.content_lag``: a ridge regression from the content of latent frame p + offset (both 50 Hz frames) to
  latent p, fitted on ``--fit`` training utterances, its R^2 on ``--held`` others, for each offset; and from a
  window of frames (``span`` 3: offsets o-2..o);
- ``vc.content_lag_vocoded``: maps from three windows (causal -3..0, centred -2..+2, ahead -1..+3) applied to a
  training voice's clean clips (``--voice`` of ``--data``), decoded by ``--checkpoint``'s vocoder with the
  clip's own pitch, judged (PER by ``--judge-checkpoint``'s recognizer, WER by pocketsphinx) beside the source.

Slow on a CPU (a few minutes); one torch thread.

    python bench/vc_content_lag.py --run runs/vchE --checkpoint checkpoints/vc_default.safetensors \\
        --judge-checkpoint JUDGE --data data/speech_human --voice fl-slt-0
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.phonemes import PhonemeRecognizer  # noqa: E402
from evaluation.speech_corpus import load_utterances  # noqa: E402
from evaluation.words import open_recognizer  # noqa: E402
from models.audio.pitch_track import decoder_pitch  # noqa: E402
from models.vc.checkpoint import load_checkpoint  # noqa: E402


def windows(content: torch.Tensor, num: int, offsets: list[int]) -> torch.Tensor:
    """(num * 2, C) content -> (num, len(offsets) * 2C): latent p's row holds the frames of p + each offset."""
    per_latent = content.reshape(-1, 2 * content.shape[-1])[:num]
    before, after = max(0, -min(offsets)), max(0, max(offsets))
    padded = torch.nn.functional.pad(per_latent, (0, 0, before, after))
    return torch.cat([padded[before + o : before + o + num] for o in offsets], dim=1)


class Ridge:
    """Standardised inputs, a bias, an L2 penalty: the closed-form fit."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, penalty: float = 10.0) -> None:
        self.mean, self.std = x.mean(0), x.std(0) + 1e-5
        a = self._design(x)
        self.w = torch.linalg.solve(a.T @ a + penalty * torch.eye(a.shape[1]), a.T @ y)

    def _design(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([(x - self.mean) / self.std, torch.ones(len(x), 1)], dim=1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs (N, features) -> predictions (N, outputs)."""
        return self._design(x) @ self.w


def emit(**fields) -> None:
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in fields.items()}), flush=True)


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/vchE", help="a DiT run folder with its features")
    ap.add_argument("--fit", type=int, default=1500, help="training utterances the maps are fitted on")
    ap.add_argument("--held", type=int, default=500, help="other training utterances R^2 is measured on")
    ap.add_argument("--checkpoint", default="checkpoints/vc_default.safetensors", help="its vocoder and encoders")
    ap.add_argument("--judge-checkpoint", default=None, help="PER judge (default: --checkpoint's recognizer)")
    ap.add_argument("--data", default="data/speech_human")
    ap.add_argument("--voice", default="fl-slt-0", help="a training voice of --data")
    ap.add_argument("--utterances", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(1)
    run = Path(args.run)
    latents = torch.load(run / "features_latents.pt", weights_only=False)
    content = torch.load(run / "features_content_0.pt", weights_only=False)["content"]
    rows = [i for i, s in enumerate(latents["split"]) if s == "train"]
    random.Random(0).shuffle(rows)
    fit, held = rows[: args.fit], rows[args.fit : args.fit + args.held]
    lat = latents["latents"]

    def table(ids: list[int], offsets: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([windows(content[i].float(), len(lat[i]), offsets) for i in ids])
        return x, torch.cat([lat[i].float() for i in ids])

    for span in (1, 3):
        for offset in range(-2, 5):
            offsets = list(range(offset - span + 1, offset + 1))
            ridge = Ridge(*table(fit, offsets))
            x, y = table(held, offsets)
            r2 = 1 - float(((ridge(x) - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())
            emit(bench="vc.content_lag", run=args.run, offsets=offsets, held_out_r2=r2)

    loaded = load_checkpoint(args.checkpoint)
    model = loaded.model.eval()
    hop = model.vae.cfg.hop
    clips = [u for u in load_utterances(args.data, ("train",)) if u.voice_id == args.voice and "-a" not in u.id]
    clips = clips[: args.utterances]
    words, phonemes = open_recognizer(), PhonemeRecognizer(args.judge_checkpoint or args.checkpoint)
    sources = []
    for u in clips:
        x = torch.from_numpy(np.pad(u.audio, (0, -len(u.audio) % hop)))[None]
        z = model.vae.normalize(model.vae.encode(x)[0]).transpose(1, 2)[0]
        c = model.content_offline(x)[0]
        num = min(len(z), len(c) // 2)
        sources.append((u, x, z[:num], c[: 2 * num]))
    row = {"bench": "vc.content_lag_vocoded", "run": args.run, "checkpoint": args.checkpoint, "voice": args.voice,
           "utterances": len(clips), "per_source": phonemes.per((u.text, "en-us", u.audio) for u in clips),
           "wer_source": words.wer((u.text, u.audio) for u in clips)}
    for name, offsets in (("causal", [-3, -2, -1, 0]), ("centred", [-2, -1, 0, 1, 2]), ("ahead", [-1, 0, 1, 2, 3])):
        ridge = Ridge(*table(fit, offsets))
        made, errors = [], []
        for u, x, z, c in sources:
            guess = ridge(windows(c, len(z), offsets))
            errors.append(float((guess - z).pow(2).mean()))
            wave = model.vae.decode(model.vae.denormalize(guess.T[None]), decoder_pitch(x))[0]
            wave = wave[model.vae.delay_samples :]
            made.append((u.text, wave.numpy()))
        row[f"mse_{name}"] = float(np.mean(errors))
        row[f"per_{name}"] = phonemes.per((t, "en-us", a) for t, a in made)
        row[f"wer_{name}"] = words.wer(made)
    emit(**row)


if __name__ == "__main__":
    main()
