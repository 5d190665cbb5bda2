"""The web page in real headless Chromium (Debian's chromium + chromium-driver, driven by selenium).

The fake microphone plays a 440 Hz WAV; the page records what comes back with WebAudio and the test
checks it is the pitch shifter's output (554 Hz at +4 semitones), over WebRTC and over WebSocket.
Chromium may use loopback for WebRTC and does not hide addresses behind mDNS names, and the server
gathers only 127.0.0.1, so all traffic stays on 127.0.0.1 (checked on the selected candidate pair).
Screenshots of every tab land in the test's tmp dir.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from browser_helpers import (
    launch,
    needs_chromium,
    open_page,
    peak_hz,
    record,
    severe_console_entries,
    wait_until,
)
from conftest import RunningServer, make_server_config, run_live_server

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def browser(live_server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    driver = launch(tmp_path_factory.mktemp("chromium"))
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_page_loads_without_console_errors_and_shows_each_tab(
    browser, live_server: RunningServer, tmp_path: Path
) -> None:
    open_page(browser, live_server)
    tabs = browser.execute_script("return [...document.querySelectorAll('#tabs button')].map(b => b.textContent)")
    assert tabs == ["Voice", "Speak", "Avatar", "Video"]
    unavailable = browser.execute_script(
        "return [...document.querySelectorAll('#tabs button.unavailable')].map(b => b.dataset.mode)"
    )
    # a tab whose models are not loaded (not implemented yet, or no checkpoint) is shown, marked, not broken
    with urllib.request.urlopen(f"http://127.0.0.1:{live_server.port}/healthz") as r:
        loaded = {m["name"] for m in json.load(r)["models"] if m["status"] == "loaded"}
    tab_models = {"voice": {"vc", "pitch"}, "speak": {"tts"}, "avatar": {"avatar"}, "video": {"video", "testcard"}}
    assert unavailable == [mode for mode, names in tab_models.items() if not names & loaded]
    for mode in ("voice", "speak", "avatar", "video"):
        browser.execute_script("causalcast.selectMode(arguments[0])", mode)
        start_disabled = browser.execute_script("return document.getElementById('start').disabled")
        assert start_disabled == (mode in unavailable)
        if mode in unavailable:
            note = browser.execute_script("return document.getElementById('model-note').textContent")
            assert "unavailable" in note
        browser.save_screenshot(str(tmp_path / f"tab-{mode}.png"))
    # The Video tab streaming the test card over WebRTC, for a person to look at.
    browser.execute_script("causalcast.selectMode('video'); causalcast.setTransport('webrtc'); causalcast.start()")
    wait_until(browser, "return causalcast.state().last.ready")
    wait_until(
        browser, "const v = document.getElementById('remote-video'); return v.videoWidth > 0 && v.currentTime > 0.5"
    )
    browser.save_screenshot(str(tmp_path / "tab-video-streaming.png"))
    browser.execute_script("causalcast.stop()")
    assert all((tmp_path / f"tab-{m}.png").stat().st_size > 5000 for m in ("voice", "speak", "avatar", "video"))
    print(f"screenshots in {tmp_path}")
    assert severe_console_entries(browser) == []


@pytest.mark.parametrize("transport", ["webrtc", "ws"])
def test_voice_round_trip(browser, live_server: RunningServer, transport: str) -> None:
    """Fake-mic 440 Hz goes through the pitch shifter (+4 semitones) and comes back as ~554 Hz."""
    open_page(browser, live_server)
    browser.execute_script(
        "causalcast.selectMode('voice'); causalcast.selectModel('pitch'); causalcast.setTransport(arguments[0]);"
        " causalcast.start()", transport
    )
    wait_until(browser, "return causalcast.state().last.ready")
    if transport == "webrtc":
        stats = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stats = browser.execute_async_script(
                "const done = arguments[arguments.length - 1]; causalcast.stats().then(done)"
            )
            if stats and stats.get("selected"):
                break
            time.sleep(0.2)
        pair = stats["selected"]
        assert pair == {"local": "127.0.0.1", "remote": "127.0.0.1"}, stats
    time.sleep(1.0)  # let the stream settle
    rate, sent, returned = record(browser, 2.0)
    assert sent.std() > 0.1, "the fake microphone is silent"
    assert returned.std() > 0.03, f"nothing came back over {transport}"
    expected = 440 * 2 ** (4 / 12)
    assert abs(peak_hz(sent, rate) - 440) < 10
    assert abs(peak_hz(returned, rate) - expected) < 0.03 * expected, peak_hz(returned, rate)
    # Live stats are filled in from the server's `stats` and the round-trip pings.
    wait_until(browser, "return causalcast.state().last.stats && causalcast.state().last.pong")
    browser.execute_script("causalcast.stop()")
    wait_until(browser, "return !causalcast.state().running")
    assert severe_console_entries(browser) == []


@pytest.mark.parametrize("transport", ["webrtc", "ws"])
def test_speak_tab_says_typed_text(browser, live_server: RunningServer, transport: str) -> None:  # noqa: ANN001
    """Typed text comes back as speech: not silent, starting soon, as long as the words need."""
    from selenium.webdriver.common.by import By

    with urllib.request.urlopen(f"{live_server.http_url}/healthz") as r:
        if not any(m["name"] == "tts" and m["status"] == "loaded" for m in json.load(r)["models"]):
            pytest.skip("the tts model is not loaded (no checkpoint): the Speak tab shows as unavailable")
    open_page(browser, live_server)
    browser.execute_script("causalcast.selectMode('speak'); causalcast.setTransport(arguments[0])", transport)
    browser.find_element(By.ID, "start").click()
    wait_until(browser, "return causalcast.state().last.ready")
    text = "Hello there, this is a test of streaming speech."
    browser.find_element(By.ID, "text").send_keys(text)
    browser.find_element(By.ID, "say").click()
    rate, _, returned = record(browser, 8.0)
    frames = returned[: len(returned) // (rate // 50) * (rate // 50)].reshape(-1, rate // 50)  # 20 ms frames
    voiced = np.flatnonzero(np.sqrt((frames**2).mean(axis=1)) > 0.01)
    assert len(voiced), f"no speech came back over {transport}"
    start_s, span_s = voiced[0] * 0.02, (voiced[-1] - voiced[0] + 1) * 0.02
    num_words = len(text.split())
    print(f"{transport}: speech from {start_s:.2f} s for {span_s:.2f} s ({span_s / num_words:.2f} s per word)")
    assert start_s < 1.5, start_s  # streaming: speech starts before the sentence is synthesized
    # all of it, at a speaking pace (0.36-0.43 s per word here; a loaded machine may add gaps)
    assert 0.15 * num_words < span_s < 0.8 * num_words, span_s
    assert np.abs(returned).max() > 0.1
    browser.execute_script("causalcast.stop()")
    wait_until(browser, "return !causalcast.state().running")
    assert severe_console_entries(browser) == []


def test_connection_lost_then_reconnects(browser, live_server) -> None:  # noqa: ANN001
    """The server drops the peer connection without a word: the page says so and reconnects by itself."""
    from streaming.server import RTC_KEY

    open_page(browser, live_server)
    browser.execute_script("causalcast.selectMode('voice'); causalcast.setTransport('webrtc'); causalcast.start()")
    first = wait_until(browser, "const r = causalcast.state().last.ready; return r && r.session")
    (peer,) = [p for p in live_server.app[RTC_KEY].peers if p.session.id == first]
    live_server.call(peer.pc.close())  # no `stopped` message: the connection just goes away
    message = wait_until(browser, "const m = causalcast.state().message; return m.includes('lost') && m")
    assert "Reconnecting" in message
    second, state = None, {}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        state = browser.execute_script("return causalcast.state()")
        second = (state["last"].get("ready") or {}).get("session")
        if state["running"] and second and second != first:
            break
        time.sleep(0.2)
    assert second and second != first, state
    browser.execute_script("causalcast.stop()")


@pytest.mark.parametrize("transport", ["webrtc", "ws"])
def test_server_at_capacity_is_explained(browser, transport: str) -> None:  # noqa: ANN001
    from streaming.engine.core import EngineConfig
    from streaming.engine.scheduler import AdmissionLimits

    config = make_server_config(engine=EngineConfig(limits=AdmissionLimits(max_sessions=0)))
    with run_live_server(config) as full:
        open_page(browser, full)
        browser.execute_script(
            "causalcast.selectMode('video'); causalcast.setTransport(arguments[0]); causalcast.start()", transport
        )
        message = wait_until(browser, "const s = causalcast.state(); return !s.running && s.errors.length && s.message")
        assert "at capacity" in message, message


def test_mic_permission_denied_is_explained(live_server: RunningServer, tmp_path: Path) -> None:
    driver = launch(tmp_path, fake_ui=False, block_mic=True)
    try:
        open_page(driver, live_server)
        driver.execute_script("causalcast.selectMode('voice'); causalcast.start()")
        message = wait_until(driver, "const s = causalcast.state(); return !s.running && s.errors.length && s.message")
        assert "permission was denied" in message
        driver.save_screenshot(str(tmp_path / "mic-denied.png"))
    finally:
        driver.quit()
