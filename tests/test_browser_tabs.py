"""The Video and Avatar tabs in real headless Chromium, against a real server with the test card, avatar and video.

Video: a producer page shares its test card over WebRTC; a second window finds it in the page's list of
shared streams, watches it (over WebRTC or the WebSocket), and sees the producer's prompt switch both as
a colour change of the card and as an entry in the timeline; the trained `video` model follows a prompt
typed in the page, with the switch in the timeline. Avatar: the page streams the real avatar,
shows a face, and an uploaded WAV of agent speech makes the mouth open (and the conversation state
`speaking`), over WebRTC and the WebSocket. Screenshots land in each test's tmp dir.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from browser_helpers import grab_frame, launch, needs_chromium, open_page, severe_console_entries, wait_until
from conftest import LiveServer, make_server_config, run_live_server

from models.audio.dsp import write_wav
from models.avatar.render import mouth_openness
from models.diagnostic.testcard import prompt_tint, read_frame_number

pytestmark = needs_chromium

AGENT_WAV = Path(__file__).parent / "data" / "avatar_agent_speech.wav"
FIRST_PROMPT, SWITCHED_PROMPT = "a calm sea at dawn", "a green field"
BARS = (slice(130, 170), slice(0, 200))  # a patch of the card's tinted colour bars (256x192)


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    with run_live_server(make_server_config(models=("testcard", "avatar", "video"))) as running:
        yield running


def silent_wav(path: Path, seconds: float = 10.0, rate: int = 48_000) -> Path:
    write_wav(path, np.zeros(int(rate * seconds), np.float32), rate)
    return path


@pytest.fixture(scope="module")
def browser(live: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    tmp = tmp_path_factory.mktemp("chromium-tabs")
    driver = launch(tmp, mic_wav=silent_wav(tmp / "silence.wav"))  # the user says nothing
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def click(driver, css: str) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, css).click()


def choose_model(driver, name: str) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, "model")).select_by_value(name)


def next_frame(driver, timeout: float = 15.0) -> np.ndarray:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while (frame := grab_frame(driver)) is None:
        assert time.monotonic() < deadline, driver.execute_script("return causalcast.state()")
        time.sleep(0.1)
    return frame


def bars_colour(frame: np.ndarray) -> np.ndarray:
    return frame[BARS].reshape(-1, 3).astype(float).mean(axis=0)


@pytest.mark.parametrize("viewer_transport", ["webrtc", "ws"])
def test_viewer_page_watches_a_shared_stream_and_sees_prompt_switches(
    browser, live: LiveServer, viewer_transport: str, tmp_path: Path  # noqa: ANN001
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    producer = browser.current_window_handle
    open_page(browser, live)
    browser.execute_script("causalcast.selectMode('video'); causalcast.setTransport('webrtc')")
    choose_model(browser, "testcard")
    browser.find_element(By.ID, "prompt").clear()
    browser.find_element(By.ID, "prompt").send_keys(FIRST_PROMPT)  # sent when the session is ready
    click(browser, "#share")
    click(browser, "#start")
    sid = wait_until(browser, "const r = causalcast.state().last.ready; return r && r.session")
    wait_until(browser, f"return document.getElementById('share-status').textContent.includes('{sid}')")
    viewer = None
    try:
        browser.switch_to.new_window("window")
        viewer = browser.current_window_handle
        open_page(browser, live)
        browser.execute_script("causalcast.selectMode('video'); causalcast.setTransport(arguments[0])",
                               viewer_transport)
        # The shared stream appears in the list (polled every 2 s) with a Watch button: press it.
        wait_until(browser, f"return document.querySelector('#streams li[data-session=\"{sid}\"] button.watch')")
        click(browser, f'#streams li[data-session="{sid}"] button.watch')
        watching = wait_until(browser, "return causalcast.state().last.watching")
        assert watching["session"] == sid and watching["model"] == "testcard"
        first = next_frame(browser)
        time.sleep(1.0)
        later = next_frame(browser)
        assert 10 <= read_frame_number(later) - read_frame_number(first) <= 40  # live, ~25 fps
        before = bars_colour(later)
        assert np.abs(before - 0.6 * np.array(prompt_tint(FIRST_PROMPT))).max() < 60, before  # the first prompt

        browser.switch_to.window(producer)  # the producer types a new prompt and presses Enter
        prompt = browser.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys(SWITCHED_PROMPT + Keys.ENTER)
        wait_until(browser, "return document.getElementById('share-status').textContent.includes('1 watching')")
        browser.save_screenshot(str(tmp_path / "producer.png"))

        browser.switch_to.window(viewer)
        entry = wait_until(browser, f"return causalcast.state().timeline.find(e => e.text === '{SWITCHED_PROMPT}')")
        assert entry["frame"] > read_frame_number(first) and abs(entry["seconds"] - entry["frame"] / 25) < 1e-6
        assert SWITCHED_PROMPT in browser.find_element(By.ID, "timeline").text
        deadline, after = time.monotonic() + 10, before
        while np.abs(after - before).max() < 40:  # the card's colour follows the producer's prompt
            assert time.monotonic() < deadline, (before, after)
            time.sleep(0.2)
            after = bars_colour(next_frame(browser))
        tint = np.array(prompt_tint(SWITCHED_PROMPT))
        assert np.corrcoef(after, tint)[0, 1] > 0.9, (after, tint)
        browser.save_screenshot(str(tmp_path / "viewer.png"))
        assert severe_console_entries(browser) == []
        browser.execute_script("causalcast.stop()")
        wait_until(browser, "return !causalcast.state().running")
    finally:
        if viewer is not None:
            browser.close()
        browser.switch_to.window(producer)
        browser.execute_script("causalcast.stop()")
    with urllib.request.urlopen(f"{live.http_url}/streams") as r:
        assert all(s["session"] != sid for s in json.load(r)["streams"])  # the producer stopped: unlisted


def test_video_model_follows_a_prompt_typed_in_the_page(browser, live: LiveServer, tmp_path: Path) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    open_page(browser, live)
    browser.execute_script("causalcast.selectMode('video'); causalcast.setTransport('webrtc')")
    choose_model(browser, "video")
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys("a large red circle moving right on a black background")
    click(browser, "#start")
    try:
        ready = wait_until(browser, "return causalcast.state().last.ready")
        assert ready["model"] == "video" and ready["params"]["prompt"].startswith("a large red circle")
        time.sleep(1.5)
        before = next_frame(browser).reshape(-1, 3).astype(float).mean(axis=0)
        prompt.clear()
        prompt.send_keys("a large green circle moving down on a navy background" + Keys.ENTER)
        entry = wait_until(browser, "const t = causalcast.state().timeline; return t.length > 1 && t[t.length - 1]")
        assert entry["text"].startswith("a large green circle") and entry["frame"] > 0 and entry["switch"] == "recache"
        deadline, after = time.monotonic() + 10, before
        while not (after[2] > before[2] + 25 and after[1] > before[1] + 10):  # navy background, green circle
            assert time.monotonic() < deadline, (before, after)
            time.sleep(0.25)
            after = next_frame(browser).reshape(-1, 3).astype(float).mean(axis=0)
        browser.save_screenshot(str(tmp_path / "video-model.png"))
        assert severe_console_entries(browser) == []
    finally:
        browser.execute_script("causalcast.stop()")
        wait_until(browser, "return !causalcast.state().running")


@pytest.mark.parametrize("transport", ["webrtc", "ws"])
def test_avatar_face_speaks_an_uploaded_wav(browser, live: LiveServer, transport: str, tmp_path: Path) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By

    open_page(browser, live)
    browser.execute_script("causalcast.selectMode('avatar'); causalcast.setTransport(arguments[0])", transport)
    click(browser, "#use-mic")  # the avatar only listens to a silent user: no microphone
    click(browser, "#start")
    wait_until(browser, "return causalcast.state().last.ready")
    try:
        face = next_frame(browser)
        assert face.shape[:2] == (256, 256)
        assert face.std() > 20, "a blank frame"
        centre = face[64:192, 64:192].reshape(-1, 3).astype(float).mean(axis=0)
        corner = face[:24, :24].reshape(-1, 3).astype(float).mean(axis=0)
        assert np.abs(centre - corner).max() > 30, (centre, corner)  # a face on a background
        idle = []
        for _ in range(8):
            idle.append(mouth_openness(next_frame(browser)))
            time.sleep(0.1)

        browser.find_element(By.ID, "agent-audio").send_keys(str(AGENT_WAV))  # the page sends it as `say`
        queued_s = wait_until(  # in pieces of at most a second (a data-channel message), all of it
            browser,
            "const q = causalcast.state().notices.filter(n => n.type === 'speech_queued');"
            "const s = q.reduce((a, n) => a + n.seconds, 0); return s > 2.2 && s",
        )
        assert abs(queued_s - 2.24) < 0.05, queued_s
        wait_until(browser, "return causalcast.state().notices.some(n => n.type === 'state' && n.state === 'speaking')")
        assert "speaking" in browser.find_element(By.ID, "conv-state").text.lower()
        speaking, deadline = [], time.monotonic() + 2.5
        while time.monotonic() < deadline:
            speaking.append(mouth_openness(next_frame(browser)))
            if len(speaking) == 5:
                browser.save_screenshot(str(tmp_path / f"avatar-speaking-{transport}.png"))
            time.sleep(0.08)
        print(f"{transport}: mouth openness idle max {max(idle):.3f}, speaking max {max(speaking):.3f}")
        assert max(speaking) > max(0.02, 3 * max(idle)), (idle, speaking)  # bench/avatar.py: > 0.01 is open

        # Text needs a speech generator inside the avatar: said when it has one, explained when it has not.
        browser.find_element(By.ID, "say-text").send_keys("Hello there.")
        click(browser, "#avatar-say")
        if live.engine.generators["avatar"].text_speech is not None:
            wait_until(browser, "return causalcast.state().notices.some(n => n.type === 'text_queued')")
        else:
            wait_until(browser, "return document.getElementById('say-note').textContent.includes('cannot speak text')")
        assert severe_console_entries(browser) == []
    finally:
        browser.execute_script("causalcast.stop()")
        wait_until(browser, "return !causalcast.state().running")
