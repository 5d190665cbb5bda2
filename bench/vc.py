"""Benchmark of the `vc` model: latency, real-time factor, sessions per core, conversion quality. JSON lines.

CPU (default config, the shipped checkpoint):
- ``vc.latency``: one session streams held-out speech chunk by chunk on ``--threads`` threads. Algorithmic
  latency = chunk + look-ahead (the vocoder's delay: 10 ms for the shipped checkpoint); end-to-end per
  chunk = algorithmic + the measured compute of that chunk, p50/p99; RTF. What this is: the first sample of
  chunk k waits a chunk for the chunk to fill, then the step's compute; the output of chunk k starts with
  the converted sample spoken 10 ms before it (the decoder's delay), and played continuously every later
  sample has the same delay. So it is the delay of every sample, first or last of its chunk, for a
  listener whose playback starts with the first chunk; a playback clock that must never underrun has to
  cover the slowest steps, so p99 is the one a user feels. Excluded: the transport, codecs and jitter buffers
  (bench/glass_to_glass.py) and the engine's wake-up (one asyncio turn). Steps run back to back here;
  ``vc.latency_paced`` steps each chunk when its audio would have arrived (real time, ``--paced-s``),
  with the weights cold in the caches between steps as when serving.
- ``vc.sessions``: N sessions stepped together; real time while a step (p90) fits in one chunk.
- ``vc.reference``: seconds (thread CPU and wall) to embed an uploaded reference of 3 s and 10 s, with the
  model's reference fit (``--reference-fit-steps``) and without (0): the wait before an upload's session starts;
  ``vc.latency_paced_during_fit``: the paced run while another thread fits uploads back to back.
- ``vc.quality``: held-out voices (unseen in training) and seen voices. Speaker similarity with
  resemblyzer (GE2E embeddings; its own model, not ours): margin = cos(x, target voice) - cos(x, source
  voice) for converted speech, for real target speech through the same VAE vocoder (the upper bound)
  and for the unconverted source (the lower bound). Voice embeddings come from clips not used as the
  reference. Pairs are the held-out voices resemblyzer tells apart best (it barely separates some
  espeak-ng voices). Intelligibility: phoneme error rate by our content recognizer
  (``evaluation/phonemes.py``) and pocketsphinx WER over the evaluation vocabulary, for the
  source, the vocoded source and the converted speech. Pitch: the share of converted utterances with no
  voiced frame (``unvoiced_converted``) and the mean distance in semitones between a converted
  utterance's median f0 and its target reference's (``pitch_error_semitones``).

GPU (``--device cuda --config paper``: MeanVC sizes, random weights): step time at ``--batches`` (1..1024),
content encoder, DiT and vocoder included, eager and as CUDA graphs (docs/gpu.md has an H200's numbers);
the same path runs on the CPU (``--device cpu --config paper --batches 1 2``) as a smoke test.
``--device cuda --config default``: the same for the shipped checkpoint (its harmonic vocoder included).
``--processes P [P ...]``: ``vc.processes``, P processes (as ``serve --workers P`` runs them) each stepping
a batch of ``--batches`` sessions as CUDA graphs at the same time for ``--seconds``: the steps' p50/p99
under the others' contention and whether the P x batch sessions all stay in real time.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: run as `python bench/vc.py`

from evaluation.phonemes import PhonemeRecognizer  # noqa: E402
from evaluation.speech_corpus import load_utterances, voices  # noqa: E402
from models.audio.dsp import wav_bytes  # noqa: E402
from models.audio.pitch_track import decoder_pitch, median_pitch  # noqa: E402
from models.base import StepInput, open_direct  # noqa: E402
from models.vc.generator import DEFAULT_WAIT_MS, VCGenerator  # noqa: E402


def emit(**fields) -> None:
    """One JSON line."""
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in fields.items()}), flush=True)


def convert(gen: VCGenerator, audio: np.ndarray, params: dict, paced: bool = False) -> tuple[np.ndarray, list[float]]:
    """Stream audio through one session: (converted audio, compute seconds per chunk).

    Back to back by default; ``paced``: each chunk is stepped when its last sample would have been spoken
    (real time), as in serving, where the model's weights and state go cold in the caches between steps.
    """
    state = open_direct(gen, params)  # validate, prepare (an uploaded reference) and open
    n = gen.spec.input_chunk_samples
    delay = round(gen.spec.lookahead_ms * 16)  # the output lags by the model's look-ahead: align with the input
    length = len(audio)
    audio = np.pad(audio, (0, delay + -(length + delay) % n))  # silence after it: its end comes out too
    out, times = [], []
    origin = time.perf_counter()
    for k in range(len(audio) // n):
        if paced:
            time.sleep(max(0.0, origin + (k + 1) * gen.spec.chunk_s - time.perf_counter()))
        start = time.perf_counter()
        out.append(gen.step([state], [StepInput(audio=audio[k * n : (k + 1) * n], num_valid_samples=n)], 1)[0].audio)
        times.append(time.perf_counter() - start)
    gen.close_session(state)
    return np.concatenate(out)[delay : delay + length], times


def bench_latency(gen: VCGenerator, speech: np.ndarray, args) -> None:
    convert(gen, speech[:16_000], {"seed": 0})  # warm-up
    for steps in (1, 2):
        out, times = convert(gen, speech, {"seed": 0, "steps": steps})
        ms = np.array(times) * 1000
        algorithmic = gen.spec.chunk_ms + gen.spec.lookahead_ms
        emit(bench="vc.latency", threads=args.threads, chunk_ms=gen.spec.chunk_ms, steps=steps,
             algorithmic_ms=algorithmic, compute_ms_p50=float(np.percentile(ms, 50)),
             compute_ms_p99=float(np.percentile(ms, 99)), end_to_end_ms_p50=algorithmic + float(np.percentile(ms, 50)),
             end_to_end_ms_p99=algorithmic + float(np.percentile(ms, 99)),
             rtf=float(ms.sum() / 1000 / (len(speech) / 16_000)), seconds=round(len(speech) / 16_000, 1),
             # without the look-ahead: the chunk and its compute (how MeanVC's 211 / 112 ms appear to be counted)
             chunk_plus_compute_ms_p50=gen.spec.chunk_ms + float(np.percentile(ms, 50)))
    if args.paced_s > 0:  # real time: one step per chunk as the audio would arrive
        emit(bench="vc.latency_paced", **paced_latency(gen, speech, args))


def paced_latency(gen: VCGenerator, speech: np.ndarray, args) -> dict:
    """One session stepped as the audio would arrive (``--paced-s`` of ``speech``): its latency fields."""
    part = speech[: int(args.paced_s * 16_000)]
    _, times = convert(gen, part, {"seed": 0, "steps": 1}, paced=True)
    ms = np.array(times) * 1000
    algorithmic = gen.spec.chunk_ms + gen.spec.lookahead_ms
    return dict(threads=args.threads, chunk_ms=gen.spec.chunk_ms, steps=1, algorithmic_ms=algorithmic,
                compute_ms_p50=float(np.percentile(ms, 50)), compute_ms_p99=float(np.percentile(ms, 99)),
                end_to_end_ms_p50=algorithmic + float(np.percentile(ms, 50)),
                end_to_end_ms_p99=algorithmic + float(np.percentile(ms, 99)), seconds=round(len(part) / 16_000, 1))


def bench_sessions(gen: VCGenerator, speech: np.ndarray, args) -> None:
    n = gen.spec.input_chunk_samples
    best = best_own_core = 0
    for num in [int(x) for x in args.sessions.split(",")]:
        if num > gen.max_batch_size:
            break
        states = [gen.open_session(gen.validate_params({"seed": i})) for i in range(num)]
        times, cpu = [], []
        for k in range(args.session_chunks):
            chunk = [StepInput(audio=speech[(k + i) * n : (k + i + 1) * n], num_valid_samples=n) for i in range(num)]
            start, cpu_start = time.perf_counter(), time.thread_time()
            gen.step(states, chunk, num)
            times.append(time.perf_counter() - start)
            cpu.append(time.thread_time() - cpu_start)
        for s in states:
            gen.close_session(s)
        p90 = float(np.percentile(times, 90)) * 1000
        real_time = p90 < gen.spec.chunk_ms
        best = num if real_time else best
        # CPU time of the step (one torch thread): its cost on a core of its own, whatever else the machine runs
        cpu_p90 = float(np.percentile(cpu, 90)) * 1000
        emit(bench="vc.sessions", threads=args.threads, sessions=num, step_ms_p90=p90, chunk_ms=gen.spec.chunk_ms,
             real_time=real_time, step_cpu_ms_p90=cpu_p90, real_time_on_own_core=cpu_p90 < gen.spec.chunk_ms)
        best_own_core = num if cpu_p90 < gen.spec.chunk_ms else best_own_core
        if not real_time and cpu_p90 >= gen.spec.chunk_ms:
            break
    emit(bench="vc.sessions_per_core", threads=args.threads, chunk_ms=gen.spec.chunk_ms,
         sessions_in_real_time=best, per_core=best / args.threads, sessions_in_real_time_on_own_core=best_own_core)


# -- quality ----------------------------------------------------------------------------------------------
class Judge:
    """resemblyzer speaker embeddings (cosine similarity)."""

    def __init__(self) -> None:
        from resemblyzer import VoiceEncoder, preprocess_wav

        self.encoder, self.prep = VoiceEncoder("cpu", verbose=False), preprocess_wav

    def embed(self, clips: list[np.ndarray]) -> np.ndarray:
        """Unit embedding of one or more clips of one voice."""
        e = np.mean([self.encoder.embed_utterance(self.prep(c, source_sr=16_000)) for c in clips], axis=0)
        return e / np.linalg.norm(e)


def wav_base64(audio: np.ndarray, rate_hz: int = 16_000) -> str:
    """A 16-bit PCM WAV file, base64-encoded (the `reference_audio` parameter)."""
    return base64.b64encode(wav_bytes(audio, rate_hz)).decode()


@torch.inference_mode()
def vocode(gen: VCGenerator, audio: np.ndarray) -> np.ndarray:
    """Real speech through our vocoder (VAE encode, causal decode), delay removed."""
    if hasattr(gen, "resynthesize"):  # published weights (MeanVC): mel -> its streaming vocoder
        return gen.resynthesize(audio)
    vae = gen.model.vae
    hop = vae.cfg.hop
    x = torch.from_numpy(np.pad(audio, (0, -len(audio) % hop)))[None]
    f0 = decoder_pitch(x) if vae.cfg.harmonics else None  # a harmonic vocoder: the audio's own pitch
    return vae.decode(vae.encode(x)[0], f0)[0, vae.delay_samples :].numpy()


def pick_pairs(by_voice: dict[str, list], judge: Judge, num: int) -> list[tuple[str, str]]:
    """(source, target) voice pairs resemblyzer separates best: each target with its least similar source."""
    emb = {v: judge.embed([u.audio for u in utts[:3]]) for v, utts in by_voice.items()}
    pairs = []
    for target in sorted(emb):
        source = min((v for v in emb if v != target), key=lambda v: float(emb[v] @ emb[target]))
        pairs.append((float(emb[source] @ emb[target]), source, target))
    return [(s, t) for _, s, t in sorted(pairs)[:num]]


def bench_quality(gen: VCGenerator, args, judge: Judge, per: PhonemeRecognizer, recognizer) -> None:
    table = voices(args.data)
    for split, ref_split in (("test_unseen_voice", "ref_unseen_voice"), ("test_seen_voice", "train")):
        sources = defaultdict(list)
        for u in load_utterances(args.data, (split,)):
            sources[u.voice_id].append(u)
        refs = defaultdict(list)
        for u in load_utterances(args.data, (ref_split,)):
            if u.voice_id in sources:
                refs[u.voice_id].append(u)
        pairs = pick_pairs({v: refs[v] for v in sources if len(refs[v]) >= 6}, judge, args.num_pairs)
        margins = defaultdict(list)
        per_items = defaultdict(list)
        wer_items = defaultdict(list)
        pitch = defaultdict(list)  # median f0 (Hz) of each converted utterance and of its target's reference
        for source, target in pairs:
            ref_audio = np.concatenate([u.audio for u in refs[target][:3]])
            target_emb = judge.embed([u.audio for u in refs[target][3:6]])
            source_emb = judge.embed([u.audio for u in refs[source][:3]])
            target_f0 = median_pitch(ref_audio, 0.0)
            reference = wav_base64(ref_audio)  # the same path as an upload from the page
            for i, u in enumerate(sources[source][: args.utterances_per_pair]):
                out, _ = convert(gen, u.audio, {"seed": i, "steps": args.steps, "reference_audio": reference})
                real = refs[target][6 + i % max(1, len(refs[target]) - 6)].audio if len(refs[target]) > 6 else None
                for name, x in (("converted", out), ("source", u.audio), ("vocoded_target", vocode(gen, real))
                                if real is not None else ("vocoded_target", None)):
                    if x is None:
                        continue
                    e = judge.embed([x])
                    margins[name].append(float(e @ target_emb) - float(e @ source_emb))
                    margins[name + "_to_target"].append(float(e @ target_emb))
                for name, x in (("source", u.audio), ("vocoded_source", vocode(gen, u.audio)), ("converted", out)):
                    per_items[name].append((u.text, u.language, x))
                    wer_items[name].append((u.text, x))
                pitch["converted"].append(median_pitch(out, 0.0))
                pitch["target"].append(target_f0)
        fields = {f"margin_{k}": statistics.mean(v) for k, v in margins.items() if not k.endswith("_to_target")}
        fields |= {f"similarity_{k}": statistics.mean(v) for k, v in margins.items() if k.endswith("_to_target")}
        fields |= {f"per_{k}": per.per(v) for k, v in per_items.items()}
        if recognizer is not None:
            fields |= {f"wer_{k}": recognizer.wer(v) for k, v in wer_items.items()}
        voiced = [(c, t) for c, t in zip(pitch["converted"], pitch["target"], strict=True) if c > 0 and t > 0]
        fields |= {"unvoiced_converted": sum(c == 0 for c in pitch["converted"]) / len(pitch["converted"]),
                   "pitch_error_semitones": statistics.mean(abs(12 * np.log2(c / t)) for c, t in voiced)
                   if voiced else None}
        emit(bench="vc.quality", split=split, steps=args.steps, temperature=getattr(gen, "temperature", None),
             pairs=[f"{s}->{t}" for s, t in pairs],
             pitch_pairs=[(table[s]["pitch"], table[t]["pitch"]) for s, t in pairs],
             utterances=len(per_items["converted"]), **fields)


# -- batched step (GPU, paper config) -----------------------------------------------------------------------
def bench_batches(args) -> None:
    """Per-step time at growing batch sizes on ``--device`` (the GPU run: ``--device cuda --config paper``).

    Eager, and on CUDA also as captured graphs. Runs on the CPU too (``--device cpu --config paper
    --batches 1 2``: a smoke test of this path before a GPU session, not a measurement to report).
    """
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    batches = [int(b) for b in args.batches]
    for graphs in (False, True) if cuda else (False,):
        gen = make_generator(args, max_sessions=max(batches), max_batch_size=max(batches), cuda_graphs=graphs)
        for batch in batches:
            states, chunk = _batch_sessions(gen, batch)
            for _ in range(3):
                gen.step(states, chunk, batch)
            sync()
            start = time.perf_counter()
            for _ in range(args.repeats):
                gen.step(states, chunk, batch)
            sync()
            ms = (time.perf_counter() - start) / args.repeats * 1000
            for s in states:
                gen.close_session(s)
            device = torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)"
            emit(bench="vc.batch", config="meanvc" if args.weights else args.config, graphs=graphs, batch=batch,
                 step_ms=ms, chunk_ms=gen.spec.chunk_ms, sessions_real_time_bound=int(batch * gen.spec.chunk_ms / ms),
                 device=device)


def _batch_sessions(gen: VCGenerator, batch: int) -> tuple[list, list[StepInput]]:
    """``batch`` open sessions and one chunk of noise-like input audio for each."""
    states = [gen.open_session(gen.validate_params({"seed": i})) for i in range(batch)]
    n = gen.spec.input_chunk_samples
    chunk = [StepInput(audio=np.random.default_rng(i).normal(0, 0.1, n).astype(np.float32), num_valid_samples=n)
             for i in range(batch)]
    return states, chunk


# -- several processes sharing the device (serve --workers) -----------------------------------------------
def _process_steps(args, batch: int, ready, start, results) -> None:
    """One worker: a batch of sessions stepped as graphs, timed between ``start`` and ``--seconds`` later."""
    torch.set_num_threads(1)
    cuda = args.device.startswith("cuda")
    gen = VCGenerator(device=args.device, config=args.config, chunk_ms=args.chunk_ms, max_sessions=batch,
                      max_batch_size=batch, cuda_graphs=True)
    states, chunk = _batch_sessions(gen, batch)
    for _ in range(3):
        gen.step(states, chunk, batch)
    ready.wait()
    start.wait()
    times, t_end = [], time.perf_counter() + args.seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        gen.step(states, chunk, batch)  # returns host audio: the step is complete
        times.append((time.perf_counter() - t0) * 1000)
        if cuda:
            torch.cuda.synchronize()
    results.put(times)


def bench_processes(args) -> None:
    """P processes step at once; every session is in real time if each process's step p99 fits in a chunk.

    Steps run back to back here (each process as fast as it can), a harsher load than serving's one step per
    chunk: the p50 is what a step costs under the others' contention.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    for procs in (int(p) for p in args.processes):
        for batch in (int(b) for b in args.batches):
            ready, start, results = ctx.Barrier(procs + 1), ctx.Barrier(procs + 1), ctx.Queue()
            workers = [ctx.Process(target=_process_steps, args=(args, batch, ready, start, results))
                       for _ in range(procs)]
            for w in workers:
                w.start()
            ready.wait()
            start.wait()
            times = [results.get(timeout=args.seconds + 120) for _ in workers]
            for w in workers:
                w.join()
            p50 = statistics.median(statistics.median(t) for t in times)
            p99 = max(float(np.percentile(t, 99)) for t in times)
            chunk_ms = args.chunk_ms or DEFAULT_WAIT_MS  # (--config paper: no content lookahead)
            emit(bench="vc.processes", config=args.config, processes=procs, batch=batch, sessions=procs * batch,
                 step_ms_p50=round(p50, 2), step_ms_p99=round(p99, 2), steps=sum(len(t) for t in times),
                 back_to_back_sessions_real_time=int(procs * batch * chunk_ms / p50),
                 all_in_real_time=p99 < chunk_ms,
                 device=torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu")


def bench_reference(gen: VCGenerator, speech: np.ndarray, args, paced: bool = True) -> None:
    """``vc.reference``: the time an upload takes to embed (3 s and 10 s of speech), with and without its fit.

    Once per upload, in the preparation stage (off the event loop and the steps): the session starts after it.
    ``vc.latency_paced_during_fit``: the paced latency run (``--paced-s``) while another thread fits uploads
    back to back, on the same weights: what a fit costs the sessions already streaming.
    """
    fit_steps = gen.reference_fit_steps
    for seconds in (3.0, 10.0):
        data = wav_base64(speech[: int(seconds * 16_000)])
        fields = {}
        for steps in sorted({0, fit_steps}):
            gen.reference_fit_steps = steps
            t0, w0 = time.thread_time(), time.perf_counter()
            gen.reference_from_wav(data)
            if gen.device.type == "cuda":
                torch.cuda.synchronize()
            fields[f"fit_{steps}_cpu_s"] = round(time.thread_time() - t0, 3)
            fields[f"fit_{steps}_wall_s"] = round(time.perf_counter() - w0, 3)
        gen.reference_fit_steps = fit_steps
        emit(bench="vc.reference", reference_s=seconds, fit_steps=fit_steps, threads=torch.get_num_threads(),
             device=torch.cuda.get_device_name() if gen.device.type == "cuda" else "cpu", **fields)
    if fit_steps == 0 or args.paced_s <= 0 or not paced:
        return
    # a session streaming in real time while another thread fits uploads, one after another (as a server's
    # preparation stage would, on the same process and weights): what an upload costs the others
    stop, fitted = threading.Event(), []

    def fit_uploads() -> None:
        while not stop.is_set():  # a new clip each time (shifted by a sample): never the kept embedding
            offset = len(fitted)
            gen.reference_from_wav(wav_base64(speech[offset : offset + 10 * 16_000]))
            fitted.append(offset)

    worker = threading.Thread(target=fit_uploads, daemon=True)
    worker.start()
    try:
        fields = paced_latency(gen, speech, args)
    finally:
        stop.set()
        worker.join()
    emit(bench="vc.latency_paced_during_fit", uploads_fitted=len(fitted), **fields)


def make_generator(args, **options):
    """The generator benched: the shipped family's (``--config``/``--checkpoint``) or a weights folder's."""
    if args.weights:
        from models.registry import load_model

        chunk = {"chunk_ms": args.chunk_ms} if args.chunk_ms else {}
        return load_model("vc", args.device, {"weights": args.weights, **chunk, "asr_threads": args.asr_threads,
                                              **options})
    return VCGenerator(device=args.device, config=args.config, checkpoint=args.checkpoint, chunk_ms=args.chunk_ms,
                       **options)


# MeanVC's reported end-to-end latency on one CPU core (its paper): chunk ms -> ms
MEANVC_REPORTED_MS = {160.0: 211.0, 80.0: 112.0}


def bench_meanvc_parts(gen, speech: np.ndarray, args) -> None:
    """Where a MeanVC step's time goes: the ASR (per session) and the batched rest, in wall and CPU time.

    CPU time (``time.thread_time``, one torch thread: all the step's work runs on this thread) is what the
    step costs on a core of its own; on a shared machine the wall time also holds the waits for a core.
    """
    from models.vc.meanvc.stream import ContentStream

    n = gen.spec.input_chunk_samples
    stream = ContentStream(gen.asr, gen.chunk_frames, gen.device)
    state = stream.initial_state()
    chunks = [speech[k * n : (k + 1) * n] for k in range(min(60, len(speech) // n))]
    asr_cpu, step_cpu, step_wall = [], [], []
    session = gen.open_session(gen.validate_params({"seed": 0, "steps": args.steps}))
    with torch.inference_mode():
        for c in chunks:
            t0 = time.thread_time()
            stream(state, torch.from_numpy(c))
            asr_cpu.append((time.thread_time() - t0) * 1000)
            t0, w0 = time.thread_time(), time.perf_counter()
            gen.step([session], [StepInput(audio=c, num_valid_samples=n)], 1)
            step_cpu.append((time.thread_time() - t0) * 1000)
            step_wall.append((time.perf_counter() - w0) * 1000)
    gen.close_session(session)
    asr_cpu, step_cpu, step_wall = (np.array(x[3:]) for x in (asr_cpu, step_cpu, step_wall))  # warm-up dropped
    algorithmic = gen.spec.chunk_ms + gen.spec.lookahead_ms
    emit(bench="vc.meanvc_parts", threads=args.threads, chunk_ms=gen.spec.chunk_ms, steps=args.steps,
         asr="stand-in (random_release.py)" if getattr(gen.asr, "original_name", "") == "StandInASR" else "published",
         asr_cpu_ms_p50=float(np.median(asr_cpu)), step_cpu_ms_p50=float(np.median(step_cpu)),
         step_cpu_ms_p99=float(np.percentile(step_cpu, 99)), rest_cpu_ms_p50=float(np.median(step_cpu - asr_cpu)),
         step_wall_ms_p50=float(np.median(step_wall)),
         end_to_end_cpu_ms_p50=algorithmic + float(np.median(step_cpu)),
         end_to_end_cpu_ms_p99=algorithmic + float(np.percentile(step_cpu, 99)),
         chunk_plus_cpu_ms_p50=gen.spec.chunk_ms + float(np.median(step_cpu)),
         meanvc_reported_ms=MEANVC_REPORTED_MS.get(gen.spec.chunk_ms))
    # a reference's embedding (WavLM-Large + ECAPA, MRTE memory): once per voice or upload, on the worker
    for seconds in (3.0, 10.0):
        t0 = time.thread_time()
        gen._embed(speech[: int(seconds * 16_000)])
        emit(bench="vc.meanvc_reference", reference_s=seconds, embed_cpu_ms=(time.thread_time() - t0) * 1000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/speech_vc")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--config", default="default", help="'default' (the shipped checkpoint) or 'paper' (random)")
    ap.add_argument("--batches", nargs="+", default=["1", "8", "64", "256", "1024"],
                    help="batch sizes of the batched-step bench (--device cuda or --config paper)")
    ap.add_argument("--repeats", type=int, default=10, help="steps timed per batch size (batched-step bench)")
    ap.add_argument("--batch-bench", action="store_true",
                    help="the batched-step bench on the CPU with --config default (the shipped checkpoint)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chunk-ms", type=float, default=None,
                    help="default: the generator's (160 ms less the checkpoint's content lookahead; MeanVC's 160)")
    ap.add_argument("--steps", type=int, default=1, help="mean-flow steps for the quality run")
    ap.add_argument("--temperature", type=float, default=None, help="starting-noise scale (default: the model's)")
    ap.add_argument("--reference-fit-steps", type=int, default=None,
                    help="steps fitting an uploaded reference's embedding (default: the model's; 0: off)")
    ap.add_argument("--paced-s", type=float, default=10.0, help="seconds of the real-time (paced) latency run; 0: none")
    ap.add_argument("--sessions", default="1,2,4,8,16,32,64")
    ap.add_argument("--session-chunks", type=int, default=20)
    ap.add_argument("--num-pairs", type=int, default=4)
    ap.add_argument("--utterances-per-pair", type=int, default=4)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: latency,reference,sessions,quality")
    ap.add_argument("--processes", nargs="+", default=None,
                    help="vc.processes: process counts sharing the device, each stepping --batches sessions")
    ap.add_argument("--seconds", type=float, default=10.0, help="vc.processes: timed seconds per setting")
    ap.add_argument("--weights", default=None, help="a published weights folder (vc:weights=DIR, e.g. MeanVC's)")
    ap.add_argument("--random-release", action="store_true",
                    help="with --weights: first write MeanVC's files there with random weights (no download)")
    ap.add_argument("--tiny", action="store_true", help="with --random-release: tiny sizes (a smoke test)")
    ap.add_argument("--asr-threads", type=int, default=1, help="with --weights: threads for the per-session ASR")
    args = ap.parse_args()
    args.weights_note = ""
    if args.weights and args.random_release:
        from models.vc.meanvc.random_release import write_random_release

        write_random_release(args.weights, tiny=args.tiny)
        args.weights_note = "random weights, stand-in ASR"
    torch.set_num_threads(args.threads)
    if args.processes:
        bench_processes(args)
        return
    skip = set(args.skip.split(","))
    if args.device.startswith("cuda") or args.config == "paper" or args.batch_bench:
        bench_batches(args)
        if args.config == "default" and not args.weights and "reference" not in skip:  # an upload's wait there
            from models.vc.meanvc.random_release import speechlike

            gen = make_generator(args, max_sessions=2, max_batch_size=2)
            bench_reference(gen, speechlike(12.0, 0), args, paced=False)
        return
    options = {} if args.temperature is None else {"temperature": args.temperature}
    if args.reference_fit_steps is not None:
        options["reference_fit_steps"] = args.reference_fit_steps
    gen = make_generator(args, max_sessions=128, max_batch_size=128, **options)
    if Path(args.data).exists():
        speech = np.concatenate([u.audio for u in load_utterances(args.data, ("test_unseen_voice",), 40)])
    elif args.weights:  # random weights need no real speech for timing
        from models.vc.meanvc.random_release import speechlike

        speech, skip = speechlike(40.0, 0), skip | {"quality"}
    else:
        raise SystemExit(f"{args.data} not found (scripts/make_speech_data.py)")
    if args.weights:
        reported = MEANVC_REPORTED_MS.get(gen.spec.chunk_ms)
        emit(bench="vc.weights", weights=args.weights, note=args.weights_note, chunk_ms=gen.spec.chunk_ms,
             lookahead_ms=gen.spec.lookahead_ms, meanvc_reported_end_to_end_ms=reported)
        bench_meanvc_parts(gen, speech, args)
    if "latency" not in skip:
        bench_latency(gen, speech[: 30 * 16_000], args)
    if "reference" not in skip and not args.weights:
        bench_reference(gen, speech, args)
    if "sessions" not in skip:
        bench_sessions(gen, speech, args)
    if "quality" not in skip:
        from evaluation.words import VocabularyRecognizer, words_of

        texts = [u.text for u in load_utterances(args.data, ("test_unseen_voice", "test_seen_voice"))]
        try:
            recognizer = VocabularyRecognizer({w for t in texts for w in words_of(t)})
        except ImportError:
            recognizer = None
        per = PhonemeRecognizer(model=gen.model, symbols=gen.symbols) if hasattr(gen, "model") else PhonemeRecognizer()
        bench_quality(gen, args, Judge(), per, recognizer)


if __name__ == "__main__":
    main()
