"""The TTS recipe's last stages (scripts/train_tts.py) end to end on a tiny corpus: the TTS moved onto a VC VAE.

Issue 15, session 11: the VC family's VAE (re-trained on human-derived speech) gets a pitch head and nothing
else, the corpus is encoded with it, and a TTS checkpoint's AR model continues on those latents (``ar --init``,
then ``--resume`` with scheduled sampling); the export speaks. A few steps each, so a change that breaks the
recipe fails here, not an hour into a run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation.speech_corpus import phoneme_inventory, write_corpus, write_utterance
from models.audio.vae import WaveformVAE
from models.speech_text import PhonemeVocab
from models.tts.checkpoint import load_checkpoint, save_checkpoint
from models.tts.generator import TTSGenerator
from models.tts.model import TTSModel
from models.vc.checkpoint import load_checkpoint as load_vc_checkpoint
from tests.recipe_helpers import run_script
from tests.tts_helpers import PHONEMES, requires_espeak, run_session, tiny_config
from tests.vc_helpers import make_tiny_checkpoint as make_tiny_vc_checkpoint
from tests.vc_helpers import speechlike

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _corpus(root: Path) -> Path:
    """Two espeak-ng-style training voices, four clips each, phonemes from the tiny TTS vocabulary."""
    rng = np.random.default_rng(0)
    voices = {v: {"language": "en-us", "espeak_voice": f"en-us+m{i}", "pitch": 50, "speed_wpm": 170}
              for i, v in enumerate(("v000", "v001"))}
    rows = []
    for i in range(8):
        voice = ("v000", "v001")[i % 2]
        utt = {"id": f"train-{i:03d}", "split": "train", "voice_id": voice, "language": "en-us", "text": "test",
               "phonemes": " ".join(rng.choice(PHONEMES[2:], 6)), "augment": []}
        rows.append(write_utterance(root, utt, speechlike(1.0, i, 110.0 + 60 * (i % 2))))
    write_corpus(root, rows, voices)
    return root


@requires_espeak
def test_tts_continues_on_a_vc_checkpoints_vae_and_speaks(tmp_path, monkeypatch):
    import train_tts

    data = _corpus(tmp_path / "corpus")
    symbols = PhonemeVocab(phoneme_inventory(data)).symbols
    torch.manual_seed(0)
    cfg = tiny_config(harmonic=True)
    cfg.vocab_size = len(symbols)
    tts_init = str(tmp_path / "tts.safetensors")
    old_model = TTSModel(cfg)
    save_checkpoint(tts_init, old_model, WaveformVAE(cfg.vae), torch.zeros(8), symbols, {"v000": torch.randn(16)},
                    {"v000": {"language": "en-us"}})
    vc_init = make_tiny_vc_checkpoint(str(tmp_path / "vc.safetensors"), harmonic=True)
    run, out = tmp_path / "run", tmp_path / "shipped.safetensors"
    common = ("--data", data, "--threads", 1)

    run_script(train_tts, monkeypatch, "vae", "--decoder-only", "--init", vc_init, "--synth-window", 320,
               "--pitch-head", 16, "--pitch-only", "--out", run, "--steps", 2, "--batch", 2, "--crop", 4, *common)
    (run / "vae_decoder.pt").rename(run / "vae.pt")
    run_script(train_tts, monkeypatch, "latents", "--out", run, *common)
    run_script(train_tts, monkeypatch, "ar", "--init", tts_init, "--out", run, "--steps", 2, "--batch", 2,
               "--head-repeats", 1, *common)
    assert torch.load(run / "ar.pt")["step"] == 2  # counted on from the init's step 0
    run_script(train_tts, monkeypatch, "ar", "--resume", "--out", run, "--steps", 2, "--batch", 2, "--head-repeats", 1,
               "--self-context", 0.5, "--self-context-ramp", 1, *common)
    run_script(train_tts, monkeypatch, "export", "--out", run, "--checkpoint", out, *common)

    new, vc = load_checkpoint(str(out)), load_vc_checkpoint(vc_init).model
    assert new.model.cfg.dim == cfg.dim and new.model.cfg.num_layers == cfg.num_layers  # the init's sizes
    assert new.model.cfg.cfg_scale == 2.0  # sampling at the training default until `sampling` sets it
    old_state, new_state = old_model.state_dict(), new.model.state_dict()
    assert any(not torch.equal(old_state[k], new_state[k]) for k in old_state)  # the AR model trained on
    vae_state, vc_vae = new.vae.state_dict(), vc.vae.state_dict()
    for name, value in vc_vae.items():  # the VC VAE as it shipped, encoder and decoder; only the statistics are new
        if not name.startswith("latent_"):
            torch.testing.assert_close(vae_state[name], value, msg=name)
    assert new.vae.pitch_head is not None and new.vae.cfg.harmonics == vc.vae.cfg.harmonics
    assert set(new.voice_stats) == {"v000", "v001"}

    gen = TTSGenerator(checkpoint=str(out), backend="torch", num_threads=1)
    audio = run_session(gen, [("text", {"text": "a test", "final": True})], {"seed": 1})
    assert len(audio) > 0 and np.isfinite(audio).all() and np.abs(audio).max() > 0

    bad = str(tmp_path / "bad.safetensors")  # another corpus's phonemes: refused, not half-loaded
    save_checkpoint(bad, TTSModel(tiny_config(harmonic=True)), new.vae, torch.zeros(8), PHONEMES,
                    {"v000": torch.randn(16)}, {"v000": {"language": "en-us"}})
    with pytest.raises(SystemExit, match="vocabulary"):
        run_script(train_tts, monkeypatch, "ar", "--init", bad, "--out", run, "--steps", 1, "--batch", 2, *common)
