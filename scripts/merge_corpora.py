"""One corpus folder that reads as several (e.g. the human-derived and the 240-voice espeak-ng ones together).

    python scripts/merge_corpora.py --out data/speech_both data/speech_human data/speech_vc

Writes manifest.jsonl (every row of every corpus), voices.json and phonemes.json (their union) and links each
voice's ``wav/<voice_id>`` folder to its corpus's, so no audio is copied. Voice ids must not repeat across the
corpora (they do not: the corpora name their voices differently).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.speech_corpus import load_manifest, voices, write_corpus  # noqa: E402


def merge(out: Path, sources: list[Path]) -> dict:
    """Merge ``sources`` into ``out``; the summary write_corpus returns."""
    (out / "wav").mkdir(parents=True, exist_ok=True)
    rows, table = [], {}
    for source in sources:
        found = voices(source)
        clash = set(found) & set(table)
        if clash:
            raise SystemExit(f"{source}: voice ids already taken by an earlier corpus: {sorted(clash)[:5]}")
        table |= found
        rows += load_manifest(source)
        for folder in (source / "wav").iterdir():
            link = out / "wav" / folder.name
            if link.is_symlink():
                link.unlink()
            link.symlink_to(folder.resolve(), target_is_directory=True)
    files = [r["wav"] for r in rows]  # wav/<voice_id>/<id>.wav: ids may repeat under different voices
    if len(set(files)) != len(files):
        raise SystemExit("a voice's utterance ids repeat across the corpora")
    return write_corpus(out, rows, table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("sources", nargs="+")
    args = ap.parse_args()
    print(json.dumps(merge(Path(args.out), [Path(s) for s in args.sources])))


if __name__ == "__main__":
    main()
