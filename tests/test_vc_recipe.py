"""The VC training recipe (scripts/train_vc.py, scripts/train_tts.py) end to end on a tiny corpus and model.

The shipped checkpoint is re-trained from itself on new material (issue 15: human-derived voices): every
stage starts from a checkpoint (``--init``), the whole VAE is fine-tuned, and the export keeps the old
checkpoint's voices beside new ones. This runs each stage for a few steps on a corpus written here, so a
change to a stage that breaks the recipe fails a test, not a multi-hour run.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation.speech_corpus import write_corpus, write_utterance
from models.checkpoint_io import load_tensors
from models.vc.checkpoint import load_checkpoint
from models.vc.generator import VCGenerator
from tests.recipe_helpers import run_script
from tests.vc_helpers import SYMBOLS, make_tiny_checkpoint, speechlike


def _corpus(root: Path) -> Path:
    """Two training voices (one of them with an augmented copy of each clip) and one held-out voice."""
    rng = np.random.default_rng(0)
    voices = {"a": {"engine": "test", "held_out": False}, "b": {"engine": "test", "held_out": False},
              "h": {"engine": "test", "held_out": True}}
    plan = [("train", "a", 110.0)] * 4 + [("train", "b", 200.0)] * 4 + [("test_unseen_voice", "h", 150.0)] * 2 \
        + [("ref_unseen_voice", "h", 150.0)] * 2
    rows = []
    for i, (split, voice, f0) in enumerate(plan):
        phonemes = " ".join(rng.choice(SYMBOLS[1:], 8))
        utt = {"id": f"{split}-{i:03d}", "split": split, "voice_id": voice, "language": "en-us",
               "text": "test", "phonemes": phonemes, "augment": []}
        audio = speechlike(1.2, i, f0)
        rows.append(write_utterance(root, utt, audio))
        if split == "train" and voice == "a":
            noisy = audio + 0.01 * rng.standard_normal(len(audio)).astype(np.float32)
            rows.append(write_utterance(root, {**utt, "id": utt["id"] + "-a1", "augment": ["noise"]}, noisy))
    write_corpus(root, rows, voices)
    return root


@pytest.mark.slow
def test_recipe_fine_tunes_every_stage_from_a_checkpoint(tmp_path, monkeypatch):
    import train_latent_recognizer
    import train_tts
    import train_vc

    data = _corpus(tmp_path / "corpus")
    init = make_tiny_checkpoint(str(tmp_path / "init.safetensors"), harmonic=True)
    run, vae_run = tmp_path / "run", tmp_path / "vae"
    common = ("--data", data, "--threads", "1")
    # the whole VAE (encoder too) from the checkpoint's, on the new corpus
    run_script(train_tts, monkeypatch, "vae", "--init", init, "--out", vae_run, "--steps", 2, "--batch", 2, "--crop", 4,
               *common)
    # then its decoder alone (the latents of the run stay valid): vae_decoder.pt, which the VC stages prefer;
    # with the content-preservation loss, the checkpoint's recognizer judging the crops
    run_script(train_tts, monkeypatch, "vae", "--decoder-only", "--out", vae_run, "--steps", 1, "--batch", 2, "--crop",
               4, "--content-loss", 1.0, "--content-loss-from", init, *common)
    assert (vae_run / "vae_decoder.pt").exists()
    assert "content" in json.loads((vae_run / "vae_decoder_log.jsonl").read_text().splitlines()[-1])
    run_script(train_vc, monkeypatch, "content", "--init", init, "--out", run, "--steps", 3, "--batch", 2, *common)
    # continued with speed perturbation: the run's own (tiny, not default) sizes come back from content.pt
    run_script(train_vc, monkeypatch, "content", "--resume", "--speed-perturb", 0.5, "--out", run, "--steps", 1,
               "--batch", 2, *common)
    assert torch.load(run / "content.pt")["cfg"] == load_checkpoint(init).model.cfg.to_dict()
    # a second corpus's features (here the same clips again) made with the same VAE and recognizer
    extra = tmp_path / "extra"
    extra.mkdir()
    shutil.copy(run / "content.pt", extra / "content.pt")
    for folder in (run, extra):
        for part in ("latents", "content"):
            run_script(train_vc, monkeypatch, "features", "--part", part, "--vae", vae_run, "--out", folder, *common)
    merged = train_vc.load_features(run, (extra,))
    assert len(merged["id"]) == 2 * len(train_vc.load_features(run)["id"]) == len(merged["content"])
    # the latent phoneme recognizer on those latents, then the DiT with its loss on one-step samples
    run_script(train_latent_recognizer, monkeypatch, "--corpus", f"{run}:{data}", "--corpus", f"{extra}:{data}",
               "--out", run / "latrec", "--steps", 2, "--batch", 2)
    last = json.loads((run / "latrec" / "latrec_log.jsonl").read_text().splitlines()[-1])
    assert last["per_corpus_test_unseen_voice"] >= 0  # the held-out split is judged
    run_script(train_vc, monkeypatch, "dit", "--init", init, "--out", run, "--extra-features", extra, "--steps", 3,
               "--batch", 2, "--frames", 8, "--self-context", 1.0, "--context-noise", 0.3, "--phoneme-loss", 0.5,
               "--latent-recognizer", run / "latrec" / "latent_recognizer.pt", *common)
    assert json.loads((run / "dit_log.jsonl").read_text().splitlines()[0])["phoneme"] > 0
    # the DiT continued with its content a latent frame ahead and 3-latent chunks; a resume keeps the lookahead
    run_script(train_vc, monkeypatch, "dit", "--resume", "--out", run, "--steps", 5, "--batch", 2, "--frames", 8,
               "--content-lookahead", 1, "--chunk-weights", 0, 1, 0, "--shifted-content", 0.8, "--self-context", 0.5,
               "--self-context-temperature", 0.3, *common)
    run_script(train_vc, monkeypatch, "dit", "--resume", "--out", run, "--steps", 6, "--batch", 2, "--frames", 8,
               *common)
    assert torch.load(run / "dit.pt")["content_lookahead"] == 1
    ahead = tmp_path / "ahead.safetensors"  # that DiT into the checkpoint it started from, the rest kept
    run_script(train_vc, monkeypatch, "swap-dit", "--init", init, "--out", run, "--checkpoint", ahead)
    swapped, base = load_checkpoint(str(ahead)), load_checkpoint(init)
    assert swapped.model.cfg.content_lookahead == 1 and swapped.voice_info == base.voice_info
    torch.testing.assert_close(swapped.model.content.state_dict(), base.model.content.state_dict())
    for name, value in torch.load(run / "dit.pt")["dit"].items():  # half-precision storage
        torch.testing.assert_close(swapped.model.dit.state_dict()[name], value, atol=2e-3, rtol=2e-3)
    assert VCGenerator(checkpoint=str(ahead), max_sessions=1).spec.lookahead_ms == 50.0  # 10 ms vocoder + 40 ms
    # and back: the swapped checkpoint unpacked into a fresh run folder resumes at its step with its lookahead
    fresh = tmp_path / "fresh"
    run_script(train_vc, monkeypatch, "unpack", "--init", ahead, "--out", fresh)
    unpacked = torch.load(fresh / "dit.pt")
    assert unpacked["step"] == torch.load(run / "dit.pt")["step"] and unpacked["content_lookahead"] == 1
    for name, value in unpacked["dit"].items():
        torch.testing.assert_close(value, swapped.model.dit.state_dict()[name])
    assert torch.load(fresh / "content.pt")["symbols"] == base.symbols
    out = tmp_path / "shipped.safetensors"  # replaced in place, keeping its own voices
    shutil.copy(init, out)
    run_script(train_vc, monkeypatch, "export", "--vae", vae_run, "--out", run, "--checkpoint", out, "--add-voices",
               "a", "--voices-from", out, *common)

    old, new = load_checkpoint(init), load_checkpoint(str(out))
    assert new.symbols == old.symbols  # the shipped classes; the sizes too, and the run's content lookahead
    assert new.model.cfg == dataclasses.replace(old.model.cfg, content_lookahead=1)
    assert set(new.voice_info) == {"a", "low", "high"}  # the new voice beside the old checkpoint's
    torch.testing.assert_close(new.voice_mels["low"], old.voice_mels["low"])  # kept as they were
    assert new.voice_info["a"]["f0_hz"] == pytest.approx(110.0, rel=0.1)  # from a clean clip of voice a

    def moved(prefix: str) -> bool:
        a, b = old.model.state_dict(), new.model.state_dict()
        return any(not torch.equal(a[k], b[k]) for k in a if k.startswith(prefix))

    assert all(moved(p) for p in ("content.", "speaker.", "dit.", "vae.enc", "vae.dec"))  # every stage trained
    torch.testing.assert_close(new.model.mel.mean, old.model.mel.mean)  # the recognizer's statistics kept
    assert load_tensors(str(out))[1]["voices"]["a"]["engine"] == "test"

    with pytest.raises(SystemExit, match="held-out"):  # a held-out voice never ships
        run_script(train_vc, monkeypatch, "export", "--vae", vae_run, "--out", run, "--checkpoint", tmp_path / "x",
                   "--add-voices", "h", *common)


def test_dit_crops_pair_each_latent_with_the_content_ahead_of_it():
    """train_vc.py's DiT crops: latent p with the content of p + lookahead (two content frames per latent)."""
    import random

    import train_vc

    from tests.vc_helpers import tiny_config

    latents = torch.arange(30.0)[:, None].expand(30, 8)  # latent p holds p
    content = torch.arange(60.0)[:, None].expand(60, 16) // 2  # both content frames of latent p hold p
    feats = {"latents": [latents], "content": [content], "content_shifted": [content], "mel": [torch.zeros(300, 80)],
             "split": ["train"], "voice_id": ["a"]}
    for ahead in (0, 1, 2):
        batches = train_vc.DitBatches(feats, tiny_config(content_lookahead=ahead), random.Random(0))
        lat, con, _, _ = batches(4, 10)
        # each content frame holds the latent it goes with: p + ahead, the last one repeated past the end
        assert torch.equal(con[:, ::2, 0], (lat[:, :, 0] + ahead).clamp(max=29))
    shifted = {**feats, "content_shifted": [-content]}  # the pitch-shifted copy's content, told apart by its sign
    for share, negative in ((0.0, False), (1.0, True)):
        _, con, _, _ = train_vc.DitBatches(shifted, tiny_config(), random.Random(0), shifted_share=share)(4, 10)
        assert bool((con[:, 2:] < 0).all()) == negative and bool((con[:, 2:] > 0).all()) != negative


def test_merged_corpora_read_as_one(tmp_path):
    """scripts/merge_corpora.py: every row and voice of both corpora, audio through links; clashing voices refused."""
    import merge_corpora

    from evaluation.speech_corpus import load_utterances

    first = _corpus(tmp_path / "first")
    second = tmp_path / "second"
    shutil.copytree(first, second)
    rows = [json.loads(line) for line in (second / "manifest.jsonl").read_text().splitlines()]
    for row in rows:  # the same clips under other voice ids
        row["voice_id"] = "x" + row["voice_id"]
        row["wav"] = row["wav"].replace("wav/", "wav/x", 1)
    for folder in list((second / "wav").iterdir()):
        folder.rename(folder.with_name("x" + folder.name))
    table = {"x" + k: v for k, v in json.loads((second / "voices.json").read_text()).items()}
    write_corpus(second, rows, table)

    summary = merge_corpora.merge(tmp_path / "both", [first, second])
    assert summary["utterances"] == 2 * len(rows)
    both = load_utterances(tmp_path / "both", ("train",))
    alone = load_utterances(first, ("train",))
    assert len(both) == 2 * len(alone)
    np.testing.assert_array_equal(both[0].audio, alone[0].audio)  # read through the link
    with pytest.raises(SystemExit, match="voice ids"):
        merge_corpora.merge(tmp_path / "twice", [first, first])


def test_speed_perturbed_voices_are_new_training_voices(tmp_path):
    """scripts/perturb_voices.py: clean training clips only, each at one speed as a new voice; pitch and length move."""
    import perturb_voices

    from evaluation.speech_corpus import load_utterances, voices
    from models.audio.pitch_track import median_pitch

    data = _corpus(tmp_path / "corpus")
    perturb_voices.perturb(data, tmp_path / "sp", [0.9, 1.1])
    table = voices(tmp_path / "sp")
    assert set(table) <= {f"{v}-sp{f}" for v in ("a", "b") for f in (0.9, 1.1)}  # never the held-out voice h
    assert all(info["speed"] in (0.9, 1.1) and not info["held_out"] for info in table.values())
    source = {u.id: u for u in load_utterances(data, ("train",)) if not u.id.endswith("-a1")}
    out = load_utterances(tmp_path / "sp", ("train", "test_unseen_voice", "ref_unseen_voice"))
    assert sorted(u.id for u in out) == sorted(source)  # each clean clip once, augmented copies left out
    for u in out:
        factor = table[u.voice_id]["speed"]
        original = source[u.id].audio
        assert len(u.audio) == pytest.approx(len(original) / factor, abs=2)
        assert median_pitch(u.audio, 0.0) / median_pitch(original, 0.0) == pytest.approx(factor, rel=0.04)
    with pytest.raises(SystemExit, match="factors"):
        perturb_voices.perturb(data, tmp_path / "bad", [1.0])


def test_latent_phoneme_loss_trains_the_generator_only():
    """LatentContentLoss: zero on the true latents, a gradient into the generated ones, none into the recognizer."""
    from models.vc.latent_recognizer import LatentContentLoss, LatentRecognizer, LatentRecognizerConfig

    torch.manual_seed(0)
    recognizer = LatentRecognizer(LatentRecognizerConfig(latent_dim=8, num_phonemes=6, channels=16, conv_layers=1))
    loss_fn = LatentContentLoss(recognizer)
    true = torch.randn(2, 10, 8)
    assert loss_fn(true.clone(), true).item() == pytest.approx(0.0, abs=1e-6)
    generated = torch.zeros(2, 10, 8, requires_grad=True)
    loss = loss_fn(generated, true)
    loss.backward()
    assert loss.item() > 0 and generated.grad.abs().sum() > 0
    assert all(p.grad is None for p in recognizer.parameters())
    assert recognizer(true).shape == (2, 20, 6)  # two output frames per latent frame
    opt = torch.optim.Adam([generated], lr=0.05)
    for _ in range(50):  # descending it moves the generated latents toward being heard as the true ones
        opt.zero_grad()
        loss_fn(generated, true).backward()
        opt.step()
    assert loss_fn(generated, true).item() < 0.5 * loss.item()
