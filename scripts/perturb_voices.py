"""More training voices from a corpus's own: each clean training utterance played at another speed, as a new voice.

    python scripts/perturb_voices.py --data data/speech_human --out data/speech_human_sp

Speed perturbation moves tempo, pitch and formants together, and to a speaker encoder formants that moved are
another vocal tract (as speaker-verification recipes count a speed-perturbed speaker as a new one). The
human-derived corpus has only a few real vocal tracts (flite kal and slt, festival kal, ked and slt), so its
zero-shot speaker encoder saw few human timbres; this corpus adds ``len(--factors)`` pseudo-speakers per
training voice. Each clean (un-augmented) training utterance is written once, at one factor drawn from
``--factors`` by its id, under the voice ``<voice>-sp<factor>``: every pseudo-speaker gets about
1/len(factors) of its voice's sentences, and the DiT's references (other utterances of the same voice) stay
within one factor. Only the ``train`` split is read: held-out voices never enter it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.speech_corpus import SAMPLE_RATE_HZ, load_manifest, voices, write_corpus, write_utterance  # noqa: E402
from models.audio.dsp import read_wav, resample  # noqa: E402


def perturbed_voice(voice_id: str, factor: float) -> str:
    """The pseudo-speaker id of ``voice_id`` played ``factor`` times as fast."""
    return f"{voice_id}-sp{factor:g}"


def perturb(data: Path, out: Path, factors: list[float], seed: int = 0, limit: int | None = None) -> dict:
    """Write the perturbed corpus to ``out``; the summary write_corpus returns."""
    if any(not 0.7 <= f <= 1.4 or f == 1.0 for f in factors):
        raise SystemExit(f"factors must lie in [0.7, 1.4] and differ from 1: {factors}")
    table = voices(data)
    rows = [r for r in load_manifest(data, ("train",)) if not r["augment"]][:limit]
    if any(table[r["voice_id"]].get("held_out") for r in rows):
        raise SystemExit("a held-out voice has training rows: refusing to perturb it into the training data")
    new_rows, new_table = [], {}
    for row in rows:
        factor = random.Random(f"{seed}-{row['id']}-{row['voice_id']}").choice(factors)
        voice_id = perturbed_voice(row["voice_id"], factor)
        new_table.setdefault(voice_id, {**table[row["voice_id"]], "speed": factor, "source_voice": row["voice_id"]})
        audio, rate = read_wav(str(data / row["wav"]))
        # read at rate * factor Hz and written at the corpus's rate: played factor times as fast
        played = resample(audio, int(round(rate * factor)), SAMPLE_RATE_HZ)
        new_rows.append(write_utterance(out, {**row, "voice_id": voice_id, "augment": [f"speed {factor:g}"]}, played))
    return write_corpus(out, new_rows, new_table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="the corpus whose clean training utterances are perturbed")
    ap.add_argument("--out", required=True)
    ap.add_argument("--factors", default="0.88,0.94,1.06,1.12", help="speeds (formant and pitch ratios)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="the first N clean training utterances (tests)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    factors = [float(f) for f in args.factors.split(",")]
    print(json.dumps(perturb(Path(args.data), out, factors, args.seed, args.limit)))


if __name__ == "__main__":
    main()
