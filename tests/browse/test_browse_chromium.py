"""``fashionblip2 browse`` for real: the command serves a small hand-made run on a free port (uvicorn in
a subprocess, stopped by its PID) and Debian's Chromium drives the page through selenium. Skipped
with the reason where Chromium or selenium is missing; failed instead under CI=true.

Screenshots go to ``test-artefacts/browse/`` in the repository (or $BROWSE_ARTEFACTS); the test
prints the folder.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from tests.browse.test_browse_api import HOSTILE, MODEL_A, MODEL_B, make_run
from tests.conftest import REPO
from tests.quality.test_quality import chromium_driver

ARTEFACTS = Path(os.environ.get("BROWSE_ARTEFACTS", REPO / "test-artefacts" / "browse"))
WAIT_S = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The browse command on a free port, over a hand-made run; stopped by its PID at the end."""
    root = tmp_path_factory.mktemp("browse_ui")
    run = make_run(root)
    port = free_port()
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fashionblip2.cli",
            "browse",
            "--run",
            str(run),
            "--port",
            str(port),
            "--device",
            "cpu",
            "--threads",
            "1",
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/meta", timeout=2) as response:
                    json.load(response)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the server did not start:\n{(root / 'server.log').read_text()}") from None
                time.sleep(0.3)
        yield {"url": url, "root": root, "run": run}
    finally:
        proc.terminate()  # this one process, by its PID
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser(server):
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowse screenshots: {ARTEFACTS}")
    driver = chromium_driver(server["root"] / "downloads", server["root"] / "profile")
    driver.set_window_size(1400, 1000)
    try:
        yield driver
    finally:
        driver.quit()


def wait(browser, condition, what: str, timeout: float = WAIT_S):
    """Poll ``condition(browser)`` until it is truthy; fail with ``what`` and the page's status line."""
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(browser, timeout, poll_frequency=0.1).until(condition)
    except Exception as e:
        from selenium.webdriver.common.by import By

        shown = browser.find_elements(By.ID, "status")
        raise AssertionError(f"waited {timeout} s for {what}; status: {shown[0].text if shown else '?'}") from e


def shot(browser, name: str) -> None:
    browser.save_screenshot(str(ARTEFACTS / f"{name}.png"))


def cards(browser):
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, "#triplets .triplet")


def test_the_page_loads_and_shows_markup_as_text(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server["url"] + "/")
    wait(browser, lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1", "the page")
    assert browser.find_element(By.ID, "t-info").text.startswith("28 triplets")
    assert len(cards(browser)) == 28
    hostile = [c for c in cards(browser) if c.find_element(By.CSS_SELECTOR, ".text").text == HOSTILE]
    assert len(hostile) == 1  # the LLM's markup is shown as text ...
    assert not hostile[0].find_elements(By.CSS_SELECTOR, ".text b, .text script")
    assert browser.execute_script("return window.pwned === undefined")  # ... and never runs
    assert not browser.find_element(By.ID, "tab-leakage").get_attribute("hidden")
    shot(browser, "explorer")


def test_a_filter_narrows_the_rows(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "f-dataset")).select_by_value("enhfashioniq")
    wait(browser, lambda b: b.find_element(By.ID, "t-info").text.startswith("4 triplets"), "the filtered rows")
    assert len(cards(browser)) == 4 and {c.get_attribute("data-dataset") for c in cards(browser)} == {"enhfashioniq"}
    browser.find_element(By.ID, "f-words").send_keys("nothing matches this")
    browser.find_element(By.ID, "f-apply").click()
    wait(browser, lambda b: b.find_element(By.ID, "t-info").text.startswith("0 triplets"), "no rows")
    shot(browser, "explorer_filtered")
    browser.find_element(By.ID, "f-words").clear()
    Select(browser.find_element(By.ID, "f-dataset")).select_by_value("")
    wait(browser, lambda b: len(cards(b)) == 28, "all rows again")


def test_a_click_on_an_image_fills_the_query(server, browser):
    from selenium.webdriver.common.by import By

    image = cards(browser)[0].find_element(By.CSS_SELECTOR, "img.thumb")
    image_id = image.get_attribute("data-image-id")
    image.click()
    assert browser.find_element(By.ID, "q-ref").text == image_id
    preview = browser.find_element(By.ID, "q-image")
    assert preview.is_displayed() and "/image?id=" in preview.get_attribute("src")
    # the image really loaded through /image (a broken image has no natural width)
    wait(browser, lambda b: b.execute_script("return document.getElementById('q-image').naturalWidth") > 0, "it")
    # The gallery: the run's images, paged; a click there fills the query too.
    browser.find_element(By.ID, "tab-gallery").click()
    wait(browser, lambda b: b.find_element(By.ID, "g-info").text.startswith("25 images"), "the gallery")
    picked = browser.find_elements(By.CSS_SELECTOR, "#g-grid img.thumb")[-2]
    picked.click()
    assert browser.find_element(By.ID, "q-ref").text == picked.get_attribute("data-image-id")
    # The leakage pairs, side by side.
    browser.find_element(By.ID, "tab-leakage").click()
    wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "#l-rows .leak")) == 2, "the leakage pairs")
    pair = browser.find_elements(By.CSS_SELECTOR, "#l-rows .leak")[0].find_elements(By.CSS_SELECTOR, "img.thumb")
    assert [p.get_attribute("data-image-id").split(":")[0] for p in pair] == ["fashion200k", "fashioniq"]
    shot(browser, "leakage")
    browser.find_element(By.ID, "tab-explorer").click()


def test_a_search_returns_k_results_with_the_known_target_marked(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "f-dataset")).select_by_value("fashioniq")
    wait(browser, lambda b: b.find_element(By.ID, "t-info").text.startswith("12 triplets"), "FashionIQ's rows")
    card = cards(browser)[0]
    target = card.find_elements(By.CSS_SELECTOR, "img.thumb")[1].get_attribute("data-image-id")
    card.find_element(By.CSS_SELECTOR, "button.use").click()
    assert browser.find_element(By.ID, "q-text").get_attribute("value") == "Is darker and has longer sleeves"
    assert target in browser.find_element(By.ID, "q-target").text
    k = browser.find_element(By.ID, "q-k")
    k.clear()
    k.send_keys("12")  # the whole gallery: the target is among the results
    Select(browser.find_element(By.ID, "q-model-a")).select_by_value(MODEL_A)
    browser.find_element(By.ID, "q-search").click()
    wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "#r-columns .result")) == 12, "12 results")
    marked = browser.find_elements(By.CSS_SELECTOR, "#r-columns .result.target")
    assert [m.get_attribute("data-image-id") for m in marked] == [target]
    assert "rank" in browser.find_element(By.CSS_SELECTOR, ".target-info").text
    # Two models side by side, k = 3 each.
    Select(browser.find_element(By.ID, "q-model-b")).select_by_value(MODEL_B)
    k.clear()
    k.send_keys("3")
    browser.find_element(By.ID, "q-search").click()
    wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "#r-columns .column")) == 2, "two columns")
    columns = browser.find_elements(By.CSS_SELECTOR, "#r-columns .column")
    assert [c.get_attribute("data-model") for c in columns] == [MODEL_A, MODEL_B]
    assert [len(c.find_elements(By.CSS_SELECTOR, ".result")) for c in columns] == [3, 3]
    shot(browser, "search_two_models")


def test_an_upload_works_and_a_bad_one_is_refused(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    good = tmp_path / '<img src=x onerror="window.pwned=1">.png'
    Image.new("RGB", (30, 30), (200, 20, 20)).save(good, format="PNG")
    browser.find_element(By.ID, "q-upload").send_keys(str(good))
    wait(browser, lambda b: b.find_element(By.ID, "q-ref").text.startswith("upload: "), "the upload")
    assert good.name in browser.find_element(By.ID, "q-ref").text  # the file name, as text
    assert browser.execute_script("return window.pwned === undefined")
    Select(browser.find_element(By.ID, "q-model-b")).select_by_value("")
    text = browser.find_element(By.ID, "q-text")
    text.clear()
    text.send_keys("is blue")
    browser.find_element(By.ID, "q-search").click()
    wait(browser, lambda b: "upload" in b.find_element(By.ID, "r-query").text, "the upload's results")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#r-columns .result")) == 3
    shot(browser, "search_upload")
    bad = tmp_path / "notes.png"
    bad.write_text("these are notes, not a picture")
    browser.find_element(By.ID, "q-upload").send_keys(str(bad))
    wait(browser, lambda b: "not an image" in b.find_element(By.ID, "status").text, "the refusal")
    assert "error" in browser.find_element(By.ID, "status").get_attribute("class")
    text.clear()
    browser.find_element(By.ID, "q-search").click()  # an empty text: refused, shown, nothing breaks
    wait(browser, lambda b: "text is empty" in b.find_element(By.ID, "status").text, "the empty text's refusal")
    shot(browser, "refused")
