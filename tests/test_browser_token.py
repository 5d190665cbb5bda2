"""The page on a server that needs tokens (headless Chromium): the token from the page's URL, or set by hook."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from browser_helpers import launch, needs_chromium, wait_until
from conftest import make_server_config, run_live_server

from streaming.auth import AccessConfig, mint_token

pytestmark = needs_chromium

SECRET = b"browser-test-secret-0123456789"


@pytest.fixture(scope="module")
def secured() -> Iterator:
    config = make_server_config(models=("pitch", "testcard"), access=AccessConfig(secret=SECRET))
    with run_live_server(config) as running:
        yield running


def _wait_ready(driver) -> None:  # noqa: ANN001
    driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "(function wait() { window.causalcast && window.causalcast.ready ? window.causalcast.ready.then(() => done())"
        " : setTimeout(wait, 50); })();"
    )


@pytest.mark.parametrize("transport", ["ws", "webrtc"])
def test_the_page_uses_the_token_in_its_url(secured, transport: str, tmp_path) -> None:
    driver = launch(tmp_path)
    try:
        token = mint_token(SECRET, ttl_s=300, models=["testcard"], watch=True)
        driver.get(f"{secured.http_url}/?token={token}")
        _wait_ready(driver)
        status = driver.execute_script("return document.getElementById('server-status').textContent")
        assert "2 models ready" in status  # /healthz detail reached with the token
        driver.execute_script(
            "causalcast.selectMode('video'); causalcast.setTransport(arguments[0]); causalcast.start()", transport
        )
        wait_until(driver, "return causalcast.state().last.ready")
        driver.execute_script("causalcast.stop()")
    finally:
        driver.quit()


def test_without_a_token_the_page_says_so_and_the_hook_sets_one(secured, tmp_path) -> None:
    driver = launch(tmp_path)
    try:
        driver.get(f"{secured.http_url}/")
        _wait_ready(driver)
        message = driver.execute_script("return causalcast.state().message")
        assert "needs a token" in message and "?token=" in message
        token = mint_token(SECRET, ttl_s=300, models=["testcard"])
        driver.execute_async_script(
            "const done = arguments[arguments.length - 1]; causalcast.setToken(arguments[0]).then(() => done())", token
        )
        driver.execute_script("causalcast.selectMode('video'); causalcast.setTransport('ws'); causalcast.start()")
        wait_until(driver, "return causalcast.state().last.ready")
        driver.execute_script("causalcast.stop()")
    finally:
        driver.quit()
