"""The `serve` page in a real browser: Debian's headless Chromium, driven by Selenium, against a server on loopback
that asks for a password.

`make test` installs chromium and chromium-driver when they are missing; these tests fail, never
skip, when the browser cannot start. With CNCLIP_SCREENSHOT=path the first also saves the
screenshot the README shows.
"""

from __future__ import annotations

import os
import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from converters.search.auth import Password
from converters.search.serve import Library, Security, create_app
from tests.search.conftest import index, live

pytestmark = pytest.mark.browser
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Chromium's own calls home are refused by this network; these flags keep it from making them.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,1000")
PASSWORD = "our family photos"
ON_TINY_VIT = pytest.mark.parametrize("tiny_bundle", ["tiny-vit"], indirect=True)


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


def serving(index_dir):
    return live(create_app(Library.open(index_dir, None, 1), Security(Password.of(PASSWORD))))


def hits(driver) -> list:
    return driver.find_elements(By.CSS_SELECTOR, "figure.hit")


def summary(driver) -> str:
    return driver.find_element(By.ID, "summary").text


def wait_for(driver, condition, what: str):
    return WebDriverWait(driver, 30).until(lambda d: condition(d), message=what)


def sign_in(driver, base: str) -> None:
    driver.get(base + "/")
    wait_for(driver, lambda d: d.find_elements(By.ID, "password"), "the sign-in page first")
    driver.find_element(By.ID, "password").send_keys("wrong password")
    driver.find_element(By.ID, "sign-in").click()
    wait_for(driver, lambda d: d.find_elements(By.ID, "login-error"), "a wrong password said so")
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "sign-in").click()
    wait_for(driver, lambda d: d.find_elements(By.ID, "q"), "the search page after signing in")


@ON_TINY_VIT
def test_search_more_like_this_and_a_date_filter_in_chromium(library, browser, tmp_path):
    photos, index_dir, _ = library
    with serving(index_dir) as base:
        sign_in(browser, base)
        wait_for(browser, lambda d: "random weights" in d.find_element(By.ID, "notice").text, "the random-weights warning")
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
        wait_for(browser, lambda d: summary(d).startswith("like "), "a 'more like this' search")
        shown = [hit.find_element(By.TAG_NAME, "img").get_attribute("title") for hit in hits(browser)]
        assert len(shown) == 14 and chosen not in shown  # the others, not the photo itself

        browser.execute_script(
            "const until = document.getElementById('until'); until.value = '2020-12-31';"
            "until.dispatchEvent(new Event('change'));"
        )
        wait_for(browser, lambda d: len(hits(d)) == 1, "one photo up to 2020")
        assert hits(browser)[0].find_element(By.TAG_NAME, "img").get_attribute("title").endswith("grass.jpg")
        assert "– 2020-12-31)" in summary(browser) and "2021-01-01" not in summary(browser)

        browser.find_element(By.ID, "file").send_keys(str(photos / "grass.jpg"))
        wait_for(browser, lambda d: summary(d).startswith("image: grass.jpg"), "an image search")
        assert hits(browser)[0].find_element(By.TAG_NAME, "img").get_attribute("title").endswith("grass.jpg")


@ON_TINY_VIT
def test_the_page_says_what_went_wrong(library, browser):
    _, index_dir, _ = library
    with serving(index_dir) as base:
        sign_in(browser, base)
        busy = browser.execute_script(
            "run({text: '猫'}); return [document.body.classList.contains('busy'), summary.textContent];")
        assert busy[0] and "searching" in busy[1]  # shown at once, before any answer
        wait_for(browser, lambda d: len(hits(d)) == 15, "the search's answer")
        browser.execute_script("run({text: '😀'})")
        wait_for(browser, lambda d: "😀" in summary(d) and d.find_elements(By.CSS_SELECTOR, "#summary .error"),
                 "the server's error, naming the text")
        assert not hits(browser)
        browser.execute_script("run({similar: 999999})")  # a 404 whose body is JSON
        wait_for(browser, lambda d: "No photo 999999" in summary(d), "a 404 said as a sentence")
        message = browser.execute_async_script(
            "const done = arguments[0]; ask('/thumb/999999').then(() => done('no error'), error => done(error.message));")
        assert message == "The server answered 404 Not Found."  # an empty, non-JSON error body
    browser.execute_script("run({text: '猫'})")  # the server has stopped
    wait_for(browser, lambda d: "Cannot reach the server" in summary(d), "an unreachable server said so")
    browser.get("about:blank")


@ON_TINY_VIT
def test_the_status_page_says_when_the_server_is_gone_and_an_empty_index_says_what_to_do(tiny_bundle, browser, tmp_path):
    (tmp_path / "empty").mkdir()
    index(tmp_path / "empty", tmp_path / "index", tiny_bundle)
    with serving(tmp_path / "index") as base:
        sign_in(browser, base)
        wait_for(browser, lambda d: "holds no photos yet" in d.find_element(By.ID, "notice").text, "the empty-index hint")
        assert "index PHOTOS --index" in browser.find_element(By.ID, "notice").text
        browser.get(base + "/status")
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#facts tr"), "the status table")
    browser.execute_script("document.getElementById('facts').textContent = '';"
                           "ask('/api/status').catch(error => line(document.getElementById('status-error'), error.message, true));")
    wait_for(browser, lambda d: "Cannot reach the server" in d.find_element(By.ID, "status-error").text,
             "the status page's error instead of a blank page")
