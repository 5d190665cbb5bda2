"""Synthesize the human-derived speech corpus, augmented as real microphones, rooms and calls would.

flite and festival voices are built from human recordings; espeak-ng adds variety.

Usage (reproducible; the defaults give ~5,000 training utterances, ~4.5 h, ~10 min on 2 cores):

    python scripts/make_human_speech.py --out data/speech_human

Voices (Debian packages flite, festival, festvox-kallpc16k, festvox-kdlpc16k, festvox-us-slt-hts, installed
by the Makefile):
- training: flite kal, kal16, slt; festival kal_diphone, ked_diphone, cmu_us_slt_arctic_hts; and
  ``--num-espeak-voices`` espeak-ng voices from scripts/make_speech_data.py's training variants. Each flite
  voice also comes at several pitch and rate settings (``--setf``), each a voice id of its own.
- **held out: flite awb and rms.** They appear only in the ``test_unseen_voice`` and ``ref_unseen_voice``
  splits and never in ``train``: every speech number of issue 15 is measured on them.

Augmentation (models/audio/augment.py): every training utterance is written clean, and ``--augment-copies``
more times with a random chain of tempo ±10 %, pitch shift, room reverb, microphone or telephone EQ,
noise at 10-30 dB SNR, an Opus round trip at 16-32 kbit/s and a level change (``augment`` in the manifest
names what was applied). Test and reference splits are clean.

Layout of ``--out`` is that of scripts/make_speech_data.py (manifest.jsonl, voices.json, phonemes.json,
wav/<voice_id>/<id>.wav, 16 kHz mono 16-bit), with ``engine`` and ``augment`` per utterance, so the
training scripts read either corpus. Phonemes are espeak-ng's en-us for every voice.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from make_speech_data import TRAIN_VARIANTS  # noqa: E402
from speech_sentences import sentences  # noqa: E402

from evaluation.speech_corpus import render, write_corpus, write_utterance  # noqa: E402
from models.audio.augment import augment  # noqa: E402
from models.speech_text import normalize_text, phonemize  # noqa: E402

SAMPLE_RATE_HZ = 16_000
HELD_OUT_FLITE = ("awb", "rms")  # never in any training split
TRAIN_FLITE = ("kal", "kal16", "slt")
TRAIN_FESTIVAL = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
# flite settings per derived voice: (duration_stretch, f0 mean shift as a ratio)
FLITE_SETTINGS = ((1.0, 1.0), (0.9, 1.15), (1.1, 0.87), (0.95, 1.3), (1.05, 0.78))
# the speakers the flite and festival voices were recorded from (described in each voice's table entry, so a
# shipped voice built from them is labelled for people: "Female, medium (170 Hz), American")
GENDER = {"kal": "male", "kal16": "male", "slt": "female", "awb": "male", "rms": "male", "kal_diphone": "male",
          "ked_diphone": "male", "cmu_us_slt_arctic_hts": "female"}
LANGUAGE = {"awb": "en-gb-scotland"}  # the rest are American English


def make_voices(num_espeak: int, rng: random.Random) -> dict[str, dict]:
    """Voice definitions: training flite (x settings), festival and espeak voices; held-out flite voices."""
    voices: dict[str, dict] = {}
    for name in TRAIN_FLITE:
        for k, (stretch, f0_ratio) in enumerate(FLITE_SETTINGS):
            voices[f"fl-{name}-{k}"] = {"engine": "flite", "voice": name, "stretch": stretch, "f0_ratio": f0_ratio,
                                        "held_out": False, **describe(name)}
    for name in TRAIN_FESTIVAL:
        voices[f"fe-{name}"] = {"engine": "festival", "voice": name, "held_out": False, **describe(name)}
    for i in range(num_espeak):
        variant = TRAIN_VARIANTS[i % len(TRAIN_VARIANTS)]
        voices[f"es-{i:02d}"] = {"engine": "espeak", "espeak_voice": f"en-us+{variant}", "held_out": False,
                                 "pitch": rng.randint(25, 75), "speed_wpm": rng.randint(140, 185)}
    for name in HELD_OUT_FLITE:
        voices[f"fl-{name}"] = {"engine": "flite", "voice": name, "stretch": 1.0, "f0_ratio": 1.0, "held_out": True,
                                **describe(name)}
    return voices


def describe(name: str) -> dict:
    """Who a flite or festival voice was recorded from: gender and accent (a language code)."""
    return {"gender": GENDER[name], "language": LANGUAGE.get(name, "en-us")}


def synthesize(job: tuple[dict, dict, str, int]) -> list[dict]:
    """Render one utterance, write it clean and as ``copies`` augmented variants; their manifest rows."""
    utt, voice, out_dir, copies = job
    clean = render(voice, utt["text"])
    rows = []
    rng = np.random.default_rng(zlib.crc32(utt["id"].encode()))  # reproducible (str hashes are salted)
    for k in range(1 + copies):
        x, applied = (clean, []) if k == 0 else augment(clean, rng)
        uid = utt["id"] if k == 0 else f"{utt['id']}-a{k}"
        rows.append(write_utterance(out_dir, {**utt, "id": uid, "augment": applied}, x))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/speech_human")
    ap.add_argument("--num-train-sentences", type=int, default=2500)
    ap.add_argument("--num-test-sentences", type=int, default=60)
    ap.add_argument("--num-refs-per-unseen-voice", type=int, default=8)
    ap.add_argument("--num-espeak-voices", type=int, default=8)
    ap.add_argument("--augment-copies", type=int, default=1, help="augmented variants per training utterance")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    voices = make_voices(args.num_espeak_voices, rng)
    train_ids = [v for v, d in voices.items() if not d["held_out"]]
    unseen_ids = [v for v, d in voices.items() if d["held_out"]]
    # a seed of its own so the sentences differ from the espeak corpus's but stay reproducible
    texts = sentences(args.num_train_sentences + args.num_test_sentences, args.seed + 1000)
    train_texts, test_texts = texts[: args.num_train_sentences], texts[args.num_train_sentences :]

    utts: list[dict] = []

    def add(split: str, voice_id: str, text: str) -> None:
        utts.append({"id": f"{split}-{len(utts):05d}", "split": split, "voice_id": voice_id,
                     "engine": voices[voice_id]["engine"], "language": "en-us", "text": text,
                     "phonemes": " ".join(phonemize(normalize_text(text), "en-us"))})

    for i, text in enumerate(train_texts):
        add("train", train_ids[i % len(train_ids)], text)
    for i, text in enumerate(test_texts):
        add("test_seen_voice", train_ids[(7 * i + 3) % len(train_ids)], text)
        for voice_id in unseen_ids:  # every held-out voice says every test sentence
            add("test_unseen_voice", voice_id, text)
    for j, voice_id in enumerate(unseen_ids):
        for k in range(args.num_refs_per_unseen_voice):
            add("ref_unseen_voice", voice_id, train_texts[(j * 97 + k * 13) % len(train_texts)])

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(u, voices[u["voice_id"]], str(out), args.augment_copies if u["split"] == "train" else 0) for u in utts]
    with ProcessPoolExecutor(args.workers) as pool:
        done = [row for rows in pool.map(synthesize, jobs, chunksize=16) for row in rows]
    assert not any(u["split"] == "train" and voices[u["voice_id"]]["held_out"] for u in done)
    print(json.dumps({**write_corpus(out, done, voices), "voices": len(voices), "held_out": list(unseen_ids)}))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
