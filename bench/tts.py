"""Benchmark the TTS family; prints JSON lines.

CPU (default model, shipped checkpoint):

    python bench/tts.py --threads 1 --sessions 1,2,4,8 --num-eval 40

- ``latency``: first-audio latency (text event in -> first PCM chunk out, phonemizing included) and RTF of
  whole utterances for one session on ``--threads`` threads;
- ``concurrency``: N sessions stepped together: compute per chunk / chunk duration (< 1 = real time);
- ``quality``: held-out sentences (seen voices; unseen voices through their reference audio), each for the
  espeak-ng reference, the reference through our VAE (vocoded) and our TTS, with ratios to the reference:
  phoneme error rate (PER) by the project's streaming phoneme recognizer (the VC family's content encoder,
  trained on espeak-ng audio only; ``--per-checkpoint``: a VC checkpoint, or the ``content.pt`` of a VC
  training run), the main intelligibility measure; WER by pocketsphinx with a uniform unigram LM over the
  evaluation vocabulary (weak on espeak-ng's accents: ~0.7 on the references themselves); mel-cepstral
  distortion (DTW) to the reference.
- ``round_trip``: the VAE alone (no TTS): ``--num-round-trip`` seen-voice test sentences of ``--data`` encoded
  and decoded, PER (same recognizer) and the share of loud 10 ms frames the YIN tracker calls voiced, of the
  reference and of its round trip: a decoder change shows here in seconds, without the AR model's spread.

Pocket TTS on published weights (``--weights DIR`` or ``--weights random``): ours beside the pocket-tts
package in the same run, and GPU streams with CUDA graphs; see bench/tts_pocket.py.

GPU (``--device cuda --config paper``: CLEAR-Base sizes, random weights, bf16): per-step latency and
first-chunk latency at ``--batches`` (1/32/256/1024), eager vs CUDA graphs, VAE decode included. The same
code runs on the CPU (``--device cpu --config paper --batches 1``, fp32, eager); no GPU has run it yet.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.audio.dsp import mel_cepstral_distortion, read_wav  # noqa: E402
from models.base import ControlEvent, StepInput  # noqa: E402
from models.registry import parse_model_spec  # noqa: E402
from models.tts.generator import TTSGenerator  # noqa: E402


def emit(**fields) -> None:
    """One JSON line."""
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in fields.items()}), flush=True)


def speak(gen: TTSGenerator, text: str, params: dict, max_steps: int = 2000) -> tuple[np.ndarray, float, float]:
    """Synthesize one text alone: (audio, seconds to the first chunk, total compute seconds)."""
    state = gen.open_session(gen.validate_params(params))
    start = time.perf_counter()
    gen.handle_event(state, ControlEvent("text", {"text": text, "final": True}))
    chunks, first = [], None
    for _ in range(max_steps):
        out = gen.step([state], [StepInput()], 1)[0]
        if out.idle:
            break
        if first is None:
            first = time.perf_counter() - start
        chunks.append(out.audio)
    total = time.perf_counter() - start
    gen.close_session(state)
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), first or total, total


def bench_latency(gen: TTSGenerator, texts: list[str], args) -> None:
    speak(gen, texts[0], {"seed": 0})  # warm-up
    firsts, rtfs = [], []
    for i, text in enumerate(texts[: args.num_latency]):
        audio, first, total = speak(gen, text, {"seed": i})
        firsts.append(first * 1000)
        rtfs.append(total / max(1e-6, len(audio) / 16_000))
    emit(bench="tts.latency", backend=gen.backend.name, threads=args.threads, utterances=len(firsts),
         first_audio_ms_p50=statistics.median(firsts), first_audio_ms_max=max(firsts),
         rtf_mean=statistics.mean(rtfs), rtf_max=max(rtfs), chunk_ms=gen.spec.chunk_ms,
         flow_steps=gen.cfg.flow_steps, cfg_scale=gen.cfg.cfg_scale)


def bench_concurrency(gen: TTSGenerator, texts: list[str], args) -> None:
    for n in [int(x) for x in args.sessions.split(",")]:
        states = [gen.open_session(gen.validate_params({"seed": i})) for i in range(n)]
        for i, s in enumerate(states):  # long enough that nobody finishes during the measurement
            gen.handle_event(s, ControlEvent("text", {"text": " ".join(texts[i % len(texts):][:4]), "final": True}))
        times = []
        for _ in range(args.concurrency_steps):
            t = time.perf_counter()
            gen.step(states, [StepInput()] * n, n)
            times.append(time.perf_counter() - t)
        for s in states:
            gen.close_session(s)
        per_chunk = statistics.median(times[2:])
        emit(bench="tts.concurrency", backend=gen.backend.name, threads=args.threads, sessions=n,
             step_ms_p50=per_chunk * 1000, step_ms_p99=float(np.percentile(times[2:], 99)) * 1000,
             load=per_chunk / gen.spec.chunk_s, real_time=per_chunk < gen.spec.chunk_s)


def bench_quality(gen: TTSGenerator, args) -> None:
    from evaluation.phonemes import load_recognizer
    from evaluation.speech_corpus import load_manifest
    from evaluation.words import VocabularyRecognizer, words_of

    per_recognizer = load_recognizer(args.per_checkpoint)
    if per_recognizer is None:
        print(f"no phoneme recognizer at {args.per_checkpoint or 'the shipped VC checkpoint'}: PER skipped",
              file=sys.stderr)

    root = Path(args.data)
    rows = load_manifest(root)
    refs_by_voice: dict[str, str] = {}
    for r in rows:
        if r["split"] == "ref_unseen_voice":
            refs_by_voice.setdefault(r["voice_id"], r["wav"])
    for split in ("test_seen_voice", "test_unseen_voice"):
        test = [r for r in rows if r["split"] == split][: args.num_eval]
        recognizer = VocabularyRecognizer({w for r in test for w in words_of(r["text"])})
        ref_pairs, voc_pairs, our_pairs, mcds, voc_mcds = [], [], [], [], []
        for i, r in enumerate(test):
            ref, _ = read_wav(str(root / r["wav"]))
            if split == "test_seen_voice":
                params = {"voice": r["voice_id"], "seed": i}
            else:
                import base64

                ref_bytes = (root / refs_by_voice[r["voice_id"]]).read_bytes()
                params = {"reference_audio": base64.b64encode(ref_bytes).decode(), "language": r["language"], "seed": i}
            ours, _, _ = speak(gen, r["text"], params)
            ref_pairs.append((r["text"], ref))
            voc_pairs.append((r["text"], vocode(gen, ref)))
            our_pairs.append((r["text"], ours))
            mcds.append(mel_cepstral_distortion(ref, ours))
            voc_mcds.append(mel_cepstral_distortion(ref, voc_pairs[-1][1]))
        wer_ref, wer_voc, wer_ours = (recognizer.wer(p) for p in (ref_pairs, voc_pairs, our_pairs))
        per = {}
        if per_recognizer is not None:
            per_ref, per_voc, per_ours = (
                per_recognizer.per((text, r["language"], a) for (text, a), r in zip(p, test, strict=True))
                for p in (ref_pairs, voc_pairs, our_pairs)
            )
            per = {"per_reference": per_ref, "per_vocoded": per_voc, "per_ours": per_ours,
                   "per_ratio_ours_to_reference": per_ours / max(1e-6, per_ref),
                   "per_ratio_ours_to_vocoded": per_ours / max(1e-6, per_voc)}
        emit(bench="tts.quality", split=split, utterances=len(test), vocabulary=len(recognizer.vocabulary),
             **per, wer_reference=wer_ref, wer_vocoded=wer_voc, wer_ours=wer_ours,
             wer_ratio_ours_to_reference=wer_ours / max(1e-6, wer_ref),
             wer_ratio_ours_to_vocoded=wer_ours / max(1e-6, wer_voc), mcd_db=statistics.mean(mcds),
             mcd_vocoded_db=statistics.mean(voc_mcds), mcd_ratio_ours_to_vocoded=statistics.mean(mcds)
             / max(1e-6, statistics.mean(voc_mcds)),
             duration_ratio=sum(len(a) for _, a in our_pairs) / sum(len(a) for _, a in ref_pairs))


def bench_round_trip(gen: TTSGenerator, args) -> None:
    from evaluation.phonemes import load_recognizer
    from evaluation.speech_corpus import load_manifest

    recognizer = load_recognizer(args.per_checkpoint)
    root = Path(args.data)
    test = [r for r in load_manifest(root) if r["split"] == "test_seen_voice"][: args.num_round_trip]
    refs = [read_wav(str(root / r["wav"]))[0] for r in test]
    trips = [vocode(gen, a) for a in refs]
    per = {}
    if recognizer is not None:
        per_ref, per_trip = (recognizer.per((r["text"], r["language"], a) for r, a in zip(test, p, strict=True))
                             for p in (refs, trips))
        per = {"per_reference": per_ref, "per_round_trip": per_trip}
    emit(bench="tts.vae_round_trip", utterances=len(test), **per,
         voiced_reference=statistics.mean(voiced_ratio(a) for a in refs),
         voiced_round_trip=statistics.mean(voiced_ratio(a) for a in trips))


def voiced_ratio(audio: np.ndarray) -> float:
    """Share of 10 ms frames the YIN tracker calls voiced, over frames louder than -40 dB of the peak."""
    from models.audio.pitch_track import track_signal

    x = torch.from_numpy(np.asarray(audio, np.float32))[None]
    _, voicing = track_signal(x)
    frames = x[0, : voicing.shape[1] * 160].reshape(-1, 160)
    loud = frames.pow(2).mean(1).sqrt() > 0.01 * float(x.abs().max())
    return float((voicing[0] > 0.5)[loud].float().mean()) if loud.any() else 0.0


@torch.inference_mode()
def vocode(gen: TTSGenerator, audio: np.ndarray) -> np.ndarray:
    """The reference through our VAE (encode, then the causal decoder), delay removed."""
    hop = gen.cfg.vae.hop
    n = -(-len(audio) // hop) + 1
    x = torch.from_numpy(np.pad(audio, (0, n * hop - len(audio))))[None]
    y = gen.vae.decode(gen.vae.encode(x)[0])[0].numpy()
    return y[gen.vae.delay_samples : gen.vae.delay_samples + len(audio)]


def bench_model_compute(args) -> None:
    """Model compute at ``--config``: per-latent step and first-chunk latency per batch size.

    Paper config: CLEAR-Base sizes, random weights. Eager and (on CUDA) as CUDA graphs. ``--device cpu`` runs
    the same code path on the CPU, so a GPU session's first run is not its first test.
    """
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = TTSGenerator(device=args.device, config=args.config, max_sessions=1, chunk_latents=4)
    gen.model.to(dtype)
    modes = ("eager", "graph") if device.type == "cuda" else ("eager",)
    for batch in (int(b) for b in args.batches.split(",")):
        for mode in modes:
            step_ms, chunk_ms = _model_batch(gen, batch, mode == "graph", dtype)
            emit(bench="tts.model", config=args.config, device=_device_name(device), dtype=str(dtype).split(".")[-1],
                 batch=batch, mode=mode, step_ms=step_ms, first_chunk_ms=chunk_ms,
                 realtime_streams=int(batch * gen.spec.chunk_ms / chunk_ms))


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _model_batch(gen: TTSGenerator, batch: int, graphs: bool, dtype: torch.dtype) -> tuple[float, float]:
    """(ms per latent: AR step + flow head, ms per 4-latent chunk incl. VAE decode) at a segment 128 tokens in."""
    model, cfg, device = gen.model, gen.cfg, gen.device
    heads, head_dim, ctx = cfg.num_heads, cfg.dim // cfg.num_heads, 128
    x = torch.randn(batch, 1, cfg.dim, device=device, dtype=dtype)
    positions = torch.full((batch, 1), ctx, device=device)
    k = torch.randn(cfg.num_layers, batch, ctx, heads, head_dim, device=device, dtype=dtype)
    mask = torch.ones(batch, 1, 1, ctx + 1, dtype=torch.bool, device=device)
    noise = torch.randn(batch, cfg.latent_dim, device=device, dtype=dtype)
    decoder = gen.vocoder.decoder  # what serving decodes with: per-session conv state, only the new latents
    z, state = torch.randn(batch, 4, cfg.latent_dim, device=device), decoder.initial_state(batch, device)

    def latent_step():
        h, _, _ = model.step_core(x, positions, k, k, mask)
        return model.sample_next(h[:, -1], noise)

    def chunk():
        for _ in range(4):
            latent_step()
        return decoder(z, state)[0]

    run_step, run_chunk = (_graphed(latent_step), _graphed(chunk)) if graphs else (latent_step, chunk)
    return _time(run_step, device), _time(run_chunk, device)


def _graphed(fn):
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        fn()
    return graph.replay


def _time(fn, device: torch.device, reps: int = 20) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    reps = reps if device.type == "cuda" else 3
    with torch.inference_mode():
        for _ in range(2):
            fn()
        sync()
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
    return (time.perf_counter() - start) / reps * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--config", default="default")
    ap.add_argument("--model-compute", action="store_true",
                    help="only the model-compute bench (implied by --device cuda or --config paper)")
    ap.add_argument("--batches", default="1,32,256,1024", help="batch sizes of the model-compute bench")
    ap.add_argument("--backend", default="torch", choices=["torch", "onnx"])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--options", default="", help="more generator options, as in --model tts:... "
                    "(e.g. temperature=0.7,cfg_scale=3)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sessions", default="1,2,4,8")
    ap.add_argument("--concurrency-steps", type=int, default=20)
    ap.add_argument("--num-latency", type=int, default=10)
    ap.add_argument("--num-eval", type=int, default=40)
    ap.add_argument("--num-round-trip", type=int, default=20, help="sentences of the VAE round trip")
    ap.add_argument("--data", default="data/speech")
    ap.add_argument("--per-checkpoint", default=None,
                    help="phoneme recognizer for PER: a VC checkpoint or a VC run's content.pt "
                    "(default: checkpoints/vc_default.safetensors when it exists)")
    ap.add_argument("--skip", default="", help="comma-separated: latency,concurrency,quality,round_trip")
    pocket = ap.add_argument_group("Pocket TTS (--weights): ours beside the pocket-tts package (bench/tts_pocket.py)")
    pocket.add_argument("--weights", default=None, help="a pocket-tts weights folder, or 'random' (real shapes)")
    pocket.add_argument("--tiny", action="store_true", help="toy sizes (the GPU suite's dry run)")
    pocket.add_argument("--release", default=None, help="random weights in another of the package's configs' shapes "
                        "(e.g. english_2m_2026-10); default: the English ~100M release")
    pocket.add_argument("--cores", type=int, nargs="+", default=[1, 2])
    pocket.add_argument("--reps", type=int, default=2, help="rounds over the latency texts")
    pocket.add_argument("--steps", type=int, default=10, help="frames timed per session count")
    pocket.add_argument("--pocket-sessions", dest="pocket_sessions", type=int, nargs="+", default=[1, 2, 4, 8])
    pocket.add_argument("--gpu-bench", action="store_true", help="the streams/first-audio bench (implied on cuda)")
    args = ap.parse_args()
    if args.weights is not None:
        from bench.tts_pocket import main as pocket_main

        args.sessions = args.pocket_sessions
        args.batches = [int(b) for b in str(args.batches).split(",")]
        pocket_main(args)
        return
    torch.set_num_threads(args.threads)
    if args.model_compute or args.device != "cpu" or args.config != "default":
        bench_model_compute(args)
        return
    options = parse_model_spec(f"tts:{args.options}")[1]
    gen = TTSGenerator(checkpoint=args.checkpoint, backend=args.backend, num_threads=args.threads, **options)
    texts = [
        "The old farmer quietly painted a tiny wooden boat.", "Why did Anna wait near the river?",
        "Our neighbor bought twelve fresh lemons at the market this morning.", "Please call me back tomorrow.",
        "A strong wind moved the heavy clouds across the city.", "Did the clever student find the hidden key?",
    ]
    skip = set(args.skip.split(","))
    if "latency" not in skip:
        bench_latency(gen, texts, args)
    if "concurrency" not in skip:
        bench_concurrency(gen, texts, args)
    if "quality" not in skip:
        bench_quality(gen, args)
    if "round_trip" not in skip:
        bench_round_trip(gen, args)


if __name__ == "__main__":
    main()
