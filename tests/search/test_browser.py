"""The `serve` page in a real browser: Debian's headless Chromium, driven by Selenium, against a server on loopback.

`make test` installs chromium and chromium-driver when they are missing; this
test fails, never skips, when the browser cannot start. With
CNCLIP_SCREENSHOT=path it also saves the screenshot the README shows.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time

import pytest
import uvicorn
from click.testing import CliRunner
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from converters.cli import cli
from converters.data import PARITY_SET_DIR
from converters.search.serve import Library, create_app

pytestmark = pytest.mark.browser
PHOTOS = PARITY_SET_DIR / "images"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Chromium's own calls home are refused by this network; these flags keep it from making them.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,1000")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server(tiny_bundle, tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(PHOTOS, photos)
    os.utime(photos / "grass.jpg", (1_600_000_000, 1_600_000_000))  # the only photo before 2021
    result = CliRunner().invoke(cli, ["index", str(photos), "--artifacts", str(tiny_bundle), "--index", str(tmp_path / "index")])
    assert result.exit_code == 0, result.output
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(Library.open(tmp_path / "index", None, 1)), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the server did not start"
    yield f"http://127.0.0.1:{port}", photos
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser(tmp_path):
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for drivers on the internet
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def hits(driver) -> list:
    return driver.find_elements(By.CSS_SELECTOR, "figure.hit")


def wait_for(driver, condition, what: str):
    return WebDriverWait(driver, 30).until(lambda d: condition(d), message=what)


@pytest.mark.parametrize("tiny_bundle", ["tiny-vit"], indirect=True)
def test_search_more_like_this_and_a_date_filter_in_chromium(server, browser, tmp_path):
    base, photos = server
    browser.get(base + "/")
    browser.find_element(By.ID, "q").send_keys("海边的日落")
    browser.find_element(By.ID, "go").click()
    wait_for(browser, lambda d: len(hits(d)) == 15, "15 thumbnails after a text search")
    wait_for(browser, lambda d: d.execute_script(
        "return [...document.querySelectorAll('figure.hit img')].every(img => img.complete && img.naturalWidth > 0)"
    ), "every thumbnail loaded")
    screenshot = tmp_path / "serve.png"
    browser.save_screenshot(str(screenshot))
    if os.environ.get("CNCLIP_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["CNCLIP_SCREENSHOT"])

    third = hits(browser)[2]
    chosen = third.find_element(By.TAG_NAME, "img").get_attribute("title")
    third.find_element(By.CLASS_NAME, "similar").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "summary").text.startswith("like "), "a 'more like this' search")
    assert hits(browser)[0].find_element(By.TAG_NAME, "img").get_attribute("title") == chosen

    browser.execute_script(
        "const until = document.getElementById('until'); until.value = '2020-12-31';"
        "until.dispatchEvent(new Event('change'));"
    )
    wait_for(browser, lambda d: len(hits(d)) == 1, "one photo up to 2020")
    assert hits(browser)[0].find_element(By.TAG_NAME, "img").get_attribute("title").endswith("grass.jpg")

    browser.find_element(By.ID, "file").send_keys(str(photos / "grass.jpg"))
    wait_for(browser, lambda d: d.find_element(By.ID, "summary").text.startswith("image: grass.jpg"), "an image search")
    assert hits(browser)[0].find_element(By.TAG_NAME, "img").get_attribute("title").endswith("grass.jpg")
