"""The chat page in a real browser: Debian's Chromium, headless, driven by selenium
through Debian's chromedriver (no browser download). Two browsers on two gateways;
when a gateway restarts, the page reconnects by itself, says so, and gets the
message it missed meanwhile, once. A failing test
leaves each browser's screenshot in reports/screenshots/."""

from __future__ import annotations

import os
import re
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.harness import ROOT, wait_for
from tests.integration.test_cli import alive, cluster_run, ports_of

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")
SHOTS = ROOT / "reports" / "screenshots"

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                       reason="chromium and chromium-driver are not installed "
                              "(make test installs them)"),
    pytest.mark.timeout(120),
]


@contextmanager
def browser(name: str, request: pytest.FixtureRequest, *flags: str) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--disable-gpu", "--window-size=1000,800", *flags):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(DRIVER)), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    except BaseException:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{request.node.name}-{name}.png"
        driver.save_screenshot(str(path))
        print(f"screenshot of {name}'s browser: {path}")
        raise
    finally:
        driver.quit()


def text(driver: Any, element: str) -> str:
    from selenium.webdriver.common.by import By
    return str(driver.find_element(By.ID, element).text)


def join(driver: Any, url: str, name: str) -> None:
    from selenium.webdriver.common.by import By
    driver.get(url)
    field = driver.find_element(By.ID, "name")
    field.clear()
    field.send_keys(name)
    driver.find_element(By.ID, "join").click()


def say(driver: Any, message: str) -> None:
    from selenium.webdriver.common.by import By
    box = driver.find_element(By.ID, "msg")
    box.send_keys(message)
    driver.find_element(By.CSS_SELECTOR, "#f button").click()


@pytest.mark.slow
def test_chat_across_gateways_and_reconnect_after_a_gateway_restart(
        request: pytest.FixtureRequest) -> None:
    with cluster_run("--gateways", "2", "--workers", "2", handler="examples.chat:app") as run, \
            browser("alice", request) as alice, browser("bob", request) as bob:
        first, second = (f"http://127.0.0.1:{port}/" for port in ports_of(run.banner))
        join(alice, first, "alice")
        join(bob, second, "bob")
        wait_for(lambda: text(alice, "who") == "2 here: alice, bob" and
                 text(bob, "who") == "2 here: alice, bob", 15, "both in the presence list")
        say(alice, "hello from gateway one")
        wait_for(lambda: "alice: hello from gateway one" in text(bob, "log"), 10,
                 "alice's message at bob's, through the other gateway")
        say(bob, "and back")
        wait_for(lambda: "bob: and back" in text(alice, "log"), 10, "bob's answer")

        # The first gateway dies; the supervisor starts it again on the same port.
        gateway = run.pids("gateway-1")[-1]
        os.kill(gateway, signal.SIGKILL)
        wait_for(lambda: not alive(gateway), 10, "the gateway gone")
        wait_for(lambda: "reconnecting" in text(alice, "status") or
                 "reconnecting" in text(alice, "log"), 10, "alice's page noticing")
        assert "(closed 1006; reconnecting)" in text(alice, "log")
        say(bob, "while you were away")  # alice must get it when she is back
        wait_for(lambda: len(run.pids("gateway-1")) == 2, 20, "the gateway restarted")
        wait_for(lambda: text(alice, "status") == "connected", 30,
                 "alice's page reconnecting by itself")
        assert re.search(r"\(reconnected after \d+ attempts\)", text(alice, "log"))
        wait_for(lambda: "(back: what was missed follows)" in text(alice, "log"), 10,
                 "alice's recovery")
        assert text(alice, "log").count("bob: while you were away") == 1
        wait_for(lambda: text(alice, "who") == "2 here: alice, bob", 15, "presence again")
        say(alice, "back again")
        wait_for(lambda: "alice: back again" in text(bob, "log"), 10,
                 "a message after the reconnect")
        assert text(bob, "status") == "connected"  # the other gateway never dropped bob


def test_an_event_source_page_misses_nothing_across_a_gateway_restart(
        request: pytest.FixtureRequest) -> None:
    """docs/clients.md's EventSource page on gateway 1; messages published through
    gateway 2 before, while and after gateway 1 is killed and restarted: the browser
    reconnects by itself with Last-Event-ID and shows every one once, in order."""
    import json
    import urllib.request

    def publish(port: int, first: int, count: int) -> None:
        urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{port}/publish?group=room:page&first={first}&count={count}",
            method="POST", data=b""), timeout=10).read()

    def seen(driver: Any) -> list[int]:
        return json.loads(driver.execute_script("return JSON.stringify(window.seen)"))

    with cluster_run("--gateways", "2", "--workers", "2",
                     handler="tests.apps.clients_app:app") as run, \
            browser("reader", request) as reader:
        first, second = ports_of(run.banner)
        reader.get(f"http://127.0.0.1:{first}/sse-page")
        wait_for(lambda: text(reader, "state") == "open", 15, "the stream open")
        # Open means joined: the gateway holds a stream's head until its group is in
        # place at every worker.
        publish(second, 1, 10)
        wait_for(lambda: len(seen(reader)) == 10, 15, "the first ten")
        gateway = run.pids("gateway-1")[-1]
        os.kill(gateway, signal.SIGKILL)
        wait_for(lambda: not alive(gateway), 10, "the gateway gone")
        publish(second, 11, 20)  # while the page has no connection
        wait_for(lambda: len(run.pids("gateway-1")) == 2, 20, "the gateway restarted")
        wait_for(lambda: len(seen(reader)) >= 30, 30, "the page catching up by itself")
        publish(second, 31, 10)
        wait_for(lambda: len(seen(reader)) >= 40, 15, "live again")
        offsets = json.loads(reader.execute_script("return JSON.stringify(window.offsets)"))
        assert offsets == list(range(1, 41))  # each once, in order, none missing
        assert sorted(seen(reader)) == list(range(1, 41))  # every one published
        assert text(reader, "state") == "open"
