"""Driving the page in real headless Chromium (Debian's chromium + chromium-driver) with selenium.

Shared by the browser tests: launching Chromium with the flags that keep WebRTC on 127.0.0.1 and a WAV
file as the microphone, waiting for the page, reading its state and what it recorded or shows.
"""

from __future__ import annotations

import base64
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import RunningServer

from models.audio.dsp import write_wav

CHROMIUM = os.environ.get("CAUSALCAST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CAUSALCAST_CHROMEDRIVER", "/usr/bin/chromedriver")

needs_chromium = pytest.mark.skipif(
    not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)),
    reason=f"needs {CHROMIUM} and {CHROMEDRIVER} (Debian packages chromium, chromium-driver; `make browser`)",
)


def write_tone_wav(path: Path, freq_hz: float = 440.0, seconds: float = 10.0, rate: int = 48_000) -> Path:
    t = np.arange(int(rate * seconds)) / rate
    write_wav(path, 0.3 * np.sin(2 * np.pi * freq_hz * t), rate)
    return path


def launch(tmp: Path, *, fake_ui: bool = True, block_mic: bool = False, mic_wav: Path | None = None):  # noqa: ANN201
    """Headless Chromium on the page's terms: WebRTC over 127.0.0.1, a WAV (default: a 440 Hz tone) as the mic.

    Windows other than the focused one are not throttled (a test may drive a producer and a viewer page).
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp / 'profile'}",
        "--window-size=1200,900",
        "--autoplay-policy=no-user-gesture-required",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic_wav or write_tone_wav(tmp / 'mic.wav')}",
        "--allow-loopback-in-peer-connection",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
        "--disable-background-timer-throttling",
        "--disable-renderer-backgrounding",
        "--disable-backgrounding-occluded-windows",
    ):
        options.add_argument(arg)
    if fake_ui:
        options.add_argument("--use-fake-ui-for-media-stream")
    if block_mic:
        options.add_experimental_option("prefs", {"profile.default_content_setting_values.media_stream_mic": 2})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager must not look for drivers online
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


def open_page(driver, server: RunningServer) -> None:  # noqa: ANN001
    driver.get(server.http_url + "/")
    # The page's module graph may still be loading when `get` returns on a busy machine: wait for its hooks.
    driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "(function wait() { window.causalcast && window.causalcast.ready ? window.causalcast.ready.then(() => done())"
        " : setTimeout(wait, 50); })();"
    )


def wait_until(driver, script: str, timeout: float = 20.0):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(
        f"timed out waiting for: {script}\nstate: {driver.execute_script('return causalcast.state()')}"
    )


def record(driver, seconds: float) -> tuple[int, np.ndarray, np.ndarray]:  # noqa: ANN001
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "causalcast.record(arguments[0]).then(done, (e) => done({error: String(e)}));",
        seconds,
    )
    assert "error" not in result, result
    decode = lambda b: np.frombuffer(base64.b64decode(b), "<i2").astype(np.float32) / 32768  # noqa: E731
    return result["rate"], decode(result["input"]), decode(result["output"])


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


def severe_console_entries(driver) -> list[dict]:  # noqa: ANN001
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def grab_frame(driver) -> np.ndarray | None:  # noqa: ANN001
    """The video frame the page shows now, as (H, W, 3) uint8 RGB (None before the first frame)."""
    image = driver.execute_script("return causalcast.grabFrame()")
    if image is None:
        return None
    rgba = np.frombuffer(base64.b64decode(image["rgba"]), np.uint8).reshape(image["height"], image["width"], 4)
    return rgba[..., :3]
