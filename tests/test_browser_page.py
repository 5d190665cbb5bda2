"""The page as a person uses it, in real headless Chromium against a real server with every shipped model.

One test per point of what a person stumbles on: the layout at phone and desktop widths (screenshots of
both, for docs/screens/ when CAUSALCAST_SCREENS names a folder), the Speak tab (first Speak starts, Enter
speaks, voices by name, Stop talking, wordless text explained, long text in pieces on both transports),
the Avatar tab (echo cancellation on unless the user has headphones, Enter says, Interrupt in plain
words, a portrait, a clean reset after Stop), the Video tab's prompt help (vocabulary chips, unknown
words, the default scene, the advanced switch strategy and seed), start/stop races (a cancelled start
leaves no session on the server and no error), the header when the server goes away and comes back, a
watch link that shows a late viewer the current prompt and its switches, and plain language (friendly
names, voice delay, microphone meter, clip countdown and length check, labels, tab keys, the URL).
Refused offers are logged with their reason.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from browser_helpers import launch, needs_chromium, open_page, severe_console_entries, wait_until
from conftest import LiveServer, make_server_config, run_live_server

from models.audio.dsp import write_wav

pytestmark = needs_chromium

MODELS = ("pitch", "vc", "tts", "avatar", "testcard", "video")
PHONE, DESKTOP = (390, 844), (1280, 900)


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    from streaming.engine.core import EngineConfig
    from streaming.session import SessionConfig

    # the page is under test, not capacity: a busy shared machine must not make admission refuse sessions
    engine = EngineConfig(session=SessionConfig(late_after_ms=600))
    with run_live_server(make_server_config(models=MODELS, engine=engine)) as running:
        yield running


@pytest.fixture(scope="module")
def browser(live: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    driver = launch(tmp_path_factory.mktemp("chromium-page"))
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser, live: LiveServer) -> Iterator:  # noqa: ANN001
    """The page freshly opened at desktop size; whatever a test started is stopped afterwards."""
    viewport(browser, *DESKTOP)
    browser.get_log("browser")  # what earlier tests left (e.g. a server that went away) is not this test's
    browser.get(live.http_url + "/")  # a clean URL: no tab or transport kept from the previous test
    open_page(browser, live)
    yield browser
    browser.execute_script("return causalcast.stop()")


def viewport(driver, width: int, height: int) -> None:  # noqa: ANN001
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})


def screenshot(driver, path: Path) -> None:  # noqa: ANN001
    """The whole page (not only the viewport) as a PNG."""
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    path.write_bytes(base64.b64decode(shot["data"]))


def screens_dir(tmp_path: Path) -> Path:
    folder = os.environ.get("CAUSALCAST_SCREENS")
    if not folder:
        return tmp_path
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(folder)


def js(driver, script: str, *args):  # noqa: ANN001, ANN201
    return driver.execute_script(script, *args)


def by_id(driver, element_id: str):  # noqa: ANN001, ANN201
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def text_of(driver, element_id: str) -> str:  # noqa: ANN001
    return js(driver, "return document.getElementById(arguments[0]).textContent", element_id)


def num_sessions(live: LiveServer) -> int:
    return len(live.engine.scheduler.sessions)


def wait_for(condition, timeout: float = 10.0, what: str = "") -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.1)


def tone(path: Path, seconds: float, rate: int = 16_000) -> Path:
    t = np.arange(int(rate * seconds)) / rate
    write_wav(path, 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2, rate)
    return path


# -- 1. phones -------------------------------------------------------------------------------------------
LAYOUT = """
const vw = window.innerWidth, out = {vw, scroll: document.documentElement.scrollWidth, off: []};
for (const e of document.querySelectorAll('header *, nav button, #panel button, #panel input, #panel select,'
    + ' #panel textarea, #panel video, #panel canvas, #stats')) {
  if (!e.offsetParent && e.tagName !== 'VIDEO') continue;
  const r = e.getBoundingClientRect();
  if (r.width && (r.left < -1 || r.right > vw + 1)) out.off.push(`${e.tagName}#${e.id} ${r.left}-${r.right}`);
}
const p = document.getElementById('panel').getBoundingClientRect();
const s = document.getElementById('stats').getBoundingClientRect();
out.stacked = s.top >= p.bottom - 1; out.beside = s.left >= p.right - 1;
out.header = document.querySelector('header').getBoundingClientRect().height;
return out;
"""


def test_layout_fits_phone_and_desktop(page, live: LiveServer, tmp_path: Path) -> None:  # noqa: ANN001
    """At 390x844 nothing scrolls sideways, every control is on screen, the stats sit under the panel."""
    out = screens_dir(tmp_path)
    for (width, height), name in ((PHONE, "phone"), (DESKTOP, "desktop")):
        viewport(page, width, height)
        for mode in ("voice", "speak", "avatar", "video"):
            js(page, "causalcast.selectMode(arguments[0])", mode)
            layout = js(page, LAYOUT)
            assert layout["scroll"] <= layout["vw"], (name, mode, layout)
            assert layout["off"] == [], (name, mode, layout)
            if name == "phone":
                assert layout["stacked"] and layout["header"] < 110, (mode, layout)
            else:
                assert layout["beside"] and layout["header"] < 70, (mode, layout)
            screenshot(page, out / f"page-{mode}-{name}.png")
    # streaming: the video fits the phone's width
    viewport(page, *PHONE)
    js(page, "causalcast.selectMode('video'); causalcast.selectModel('testcard'); causalcast.start()")
    wait_until(page, "const v = document.getElementById('remote-video');"
                     " return v.videoWidth > 0 && v.currentTime > 0.3")
    layout = js(page, LAYOUT)
    assert layout["scroll"] <= layout["vw"] and layout["off"] == [], layout
    wait_until(page, "return document.getElementById('stat-fps').textContent !== '–'")  # live numbers shown
    screenshot(page, out / "page-video-streaming-phone.png")
    viewport(page, *DESKTOP)
    screenshot(page, out / "page-video-streaming-desktop.png")
    assert severe_console_entries(page) == []


# -- 2. Speak --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", ["webrtc", "ws"])
def test_speak_tab_starts_on_first_speak_and_sends_long_text_in_pieces(page, live: LiveServer, transport: str,
                                                                       tmp_path: Path) -> None:  # noqa: ANN001
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    js(page, "causalcast.selectMode('speak'); causalcast.setTransport(arguments[0])", transport)
    voices = Select(by_id(page, "speak-voice"))
    labels = [o.text for o in voices.options]
    assert len(labels) > 10 and all(" · v0" in label for label in labels), labels  # readable, with the id
    assert sum(label.startswith(("Female", "Male")) for label in labels) > len(labels) // 2, labels
    # nothing to say: said, and no session starts
    by_id(page, "say").click()
    assert "type some text" in text_of(page, "speak-note")
    by_id(page, "text").send_keys("... !?")
    by_id(page, "say").click()
    assert "no words" in text_of(page, "speak-note")
    assert not js(page, "return causalcast.state().running")
    # a clip outside 3-10 s is refused on the page
    by_id(page, "speak-ref-file").send_keys(str(tone(tmp_path / "short.wav", 2.0)))
    wait_until(page, "return causalcast.state().errors.some(e => e.includes('3–10 s'))")
    # typed before any session, Enter speaks: the first Speak starts the session with the chosen voice
    voices.select_by_index(3)
    chosen = voices.first_selected_option.get_attribute("value")
    by_id(page, "text").clear()
    by_id(page, "text").send_keys("Hello there, this is the first thing I say." + Keys.ENTER)
    ready = wait_until(page, "return causalcast.state().last.ready")
    assert ready["params"]["voice"] == chosen
    wait_until(page, "return causalcast.state().notices.some(n => n.type === 'text_queued' && n.segments > 0)")
    assert js(page, "return document.getElementById('text').value").startswith("Hello")  # Enter added no line
    # Stop talking interrupts the speech
    wait_until(page, "return !document.getElementById('say-stop').disabled")
    by_id(page, "say-stop").click()
    wait_until(page, "return causalcast.state().notices.some(n => n.type === 'interrupted')")
    assert "Stopped talking" in text_of(page, "speak-note")
    # ~100 KB of text (a data-channel message holds 64 KiB): sent in pieces, queued whole, no error
    long_text = " ".join(f"Sentence number {i} is here." for i in range(3500))
    assert len(long_text) > 96_000
    js(page, "document.getElementById('text').value = arguments[0]", long_text)
    num_before = js(page, "return causalcast.state().notices.filter(n => n.type === 'text_queued').length")
    num_errors = len(js(page, "return causalcast.state().errors"))
    by_id(page, "text").send_keys(Keys.CONTROL, Keys.ENTER)
    pieces = -(-len(long_text) // 8000)
    wait_until(page, "return causalcast.state().notices.filter(n => n.type === 'text_queued').length"
                     f" >= {num_before + pieces}")
    assert len(js(page, "return causalcast.state().errors")) == num_errors
    by_id(page, "say-stop").click()
    # the user's own voice: a 4 s clip, used from the next Speak (a new session that takes it)
    first = js(page, "return causalcast.state().last.ready.session")
    by_id(page, "speak-ref-file").send_keys(str(tone(tmp_path / "mine.wav", 4.0)))
    wait_until(page, "return document.getElementById('speak-note').textContent.includes('next Speak')")
    assert voices.first_selected_option.get_attribute("value") == "__reference__"
    js(page, "document.getElementById('text').value = 'And now in my own voice.'")
    by_id(page, "say").click()
    ready = wait_until(page, f"const r = causalcast.state().last.ready; return r && r.session !== '{first}' && r")
    assert ready["params"]["voice"] == "reference"  # the uploaded clip, prepared off the loop
    wait_until(page, "return causalcast.state().notices.some(n => n.type === 'text_queued' && n.segments > 0)")
    assert len(js(page, "return causalcast.state().errors")) == num_errors
    assert severe_console_entries(page) == []


# -- 3. Avatar -------------------------------------------------------------------------------------------
def test_avatar_tab_echo_cancellation_say_interrupt_portrait_and_reset(page, live: LiveServer,
                                                                       tmp_path: Path) -> None:  # noqa: ANN001
    import av
    from selenium.webdriver.common.keys import Keys

    js(page, "causalcast.selectMode('avatar')")
    assert js(page, "return !document.getElementById('portrait-row').hidden")  # the model takes a portrait
    portrait = tmp_path / "portrait.png"
    image = np.full((300, 240, 3), 200, np.uint8)
    image[80:220, 60:180] = (180, 120, 90)
    with av.open(str(portrait), "w", format="image2") as out:
        stream = out.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = 240, 300, "rgb24"
        for packet in [*stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")), *stream.encode(None)]:
            out.mux(packet)
    by_id(page, "portrait-file").send_keys(str(portrait))
    wait_until(page, "return document.getElementById('portrait-note').textContent.includes('next Start')")
    # echo cancellation is on by default (the avatar's voice from a loudspeaker must not interrupt it)
    assert not by_id(page, "headphones").is_selected()
    by_id(page, "start").click()
    ready = wait_until(page, "return causalcast.state().last.ready")
    assert ready["params"]["portrait"].startswith("sha256:")
    assert js(page, "return causalcast.state().mic.echoCancellation") is True
    js(page, "return causalcast.stop()")
    by_id(page, "headphones").click()
    by_id(page, "start").click()
    wait_until(page, "return causalcast.state().last.ready")
    assert js(page, "return causalcast.state().mic.echoCancellation") is False
    js(page, "return causalcast.stop()")
    # without the microphone: Enter on the text starts the session and says it; Interrupt stops it, said plainly
    by_id(page, "use-mic").click()
    by_id(page, "say-text").send_keys("Hello there, I am the avatar and I talk for a while." + Keys.ENTER)
    wait_until(page, "return causalcast.state().phase === 'running' && causalcast.state().last.ready")
    wait_until(page, "return causalcast.grabFrame() !== null")
    wait_until(page, "return causalcast.state().notices.some(n => n.type === 'state' && n.state === 'speaking')")
    by_id(page, "avatar-interrupt").click()
    notice = wait_until(page, "return causalcast.state().notices.find(n => n.type === 'barge_in')")
    assert notice["reason"] == "interrupt"
    assert "the avatar stopped talking" in text_of(page, "say-note")
    wait_until(page, "return document.getElementById('stat-fps').textContent !== '–'")
    js(page, "return causalcast.stop()")
    # after Stop: no black box, no stale numbers, no old badge
    reset = js(page, "return {video: document.getElementById('remote-video').hidden,"
                     " canvas: document.getElementById('ws-canvas').hidden,"
                     " fps: document.getElementById('stat-fps').textContent,"
                     " kbps: document.getElementById('stat-kbps').textContent,"
                     " badge: document.getElementById('conv-state').textContent,"
                     " meter: document.querySelector('#audio-meter div').style.width}")
    assert reset == {"video": True, "canvas": True, "fps": "–", "kbps": "–", "badge": "–", "meter": "0%"}, reset
    assert severe_console_entries(page) == []


# -- 4. Video prompts ------------------------------------------------------------------------------------
def test_video_prompt_vocabulary_unknown_words_default_and_advanced(page, live: LiveServer) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    with urllib.request.urlopen(f"{live.http_url}/healthz") as r:
        vocabulary = next(m for m in json.load(r)["models"] if m["name"] == "video")["vocabulary"]
    js(page, "causalcast.selectMode('video'); causalcast.selectModel('video')")
    chips = [c.text for c in page.find_elements(By.CSS_SELECTOR, "#chips button")]
    assert chips == [w for words in vocabulary.values() for w in words]
    prompt = by_id(page, "prompt")
    prompt.clear()
    prompt.send_keys("a large dragon")
    assert "dragon" in text_of(page, "prompt-note") and "ignored" in text_of(page, "prompt-note")
    page.find_element(By.CSS_SELECTOR, "#chips button[data-word='red']").click()
    page.find_element(By.CSS_SELECTOR, "#chips button[data-word='small']").click()  # replaces "large"
    assert prompt.get_attribute("value") == "a small dragon red"
    prompt.send_keys(Keys.CONTROL, "a")
    prompt.send_keys(Keys.DELETE)  # as a person empties it (selenium's clear() fires no input event)
    assert "default scene" in text_of(page, "prompt-note")
    # the advanced fold: switch strategy and seed go with the start
    page.find_element(By.CSS_SELECTOR, "#advanced summary").click()
    Select(by_id(page, "switch-strategy")).select_by_value("clear")
    by_id(page, "seed").clear()
    by_id(page, "seed").send_keys("7")
    by_id(page, "start").click()
    ready = wait_until(page, "return causalcast.state().last.ready")
    assert ready["params"]["switch"] == "clear" and ready["params"]["seed"] == 7 and ready["params"]["prompt"]
    assert "default scene" in js(page, "return causalcast.state().message")
    wait_until(page, "return causalcast.state().phase === 'running'")
    prompt.send_keys("a large blue square moving up on a navy background with a dragon" + Keys.ENTER)
    entry = wait_until(page, "return causalcast.state().timeline.find(e => e.text.includes('dragon'))")
    assert entry["switch"] == "clear"
    note = text_of(page, "prompt-note")
    assert "ignored" in note and "“dragon”" in note and "“blue”" not in note, note
    assert severe_console_entries(page) == []


# -- 5. start/stop races ---------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", ["webrtc", "ws"])
def test_start_is_cancellable_and_never_doubled(page, live: LiveServer, transport: str) -> None:  # noqa: ANN001
    js(page, "causalcast.selectMode('video'); causalcast.selectModel('testcard');"
             " causalcast.setTransport(arguments[0])", transport)
    # two starts in one tick: one session
    js(page, "causalcast.start(); causalcast.start()")
    wait_until(page, "return causalcast.state().phase === 'running'")
    time.sleep(0.5)
    assert num_sessions(live) == 1
    js(page, "return causalcast.stop()")
    wait_for(lambda: num_sessions(live) == 0, 3.0, "the session ends on Stop")
    # Stop while the start is in flight: no error for the user, no session left on the server
    for delay_ms in (0, 100, 300, 600):
        js(page, "causalcast.start(); setTimeout(() => causalcast.stop(), arguments[0])", delay_ms)
        wait_until(page, "return causalcast.state().phase === 'idle'")
        time.sleep(1.0)  # an error from the cancelled start would have shown by now
        state = js(page, "return causalcast.state()")
        assert state["errors"] == [] and "Could not start" not in state["message"], (delay_ms, state["message"])
        wait_for(lambda: num_sessions(live) == 0, 3.0, f"no orphan session after a stop at {delay_ms} ms")
    if transport == "webrtc":  # Stop exactly while the offer is with the server: the page tells it to drop it
        js(page, "const post = window.fetch; window.fetch = (url, options) => { const reply = post(url, options);"
                 " if (url === '/offer') { window.fetch = post; causalcast.stop(); } return reply; };"
                 " causalcast.start()")
        wait_until(page, "return causalcast.state().phase === 'idle'")
        wait_for(lambda: num_sessions(live) == 0, 3.0, "no orphan session after a stop during the offer")
        time.sleep(0.5)
        assert js(page, "return causalcast.state().errors") == []
    # the cancelled offer's own answer (409) is the only failed request
    cancelled = lambda e: "/offer - " in e["message"] and "(Conflict)" in e["message"]  # noqa: E731
    assert [e for e in severe_console_entries(page) if not cancelled(e)] == []


# -- 6. after stop and when the server goes away ---------------------------------------------------------
def test_server_unreachable_is_said_with_backoff_and_clears(browser) -> None:  # noqa: ANN001
    config = make_server_config(models=("testcard",))
    with run_live_server(config) as server:
        port = server.port
        open_page(browser, server)
        assert text_of(browser, "server-status").startswith("server ok")
    for _ in range(4):  # the server is gone: each poll fails and the next waits twice as long
        js(browser, "return causalcast.pollHealth()")
    health = js(browser, "return causalcast.state().health")
    assert health["reachable"] is False and health["failures"] == 4 and health["delayMs"] == 8000, health
    status = text_of(browser, "server-status")
    assert status.startswith("server unreachable") and "server ok" not in status
    assert "Cannot reach the server" in js(browser, "return causalcast.state().message")
    with run_live_server(config, port=port):  # back, at the same address
        wait_for(lambda: js(browser, "return causalcast.pollHealth().then(h => Boolean(h))"), 10.0, "server back")
        assert text_of(browser, "server-status").startswith("server ok")
        assert js(browser, "return causalcast.state().message") == ""  # the old error is gone
        assert js(browser, "return causalcast.state().health.delayMs") == 5000


# -- 7. watching ------------------------------------------------------------------------------------------
def test_watch_link_shows_current_prompt_and_timeline(page, live: LiveServer) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    js(page, "causalcast.selectMode('video'); causalcast.selectModel('testcard')")
    prompt = by_id(page, "prompt")
    prompt.clear()
    prompt.send_keys("a calm sea at dawn")
    by_id(page, "share").click()
    by_id(page, "start").click()
    sid = wait_until(page, "const r = causalcast.state().last.ready; return r && r.session")
    wait_until(page, "return causalcast.state().timeline.length === 1")
    prompt.clear()
    prompt.send_keys("a green field" + Keys.ENTER)  # switched before anyone watches
    wait_until(page, "return causalcast.state().timeline.length === 2")
    link = wait_until(page, "const a = document.getElementById('watch-link'); return a && a.href")
    assert f"watch={sid}" in link
    producer = page.current_window_handle
    page.switch_to.new_window("window")
    try:
        page.get(link)
        open_page_at(page)
        wait_until(page, f"return causalcast.state().watching === '{sid}' && causalcast.state().phase === 'running'")
        texts = wait_until(page, "const t = causalcast.state().timeline.map(e => e.text); return t.length >= 2 && t")
        assert texts[-2:] == ["a calm sea at dawn", "a green field"], texts
        assert text_of(page, "current-prompt") == "a green field"
        hidden = js(page, "return ['prompt-row', 'share-row', 'advanced']"
                          ".map(id => document.getElementById(id).hidden)")
        assert hidden == [True, True, True] and js(page, "return !document.getElementById('watch-info').hidden")
        # the list of shared streams names them by what they show
        js(page, "return causalcast.stop()")
        assert "watch=" not in page.current_url
        js(page, "return causalcast.refreshStreams()")
        item = page.find_element(By.CSS_SELECTOR, f'#streams li[data-session="{sid}"]').text
        assert "a green field" in item and "Test card" in item, item
    finally:
        page.close()
        page.switch_to.window(producer)


def open_page_at(driver) -> None:  # noqa: ANN001
    driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "(function wait() { window.causalcast && window.causalcast.ready ? window.causalcast.ready.then(() => done())"
        " : setTimeout(wait, 50); })();"
    )


# -- 8. plain language -----------------------------------------------------------------------------------
def test_plain_language_labels_tabs_url_meter_and_delay(page, live: LiveServer) -> None:  # noqa: ANN001
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    models = [o.text for o in Select(by_id(page, "model")).options]
    assert models[:2] == ["Voice changer", "Pitch shifter (simple test)"]
    labels = [o.text for o in Select(by_id(page, "voice")).options]
    assert all(("Female" in label or "Male" in label) and "Hz" in label for label in labels), labels
    unlabelled = js(page, "return [...document.querySelectorAll('input, select, textarea')]"
                          ".filter(e => !e.labels.length && !e.getAttribute('aria-label')).map(e => e.id)")
    assert unlabelled == []
    # tabs: a tab panel, arrow keys, and the tab and transport survive a reload
    assert js(page, "return document.getElementById('panel').getAttribute('role')") == "tabpanel"
    assert js(page, "return [...document.querySelectorAll('[role=tab]')]"
                    ".every(t => t.getAttribute('aria-controls') === 'panel')")
    by_id(page, "tab-voice").send_keys(Keys.ARROW_RIGHT)
    assert js(page, "return [causalcast.state().mode, document.activeElement.id]") == ["speak", "tab-speak"]
    by_id(page, "tab-speak").send_keys(Keys.ARROW_LEFT, Keys.ARROW_LEFT)
    assert js(page, "return causalcast.state().mode") == "video"
    Select(by_id(page, "transport")).select_by_value("ws")
    page.refresh()
    open_page_at(page)
    assert js(page, "return [causalcast.state().mode, causalcast.state().transport]") == ["video", "ws"]
    assert "tab=video" in page.current_url and "transport=ws" in page.current_url
    # the voice delay a person hears (from the server's chunk stats), and the microphone's level
    js(page, "causalcast.selectMode('voice'); causalcast.selectModel('pitch'); causalcast.start()")
    delay = wait_until(page, "const t = document.getElementById('stat-delay').textContent;"
                             " return t.includes('mouth to ear') && t")
    assert 20 <= int(delay.split()[1]) < 1000, delay
    assert text_of(page, "stat-delay-label") == "Voice delay"
    wait_until(page, "return Number(document.getElementById('mic-meter-box').getAttribute('aria-valuenow')) > 10")
    js(page, "return causalcast.stop()")
    # recording a clip counts down
    js(page, "causalcast.selectModel('vc')")
    by_id(page, "ref-record").click()
    wait_until(page, "return /Recording… [1-6] s left/.test(document.getElementById('ref-record').textContent)", 5)
    wait_until(page, "return document.getElementById('ref-note').textContent.startsWith('recording:')", 15)
    assert text_of(page, "ref-record") == "Record 6 s"
    assert js(page, "return document.getElementById('voice').value") == "__reference__"
    assert severe_console_entries(page) == []


def test_refused_offers_are_logged_with_their_reason(live: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    body = json.dumps({"type": "offer", "sdp": "v=0\r\n", "model": "no-such-model"}).encode()
    request = urllib.request.Request(f"{live.http_url}/offer", data=body, headers={"Content-Type": "application/json"})
    with caplog.at_level(logging.WARNING), pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 400
    wait_for(lambda: any("refused" in r.getMessage() for r in caplog.records), 2.0, "the refusal is logged")
    (record,) = [r for r in caplog.records if "refused" in r.getMessage()]
    assert "HTTP 400" in record.getMessage() and "no-such-model" in record.getMessage()
