"""Round trips through the web page in headless Chromium (its synthetic microphone and WebAudio clock)."""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
import time

import numpy as np

from streaming.media.markers import marker_times, match_markers

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def chromium_available() -> bool:
    return bool(shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER))


def chromium_round_trip(base_url: str, transport: str, num_markers: int, period_s: float) -> tuple[list[float], int]:
    """The page's synthetic microphone (markers) and what comes back, recorded on one AudioContext clock."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="g2g-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--autoplay-policy=no-user-gesture-required",
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
    ):  # fmt: skip
        options.add_argument(arg)
    os.environ.setdefault("SE_OFFLINE", "true")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    seconds = num_markers * period_s
    try:
        driver.set_script_timeout(seconds + 60)
        driver.get(base_url + "/")
        driver.execute_async_script("causalcast.ready.then(arguments[arguments.length - 1])")
        driver.execute_script(
            "causalcast.useMarkers(arguments[0], arguments[1]); causalcast.selectMode('voice');"
            "document.getElementById('voice').value = '0'; causalcast.setTransport(arguments[2]); causalcast.start();",
            num_markers + 20,
            period_s,
            transport,
        )
        deadline = time.monotonic() + 30
        while not driver.execute_script("return Boolean(causalcast.state().last.ready)"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"page did not start: {driver.execute_script('return causalcast.state()')}")
            time.sleep(0.1)
        time.sleep(1.0)
        result = driver.execute_async_script(
            "causalcast.record(arguments[0]).then(arguments[arguments.length - 1])", seconds
        )
        driver.execute_script("causalcast.stop()")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    rate = result["rate"]
    decode = lambda b: np.frombuffer(base64.b64decode(b), "<i2").astype(np.float32) / 32768  # noqa: E731
    sent, back = decode(result["input"]), decode(result["output"])
    sent_times = marker_times([(0.0, sent)], rate)
    return match_markers(sent_times, marker_times([(0.0, back)], rate)), len(sent_times)
