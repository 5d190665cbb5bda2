r"""Train the latent phoneme recognizer (``models/vc/latent_recognizer.py``) for the VC DiT's content loss.

It reads the latents that ``scripts/train_vc.py features --part latents`` wrote (a run folder's
``features_latents.pt``) and the phonemes of the same utterances from their corpus's manifest, and learns
CTC over the corpus's phoneme classes. Several corpora, each as ``FEATURES_DIR:DATA_DIR`` (their latents
must come from one VAE). Light Gaussian noise on the input latents, so the loss it becomes has useful
gradients around the data, not only on it. The run of issue 15's session 9 (docs/models/vc.md: the loss was
tried on the DiT at weight 0.5 and made every held-out number worse; not shipped):

    python scripts/train_latent_recognizer.py --corpus runs/vchE:data/speech_human --corpus runs/vceE:data/speech_vc \
        --out runs/latrec --minutes 12 --steps 3000 --batch 16 --lr 2e-3 --threads 2

It logs (OUT/latrec_log.jsonl) the greedy-CTC phoneme error on each corpus's held-out splits at the end.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training_log import log, lr_at, optimizer_step  # noqa: E402

from evaluation.speech_corpus import load_manifest, phoneme_inventory  # noqa: E402
from models.vc.latent_recognizer import LatentRecognizer, LatentRecognizerConfig  # noqa: E402
from models.vc.phonemes import ctc_labels, ctc_phoneme_loss, ctc_symbols, greedy_ctc, phoneme_errors  # noqa: E402

EVAL_SPLITS = ("test_seen_voice", "test_unseen_voice")


def load_corpora(pairs: list[str]) -> tuple[list[dict], list[str]]:
    """Every utterance of the given corpora as {latents, phonemes, split}, and the CTC classes of all of them."""
    rows, inventory, vae_cfg = [], set(), None
    for pair in pairs:
        features_dir, data_dir = pair.split(":", 1)
        feats = torch.load(Path(features_dir) / "features_latents.pt")
        if vae_cfg is not None and feats.get("vae_cfg") != vae_cfg:
            raise SystemExit(f"{features_dir}: its latents come from another VAE than the first corpus's")
        vae_cfg = feats.get("vae_cfg")
        phonemes = {r["id"]: r["phonemes"].split() for r in load_manifest(data_dir)}
        inventory |= set(phoneme_inventory(data_dir))
        for uid, split, z in zip(feats["id"], feats["split"], feats["latents"], strict=True):
            rows.append({"latents": z.float(), "phonemes": phonemes[uid], "split": split, "corpus": data_dir})
    return rows, ctc_symbols(inventory)


@torch.no_grad()
def phoneme_error(model: LatentRecognizer, rows: list[dict], symbols: list[str]) -> float:
    """Greedy-CTC phoneme error rate over utterances."""
    errors = total = 0
    for row in rows:
        ref = [symbols[i] for i in ctc_labels(row["phonemes"], symbols)]
        errors += phoneme_errors(ref, greedy_ctc(model(row["latents"][None])[0], symbols))
        total += len(ref)
    return errors / max(1, total)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", action="append", required=True, help="FEATURES_DIR:DATA_DIR (repeatable)")
    ap.add_argument("--out", default="runs/latrec")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--minutes", type=float, default=12.0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--input-noise", type=float, default=0.3, help="max std of Gaussian noise on the latents")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, symbols = load_corpora(args.corpus)
    train = [r for r in rows if r["split"] == "train"]
    cfg = LatentRecognizerConfig(latent_dim=train[0]["latents"].shape[1], num_phonemes=len(symbols))
    model = LatentRecognizer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    start, step = time.time(), 0
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, warmup=100)
        batch = rng.sample(train, args.batch)
        length = max(len(r["latents"]) for r in batch)
        z = torch.stack([F.pad(r["latents"], (0, 0, 0, length - len(r["latents"]))) for r in batch])
        z = z + torch.rand(len(batch), 1, 1) * args.input_noise * torch.randn_like(z)
        frames = [len(r["latents"]) * cfg.per_latent for r in batch]
        loss = ctc_phoneme_loss(model(z), frames, [r["phonemes"] for r in batch], symbols)
        optimizer_step(opt, loss, model.parameters())
        minutes = (time.time() - start) / 60
        if step % 25 == 0:
            log(out / "latrec_log.jsonl", step=step, min=minutes, ctc=loss.item())
        if step % 200 == 0 or minutes > args.minutes:
            torch.save(model.state(symbols), out / "latent_recognizer.pt")
        if minutes > args.minutes:
            break
    torch.save(model.state(symbols), out / "latent_recognizer.pt")
    model.eval()
    result = {"step": step}
    for corpus in dict.fromkeys(r["corpus"] for r in rows):
        for split in EVAL_SPLITS:
            held = [r for r in rows if r["corpus"] == corpus and r["split"] == split][:100]
            if held:
                result[f"per_{Path(corpus).name}_{split}"] = round(phoneme_error(model, held, symbols), 3)
    log(out / "latrec_log.jsonl", **result)


if __name__ == "__main__":
    main()
