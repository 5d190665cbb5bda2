"""The media helpers under the WebRTC transport: causal resampling and slot-clock pacing.

The pacing tests run on a virtual clock (tests/virtual_time.py): the pacers get ``loop.time`` as their
injected clock, so their timing is exact and no machine load can move a result.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from virtual_time import VirtualClockLoop, run_virtual

from streaming.media.markers import find_onsets, marker_times, marker_train, match_markers, match_onsets
from streaming.media.pacing import AudioPacer, PacingConfig, VideoPacer
from streaming.media.packet_pacing import MediaClock, PacketPacer, TimedPacket
from streaming.media.resample import CausalResampler


def test_resampler_returns_whole_packets_and_keeps_the_signal() -> None:
    down, up = CausalResampler(48_000, 16_000), CausalResampler(16_000, 48_000)
    t = np.arange(48_000) / 48_000
    x = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    mids = [down.process(x[i : i + 960]) for i in range(0, len(x), 960)]
    assert {len(m) for m in mids} == {320}  # no per-call lag, unlike FFmpeg's resampler (304 first)
    outs = [up.process(m) for m in mids]
    assert {len(o) for o in outs} == {960}
    y = np.concatenate(outs)
    assert abs(y[4800:].std() - x.std()) < 0.01 * x.std()
    lag = np.argmax(np.correlate(y[10_000:20_000], x[10_000 - 200 : 20_000 + 200], "valid"))
    assert abs(200 - lag) < 48  # the signal is delayed by under 1 ms in total


def test_resampler_odd_ratio_counts() -> None:
    r = CausalResampler(44_100, 16_000)
    assert sum(len(r.process(np.zeros(441, np.float32))) for _ in range(100)) == 16_000


def test_markers_are_found_where_they_were_put() -> None:
    signal, onsets = marker_train(48_000, 10, 0.2)
    found = find_onsets(signal, 48_000)
    assert len(found) == 10
    assert all(abs(f - o) < 48 for f, o in zip(found, onsets, strict=True))


def test_audio_pacer_is_drift_free_and_counts_underruns() -> None:
    """A producer with jitter and one 200 ms stall: slots stay on a 20 ms grid, the stall is counted."""

    async def main(loop: VirtualClockLoop) -> tuple[list[tuple[float, np.ndarray]], AudioPacer]:
        pacer = AudioPacer(16_000, 320, PacingConfig(margin_ms=2.0), clock=loop.time)
        rng = np.random.default_rng(0)

        async def produce() -> None:
            start = loop.time()
            for i in range(100):
                if i == 50:
                    await asyncio.sleep(0.2)  # the model stalls; 10 frames of output come too late to play
                due = start + i * 0.02 + rng.uniform(0, 0.004)
                await asyncio.sleep(max(0.0, due - loop.time()))
                pacer.push(np.full(320, (i % 7) / 10, np.float32))
            await asyncio.sleep(0.1)
            pacer.close()

        task = asyncio.create_task(produce())
        sent = []
        while (frame := await pacer.next_frame()) is not None:
            sent.append((loop.time(), frame))
        await task
        return sent, pacer

    sent, pacer = run_virtual(main)
    gaps_ms = np.round(np.diff([t for t, _ in sent]) * 1000, 6)
    # Every slot on the 20 ms grid; the stall's first empty slot waits its grace (10 ms) before sending
    # silence, and the next slot is back on the grid: one 30 ms and one 10 ms gap, never a burst.
    assert sorted(set(gaps_ms)) == [10.0, 20.0, 30.0] and list(gaps_ms).count(20.0) == len(gaps_ms) - 2
    assert sent[-1][0] - sent[0][0] == pytest.approx((len(sent) - 1) * 0.02)  # no drift over 2 s
    assert pacer.stats.underruns == 9 and pacer.stats.late == 0  # the stall left nine slots empty
    assert all(len(f) == 320 for _, f in sent)


def test_audio_pacer_trims_a_backlog() -> None:
    """A burst of 10 frames at start-up is trimmed back to the margin within the first window."""

    async def main(loop: VirtualClockLoop) -> AudioPacer:
        pacer = AudioPacer(16_000, 320, PacingConfig(margin_ms=2.0, window_s=0.2), clock=loop.time)
        for _ in range(10):
            pacer.push(np.zeros(320, np.float32))

        async def produce() -> None:
            start = loop.time()
            for i in range(40):
                await asyncio.sleep(max(0.0, start + i * 0.02 - loop.time()))
                pacer.push(np.zeros(320, np.float32))
            pacer.close()

        task = asyncio.create_task(produce())
        while await pacer.next_frame() is not None:
            pass
        await task
        return pacer

    pacer = run_virtual(main)
    assert pacer.stats.trimmed_frames >= 7


def test_audio_pacer_recovers_its_latency_within_half_a_second_of_a_loop_stall() -> None:
    """The sender stalls 200 ms (the loop blocked): the grid moves, the backlog is dropped within ~0.4 s.

    Before short windows after a stall the excess was judged over whole 1 s windows, and the first of them
    still held the backlog's own small leads: 200 ms of extra latency for 1-2 s.
    """

    async def main(loop: VirtualClockLoop) -> tuple[list[tuple[float, float]], AudioPacer, float]:
        pacer = AudioPacer(16_000, 320, PacingConfig(margin_ms=2.0), clock=loop.time)
        pushed_at: list[float] = []

        async def produce() -> None:  # on time, every 20 ms: frame i is all (i + 1) / 1000
            start = loop.time()
            for i in range(150):
                await asyncio.sleep(max(0.0, start + i * 0.02 - loop.time()))
                pushed_at.append(loop.time())
                pacer.push(np.full(320, (i + 1) / 1000, np.float32))
            await asyncio.sleep(0.1)
            pacer.close()

        task = asyncio.create_task(produce())
        latencies, stalled_at = [], 0.0
        while (frame := await pacer.next_frame()) is not None:
            if (i := round(float(frame[0]) * 1000) - 1) >= 0:  # not an underrun's silence
                latencies.append((loop.time(), loop.time() - pushed_at[i]))
            if len(latencies) == 60 and not stalled_at:
                await asyncio.sleep(0.2)  # the loop stands still; the producer's frames pile up
                stalled_at = loop.time()
        await task
        return latencies, pacer, stalled_at

    latencies, pacer, stalled_at = run_virtual(main)
    before = [lat for t, lat in latencies if t < stalled_at - 0.3]
    just_after = [lat for t, lat in latencies if stalled_at < t < stalled_at + 0.1]
    recovered = [lat for t, lat in latencies if t > stalled_at + 0.5]
    assert max(before) < 0.005 and min(just_after) > 0.15  # the stall added its 200 ms
    assert recovered and max(recovered) < 0.01, recovered[:5]  # and 0.5 s later it is gone
    assert pacer.stats.stalls == 1 and pacer.stats.trimmed_frames > 8.5  # ~9 whole frames and a fraction


def test_markers_carry_ids_and_a_dropped_marker_does_not_shift_the_rest() -> None:
    rate = 16_000
    signal, onsets = marker_train(rate, 9, 0.2)
    sent = marker_times([(0.0, signal)], rate)
    assert [i for _, i in sent] == [0, 1, 2] * 3
    delay = 0.03
    # The path drops 200 ms of audio holding marker 4, and everything after comes 30 ms late as before.
    cut = slice(onsets[4] - 800, onsets[4] + 2400)
    back = np.concatenate([signal[: cut.start], signal[cut.stop :]])
    received = marker_times([(delay, back[: cut.start]), (delay + cut.stop / rate, back[cut.start :])], rate)
    assert len(received) == 8
    assert match_markers(sent, received) == pytest.approx([delay] * 8, abs=0.001)
    assert match_onsets([t for t, _ in sent], [t for t, _ in received])[4:] == pytest.approx([0.23] * 4, abs=0.001)


def test_video_pacer_repeats_the_last_frame_on_underrun() -> None:
    async def main(loop: VirtualClockLoop) -> None:
        pacer = VideoPacer(50.0, active=lambda: True, clock=loop.time)
        first = np.zeros((4, 4, 3), np.uint8)
        pacer.push(first)
        frame, repeated = await pacer.next_frame()
        assert frame is first and not repeated
        start = loop.time()
        frame, repeated = await pacer.next_frame()
        assert frame is first and repeated and pacer.stats.underruns == 1
        assert loop.time() - start == pytest.approx(0.02 + 0.01)  # its slot, then half a frame of grace
        second = np.ones((4, 4, 3), np.uint8)
        pacer.push(second)
        frame, repeated = await pacer.next_frame()
        assert frame is second and not repeated
        pacer.close()
        assert await pacer.next_frame() is None

    run_virtual(main)


def test_idle_output_is_not_an_underrun() -> None:
    async def main(loop: VirtualClockLoop) -> AudioPacer:
        pacer = AudioPacer(16_000, 320, active=lambda: False, clock=loop.time)
        pacer.push(np.zeros(320, np.float32))
        for _ in range(5):
            await pacer.next_frame()
        return pacer

    pacer = run_virtual(main)
    assert pacer.stats.underruns == 0 and pacer.stats.frames == 5


# -- pre-encoded packets on their pts, and video following the audio clock ---------------------------------
def test_packet_pacers_release_audio_and_video_together_on_their_pts() -> None:
    """0.4 s of packets arriving at once leave at their pts, not in a burst, audio and video in step."""
    base = 123.0  # the stream started long ago: only differences matter

    async def main(loop: VirtualClockLoop) -> tuple[list[tuple[float, float]], MediaClock]:
        clock = MediaClock(PacingConfig(margin_ms=5.0), clock=loop.time)
        audio, video = PacketPacer(clock, 48_000), PacketPacer(clock, 90_000, keyed=True)
        start = loop.time()
        for i in range(10):
            video.push(TimedPacket(b"v", round((base + i * 0.04) * 90_000), key=i == 0))
            for j in range(2):
                audio.push(TimedPacket(b"a", round((base + i * 0.04 + j * 0.02) * 48_000)))

        async def drain(pacer: PacketPacer, n: int) -> list[tuple[float, float]]:
            out = []
            for _ in range(n):
                packet = await pacer.next_packet()
                out.append((loop.time() - start, packet.pts / pacer.clock_hz - base))
            return out

        audio_out, video_out = await asyncio.gather(drain(audio, 20), drain(video, 10))
        return audio_out + video_out, clock

    released, clock = run_virtual(main)
    for at, media in released:  # each at its slot: media time plus the 5 ms margin, exactly
        assert at == pytest.approx(media + 0.005, abs=1e-6), (at, media)
    assert clock.stats.late == 0 and clock.stats.reanchors == 1


def test_media_clock_follows_late_data_but_not_a_late_loop_and_trims_back() -> None:
    clock = MediaClock(PacingConfig(margin_ms=5.0, grace_ms=15.0, trim_above_ms=4.0, window_s=0.5), max_trim_s=0.1)
    clock.arrived(10.0, now=100.0)
    assert clock.slot(10.0) == pytest.approx(100.005)
    clock.arrived_late(0.010)  # within grace (e.g. the loop woke late): nothing moves
    assert clock.slot(10.0) == pytest.approx(100.005)
    clock.arrived_late(0.080)  # data 80 ms late: the clock follows, later packets keep their spacing
    assert clock.slot(10.0) == pytest.approx(100.085) and clock.stats.late == 1
    # from now on packets arrive 80 ms ahead of their slot: after a whole window of that, the excess is trimmed
    for i in range(1, 60):
        clock.arrived(10.0 + i * 0.02, now=100.0 + i * 0.02)
    assert clock.slot(10.0) == pytest.approx(100.005, abs=0.001) and clock.stats.trimmed_s == pytest.approx(0.08)
    # a jump in media time (a pause with a pts jump, or a restart) re-anchors
    clock.arrived(50.0, now=102.0)
    assert clock.slot(50.0) == pytest.approx(102.005) and clock.stats.reanchors == 2


def test_packet_pacer_overflow_resumes_video_at_a_key_frame() -> None:
    run_virtual(_overflow_resumes_at_a_key_frame)


async def _overflow_resumes_at_a_key_frame(loop: VirtualClockLoop) -> None:
    requests = []
    clock = MediaClock(clock=loop.time)
    pacer = PacketPacer(clock, 90_000, keyed=True, max_buffer_s=0.2, on_need_key=lambda: requests.append(1))
    pacer.push(TimedPacket(b"d", 0, key=False))  # a viewer's first video must be a key frame
    assert pacer.buffered == 0 and pacer.num_dropped == 1
    for i in range(8):  # nobody drains: 0.28 s of video overflows the 0.2 s bound
        pacer.push(TimedPacket(b"k" if i == 0 else b"d", i * 3600, key=i == 0))
    assert requests == [1] and pacer.buffered == 0  # dropped, and a key frame was asked for
    pacer.push(TimedPacket(b"d", 9 * 3600, key=False))
    assert pacer.buffered == 0  # deltas wait for the key frame
    pacer.push(TimedPacket(b"k", 10 * 3600, key=True))
    assert (await pacer.next_packet()).payload == b"k"
    pacer.close()
    assert await pacer.next_packet() is None


def test_video_follows_the_audio_clock_through_a_trimmed_backlog() -> None:
    """Audio trims a start-up backlog (dropping audio); video, paced apart, would lag it: it follows instead."""

    async def main(loop: VirtualClockLoop) -> tuple[AudioPacer, VideoPacer, list[float]]:
        audio = AudioPacer(16_000, 320, PacingConfig(margin_ms=2.0, window_s=0.2), clock=loop.time)
        video = VideoPacer(25.0, PacingConfig(margin_ms=2.0, window_s=0.2), follow=audio.anchor, clock=loop.time)

        def push_chunk(k: int) -> None:  # a 40 ms chunk: 640 samples and one frame, pts k * 40 ms
            audio.push(np.zeros(640, np.float32), pts=k * 640)
            video.push(np.full((2, 2, 3), k % 256, np.uint8), media_s=k * 0.04)

        for k in range(6):  # a 240 ms burst at start-up
            push_chunk(k)

        async def produce() -> None:
            start = loop.time()
            for k in range(6, 45):
                await asyncio.sleep(max(0.0, start + (k - 6) * 0.04 - loop.time()))
                push_chunk(k)
            await asyncio.sleep(0.1)
            audio.close()
            video.close()

        async def play_audio() -> None:
            while await audio.next_frame() is not None:
                pass

        offsets = []

        async def play_video() -> None:
            while (item := await video.next_frame()) is not None:
                frame, repeated = item
                anchor = audio.anchor()
                if not repeated and anchor is not None:
                    media_s = int(frame[0, 0, 0]) * 0.04
                    offsets.append(loop.time() - (anchor + media_s))

        await asyncio.gather(produce(), play_audio(), play_video())
        return audio, video, offsets

    audio, video, offsets = run_virtual(main)
    assert audio.stats.trimmed_frames >= 5  # the audio pacer cut the backlog
    late = np.abs(np.array(offsets[-15:]))
    assert late.max() < 0.001, offsets  # video plays exactly where its audio plays
    assert video.stats.sync_moves + video.stats.sync_skips > 0
