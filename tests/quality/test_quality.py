"""Quality evaluation (Table 2): sampling, the annotation kit (also in a real headless browser), the
validation of score files, the agreement statistic and the automatic annotator."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from fashionblip2.quality.automatic import Claim, noisy_annotator, read_claims, score_triplet
from fashionblip2.quality.kit import write_kit
from fashionblip2.quality.table2 import (
    AnnotationError,
    SampledTriplet,
    build_sample,
    krippendorff_alpha,
    quality_table,
    read_annotations,
    stratified_indices,
)
from tests.conftest import REPO, require_service

HOSTILE = 'is red </script><script>window.pwned=1</script> & <b>"bold"</b>'


def test_stratified_sample_is_proportional_seeded_and_without_repeats():
    categories = ["dress"] * 50 + ["shirt"] * 30 + ["toptee"] * 20
    picked = stratified_indices(categories, 10, seed=1)
    assert len(set(picked)) == 10
    assert [sum(categories[i] == c for i in picked) for c in ("dress", "shirt", "toptee")] == [5, 3, 2]
    assert picked == stratified_indices(categories, 10, seed=1) != stratified_indices(categories, 10, seed=2)
    assert stratified_indices(categories[:7], 10, seed=1) == list(range(7))  # fewer than asked: all of them


def triplets(dataset: str, n: int) -> list[SampledTriplet]:
    return [SampledTriplet(dataset, ["dress", "shirt"][i % 2], f"{dataset}:r{i}", f"{dataset}:t{i}", f"text {i}")
            for i in range(n)]  # fmt: skip


def test_sample_hides_the_dataset_behind_opaque_ids():
    items = build_sample({"facap": triplets("facap", 40), "fashioniq": triplets("fashioniq", 9)}, 12, seed=0)
    assert items.groupby("dataset").size().to_dict() == {"facap": 12, "fashioniq": 9}
    assert list(items.item_id) == [f"q{i:04d}" for i in range(1, 22)]
    assert items.dataset.tolist() != sorted(items.dataset.tolist())  # shuffled together
    assert items.equals(build_sample({"facap": triplets("facap", 40), "fashioniq": triplets("fashioniq", 9)}, 12, 0))


@pytest.fixture
def sample() -> pd.DataFrame:
    return pd.DataFrame(
        {"item_id": ["q0001", "q0002", "q0003", "q0004"], "dataset": ["facap", "fashioniq", "facap", "enhfashioniq"],
         "category": ["dress"] * 4, "reference_id": ["a", "b", "c", "d"], "target_id": ["e", "f", "g", "h"],
         "text": ["t1", HOSTILE, "t3", "t4"]}
    )  # fmt: skip


def score_file(path: Path, rows: list[list], header: str = "item_id,faithfulness,details,saliency,annotator") -> Path:
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


GOOD = [["q0001", 5, 4, 3, "ann"], ["q0002", 4, 2, 2, "ann"], ["q0003", 5, 5, 4, "ann"], ["q0004", 3, 3, 3, "ann"]]


@pytest.mark.parametrize(
    "rows, header, message",
    [
        ([*GOOD[:3], ["q0004", 6, 3, 3, "ann"]], None, r"bad\.csv, line 5: item q0004, faithfulness: score '6'"),
        ([*GOOD[:3], ["q0004", "", 3, 3, "ann"]], None, r"line 5: item q0004, faithfulness: not scored"),
        ([*GOOD[:3], ["q0004", 3, "2.5", 3, "ann"]], None, r"line 5: item q0004, details: score '2.5'"),
        ([*GOOD, ["q0099", 3, 3, 3, "ann"]], None, r"line 6: unknown item_id 'q0099'"),
        ([*GOOD, GOOD[0]], None, r"line 6: item q0001 scored twice \(also line 2\)"),
        (GOOD[:3], None, r"bad\.csv: 1 item\(s\) of the sample not scored, e\.g\. q0004"),
        (GOOD, "item_id,faithfulness,detail,saliency,annotator", r"bad\.csv: missing column\(s\) details"),
        ([*GOOD[:3], ["q0004", 3, 3, 3, "other"]], None, r"one annotator per file"),
    ],
)
def test_a_malformed_score_file_is_named_with_its_line(tmp_path, sample, rows, header, message):
    bad = score_file(tmp_path / "bad.csv", rows, *([header] if header else []))
    with pytest.raises(AnnotationError, match=message):
        read_annotations([score_file(tmp_path / "good.csv", [[*r[:4], "good"] for r in GOOD]), bad], sample)


def test_table2_from_score_files(tmp_path, sample):
    files = [score_file(tmp_path / f"{name}.csv", [[*r[:4], name] for r in GOOD]) for name in ("a", "b")]
    scores = read_annotations(files, sample)
    table, agreement = quality_table(sample, scores, "this run")
    facap = table[(table.Dataset == "FACap") & (table["Rows from"] == "this run")].iloc[0]
    assert facap.Faithfulness == "5.00 ± 0.00" and facap.Details == "4.50 ± 0.50" and facap.Triplets == 2
    assert set(table[table["Rows from"] == "reported by the paper"].Dataset) == {"FashionIQ", "FACap"}
    assert agreement.iloc[0].tolist() == ["all", 1.0, 1.0, 1.0]  # identical annotators agree perfectly


def test_krippendorff_alpha_matches_the_published_example():
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability": 4 coders, 12 units, missing values.
    data = [[1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None], [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
            [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None], [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None]]  # fmt: skip
    rows = [{"annotator": f"c{a}", "item_id": f"u{u}", "x": v} for a, r in enumerate(data) for u, v in enumerate(r)]
    scores = pd.DataFrame([r for r in rows if r["x"] is not None])
    assert krippendorff_alpha(scores, "x", "nominal") == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha(scores, "x", "interval") == pytest.approx(0.849, abs=5e-4)
    assert krippendorff_alpha(scores, "x") < krippendorff_alpha(scores, "x", "interval")


def test_table2_script_fails_cleanly_and_writes_no_table(tmp_path, sample):
    (tmp_path / "sample").mkdir()
    sample.to_csv(tmp_path / "sample/items.csv", index=False)
    bad = score_file(tmp_path / "bad.csv", [*GOOD[:3], ["q0004", 9, 3, 3, "ann"]])
    proc = subprocess.run(
        [sys.executable, REPO / "workflow_scripts/make_table2.py", "--sample", tmp_path / "sample",
         "--annotations", bad, "--data", "real", "--run-name", "test", "--md", tmp_path / "table2.md",
         "--csv", tmp_path / "table2.csv", "--agreement", tmp_path / "table2_agreement.csv"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2 and "bad.csv, line 5: item q0004, faithfulness: score '9'" in proc.stderr
    assert "Traceback" not in proc.stderr and not list(tmp_path.glob("table2*"))


GARMENT = {"garment": "dress", "colour": "blue", "colour2": None, "pattern": "solid", "sleeve": "short",
           "length": "knee", "neckline": "round", "fit": "regular", "fabric": "cotton"}  # fmt: skip


def test_claims_read_from_a_modification_text():
    claims = read_claims("The dress is red instead of blue, has long sleeves and is shorter.")
    assert Claim("colour", "red") in claims and Claim("sleeve", "long") in claims
    assert Claim("length", direction=-1) in claims
    assert read_claims("looks nicer") == []


def test_automatic_scores_follow_the_ground_truth():
    reference = GARMENT
    target = {**GARMENT, "colour": "red", "sleeve": "long"}
    gallery = [target] + [{**GARMENT, "colour": c} for c in ("red", "green", "black", "white")] * 20
    true = score_triplet("is red and has long sleeves", reference, target, gallery)
    assert true == {"faithfulness": 5, "details": 3, "saliency": 5}  # only the target is red with long sleeves
    half = score_triplet("is red and has a v-neck", reference, target, gallery)
    assert half["faithfulness"] == 3 and half["details"] == 2
    vague = score_triplet("is more fashionable", reference, target, gallery)
    assert vague == {"faithfulness": 5, "details": 1, "saliency": 1}
    colour_only = score_triplet("is red", reference, target, gallery)
    assert colour_only["saliency"] < true["saliency"]  # 21 red dresses of 81 fit "is red"


def test_automatic_annotators_differ_by_seeded_noise_only():
    scores = pd.DataFrame({"item_id": [f"q{i}" for i in range(200)], "faithfulness": 3, "details": 3, "saliency": 3})
    a, b = noisy_annotator(scores, "auto-1", 0.25, 0), noisy_annotator(scores, "auto-2", 0.25, 0)
    assert a.equals(noisy_annotator(scores, "auto-1", 0.25, 0)) and not a.equals(b)
    moved = (a.faithfulness != 3).mean()
    assert 0.15 < moved < 0.35 and set(a.faithfulness) == {2, 3, 4}


@pytest.fixture
def kit(tmp_path, sample) -> Path:
    paths = {}
    for i, image_id in enumerate("abcdefgh"):
        paths[image_id] = str(tmp_path / f"{image_id}.png")
        Image.new("RGB", (40, 60), (30 * i, 100, 200 - 20 * i)).save(paths[image_id])
    write_kit(sample, paths, tmp_path / "kit", annotators=2, seed=0, image_size=32)
    return tmp_path / "kit"


def kit_data(page: Path) -> dict:
    block = re.search(r'<script id="kit-data" type="application/json">(.*?)</script>', page.read_text(), re.S)
    return json.loads(block.group(1))


def test_kit_pages_are_self_contained_escaped_and_blind(kit, sample):
    page = (kit / "annotator_1.html").read_text()
    assert (
        HOSTILE not in page
        and "</script><script>" not in page.split('type="application/json">')[1].split("</script>")[0]
    )
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page) and "default-src 'none'" in page
    one, two = kit_data(kit / "annotator_1.html"), kit_data(kit / "annotator_2.html")
    assert {i["text"] for i in one["items"]} == set(sample.text)  # the hostile text survives, as text
    assert all(set(i) == {"id", "text", "reference", "target"} for i in one["items"])  # no dataset anywhere
    assert all(i["reference"].startswith("data:image/jpeg;base64,") for i in one["items"])
    assert [i["id"] for i in one["items"]] != [i["id"] for i in two["items"]]  # each annotator's own order
    template = pd.read_csv(kit / "annotator_1.csv")
    assert list(template.item_id) == [i["id"] for i in one["items"]] and "dataset" not in template
    assert all((kit / p).exists() for p in template.reference_image)


@pytest.mark.parametrize("text", ['=HYPERLINK("http://x.invalid","click")', "+1", "-2+3", "@SUM(A1)", "\t=1"])
def test_kit_sheets_never_hold_a_spreadsheet_formula(tmp_path, sample, text):
    sample = sample.assign(text=[text, *sample.text[1:]])
    paths = {image: str(tmp_path / "x.png") for image in set(sample.reference_id) | set(sample.target_id)}
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    write_kit(sample, paths, tmp_path / "kit", annotators=1, seed=0, image_size=8)
    cells = pd.read_csv(tmp_path / "kit/annotator_1.csv", dtype=str, keep_default_na=False)["text"].tolist()
    assert f"'{text}" in cells and not any(c[:1] in "=+-@\t" for c in cells)
    assert text in {i["text"] for i in kit_data(tmp_path / "kit/annotator_1.html")["items"]}  # the page shows it as is


def chromium_driver(downloads: Path, profile: Path):
    """Debian's chromium through selenium, offline; skipped (or failed under CI) without them."""
    reason = None
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        reason = "selenium is not installed (pip install selenium)"
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not reason and not (chromium and driver):
        reason = "Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
    require_service(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={profile}"):  # fmt: skip
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})  # fmt: skip
    browser = webdriver.Chrome(service=Service(driver), options=options)
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    return browser


def wait_for_file(folder: Path, pattern: str, timeout_s: float = 20) -> Path:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = [p for p in folder.glob(pattern) if not p.name.endswith(".crdownload")]
        if done and not list(folder.glob("*.crdownload")):
            return done[0]
        time.sleep(0.2)
    raise AssertionError(f"no {pattern} in {folder} after {timeout_s} s: {list(folder.iterdir())}")


def test_the_kit_in_a_headless_browser(kit, sample, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser = chromium_driver(downloads, tmp_path / "profile")
    try:
        browser.get((kit / "annotator_1.html").as_uri())
        order = [i["id"] for i in kit_data(kit / "annotator_1.html")["items"]]
        text_of = dict(zip(sample.item_id, sample.text, strict=True))
        assert browser.find_element(By.ID, "text").text == text_of[order[0]]
        body = browser.find_element(By.TAG_NAME, "body")
        # Item 1 with the keyboard: 5, 4, 3 score the three criteria and move to item 2.
        body.send_keys("5", "4", "3")
        assert order[1] in browser.find_element(By.ID, "position").text
        # Item 2 with the mouse; the third score moves on to item 3.
        for criterion, score in (("faithfulness", 2), ("details", 1), ("saliency", 4)):
            browser.find_element(By.CSS_SELECTOR, f'[data-criterion="{criterion}"] [data-score="{score}"]').click()
        assert order[2] in browser.find_element(By.ID, "position").text
        # Progress and position survive a reload (local storage).
        browser.refresh()
        assert browser.find_element(By.ID, "progress").text == "2 scored"
        assert order[2] in browser.find_element(By.ID, "position").text
        # The LLM's markup is shown as text and never runs.
        body = browser.find_element(By.TAG_NAME, "body")
        hostile = sample.item_id[sample.text == HOSTILE].iloc[0]
        for _ in range(len(order)):
            if hostile in browser.find_element(By.ID, "position").text:
                break
            body.send_keys(Keys.ARROW_RIGHT if order.index(hostile) > 2 else Keys.ARROW_LEFT)
        assert browser.find_element(By.ID, "text").text == HOSTILE
        assert browser.execute_script("return window.pwned === undefined")
        assert not browser.find_elements(By.CSS_SELECTOR, "#text b")
        # Score the rest from the first unscored item, then export.
        browser.find_element(By.ID, "next-open").click()
        for _ in range(len(order) - 2):
            body.send_keys("3", "3", "3")
        assert "All items scored" in browser.find_element(By.ID, "done").text
        browser.find_element(By.ID, "export").click()
        exported = wait_for_file(downloads, "quality_1*.csv")
    finally:
        browser.quit()
    scores = pd.read_csv(exported, dtype={"annotator": str}).set_index("item_id")
    assert scores.loc[order[0], ["faithfulness", "details", "saliency"]].tolist() == [5, 4, 3]
    assert scores.loc[order[1], ["faithfulness", "details", "saliency"]].tolist() == [2, 1, 4]
    assert list(scores.index) == sorted(order) and set(scores.annotator) == {"1"}
    # The exported file is what Table 2 reads.
    read = read_annotations([exported], sample)
    assert len(read) == len(sample) and set(read.annotator) == {"1"}
