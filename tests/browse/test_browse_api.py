"""``fashionblip2 browse``'s JSON endpoints through Starlette's TestClient, over a small hand-made
run (a manifest, FACap, scores, FashionIQ, leakage pairs, two tiny random models with an index):
paging, filters, search, and every bad input answered with a clear JSON error while nothing is
written and the server keeps serving."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

HOSTILE = 'is red </script><script>window.pwned=1</script> & <b>"bold"</b>'
COLOURS = {
    "red": (220, 30, 30),
    "blue": (30, 30, 220),
    "green": (30, 200, 30),
    "black": (10, 10, 10),
    "white": (240, 240, 240),
    "yellow": (230, 220, 40),
}
MODEL_A, MODEL_B = "stage2/tiny", "stage1/tiny"


def _image(path: Path, rgb: tuple[int, int, int], dress: bool) -> None:
    picture = Image.new("RGB", (32, 40), "white")
    picture.paste(rgb, (8, 4, 24, 36) if dress else (4, 8, 28, 24))
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)


def make_run(root: Path) -> Path:
    """A finished run's files, made by hand: what ``fashionblip2 browse`` reads."""
    from fashionblip2.evaluation.retrieval import encode_gallery, save_index
    from fashionblip2.model import FashionBLIP2, FashionBLIP2Config
    from fashionblip2.model.configuration import tiny_blip2_config
    from fashionblip2.model.processing import ImageStore
    from fashionblip2.model.tokenization import train_word_level

    run = root / "run"
    rows = []
    for source, folder in (("fashion200k", "data/world/fashion200k/women"), ("fashioniq", "data/world/fashioniq")):
        for colour, rgb in COLOURS.items():
            for dress in (True, False):
                category = "dress" if dress else "shirt"
                name = f"{colour}_{category}"
                image_id = f"fashioniq:{category}:{name.upper()}" if source == "fashioniq" else f"{source}:{name}"
                path = f"{folder}/{name}.png"
                _image(run / path, rgb, dress)
                rows.append(
                    {
                        "image_id": image_id,
                        "path": path,
                        "source": source,
                        "category": category,
                        "split": "val" if source == "fashioniq" else "all",
                    }
                )
    # A symlink in an image folder to a file outside the run: listed, but never served.
    outside = root / "outside"
    outside.mkdir()
    _image(outside / "secret.png", (1, 2, 3), True)
    os.symlink(outside / "secret.png", run / "data/world/fashion200k/women/evil.png")
    rows.append(
        {
            "image_id": "fashion200k:evil",
            "path": "data/world/fashion200k/women/evil.png",
            "source": "fashion200k",
            "category": "dress",
            "split": "all",
        }
    )
    manifest = pd.DataFrame(rows)
    (run / "data/manifest").mkdir(parents=True)
    manifest.to_parquet(run / "data/manifest/images.parquet")

    f200k = [r["image_id"] for r in rows if r["source"] == "fashion200k" and r["image_id"] != "fashion200k:evil"]
    facap = pd.DataFrame(
        {
            "reference_id": f200k,
            "target_id": f200k[1:] + f200k[:1],
            "source": "fashion200k",
            "category": [i.split("_")[1] for i in f200k],
            "text": [
                HOSTILE if i == 3 else f"is {f200k[(i + 1) % len(f200k)].split(':')[1].split('_')[0]} instead"
                for i in range(len(f200k))
            ],
            "reference_caption": [f"A {i.split(':')[1].replace('_', ' ')}." for i in f200k],
            "target_caption": [f"A {i.split(':')[1].replace('_', ' ')}." for i in f200k[1:] + f200k[:1]],
            "caption_faithfulness": np.linspace(-2, 1, len(f200k)),
            "grounding": [0.0, 0.5, 1.0] * (len(f200k) // 3),
            "discriminative": np.linspace(0, 1, len(f200k)),
            "form": 1.0,
        }
    )
    (run / "data/facap").mkdir(parents=True)
    facap.to_parquet(run / "data/facap/triplets.parquet")
    fiq_ids = [r["image_id"] for r in rows if r["source"] == "fashioniq"]
    enh = pd.DataFrame(
        {
            "reference_id": fiq_ids[:4],
            "target_id": fiq_ids[4:8],
            "source": "fashioniq",
            "category": [i.split(":")[1] for i in fiq_ids[:4]],
            "text": "is darker",
            "reference_caption": "A garment.",
            "target_caption": "A darker garment.",
            "caption_faithfulness": 0.5,
            "grounding": 1.0,
            "discriminative": 0.9,
            "form": 1.0,
        }
    )
    scores = pd.concat([facap.assign(dataset="facap"), enh.assign(dataset="enhfashioniq")], ignore_index=True)
    scores["form_issue"] = ""
    scores["grounding_issue"] = np.where(scores["grounding"] == 0, "contradicts_the_captions", "")
    (run / "data/scores").mkdir(parents=True)
    scores.to_parquet(run / "data/scores/triplets.parquet")
    asins = [i.split(":")[2] for i in fiq_ids]
    fashioniq = pd.DataFrame(
        {
            "category": [i.split(":")[1] for i in fiq_ids],
            "split": "val",
            "candidate": asins,
            "target": asins[2:] + asins[:2],
            "captions": [["is darker", "has longer sleeves"]] * len(asins),
        }
    )
    fashioniq.to_parquet(run / "data/manifest/fashioniq_triplets.parquet")
    (run / "data/leakage").mkdir(parents=True)
    pd.DataFrame(
        {
            "kind": "heldout",
            "image_a": f200k[:2],
            "path_a": [manifest.set_index("image_id").path[i] for i in f200k[:2]],
            "image_b": fiq_ids[:2],
            "path_b": [manifest.set_index("image_id").path[i] for i in fiq_ids[:2]],
            "heldout_sets": "fashioniq_val",
            "exact": False,
            "hash_distance": [1, 2],
            "cosine": [0.99, 0.98],
            "levels": "near_duplicate",
        }
    ).to_csv(run / "data/leakage/matches.csv", index=False)

    # Two tiny random models (the same weights under two names) with the FashionIQ images indexed.
    texts = [*facap["text"], "is darker", "has longer sleeves", "is blue instead", "is red"]
    tokenizer = train_word_level(texts, 64, 16)
    torch.manual_seed(0)
    blip2 = tiny_blip2_config(vocab_size=len(tokenizer), image_size=32)
    model = FashionBLIP2(FashionBLIP2Config(blip2=blip2, num_heads=4, head_dim=16, max_text_length=16)).eval()
    paths = {r["image_id"]: str(run / r["path"]) for r in rows if r["source"] == "fashioniq"}
    vectors = encode_gallery(model, ImageStore(paths, 32), fiq_ids, torch.device("cpu"))
    # MODEL_A where an index without a recorded model looks (models/<stage>/<variant>); MODEL_B as the
    # workflow lays out seeds (models/<stage>/<variant>/seed0, named in its index).
    for name, folder in ((MODEL_A, f"models/{MODEL_A}"), (MODEL_B, f"models/{MODEL_B}/seed0")):
        model.save_pretrained(run / folder)
        tokenizer.save_pretrained(run / folder)
        fiq_paths = [r["path"] for r in rows if r["source"] == "fashioniq"]
        save_index(vectors, fiq_ids, fiq_paths, run / "results/index" / name, model=folder if name == MODEL_B else None)
    save_index(vectors, fiq_ids, list(paths.values()), run / "results/index/stage2/no_model")  # no model: not offered
    # An index naming a model folder outside the run is not offered either, though the folder holds one.
    model.save_pretrained(run.parent / "outside_model")
    save_index(vectors, fiq_ids, list(paths.values()), run / "results/index/stage2/outside", model="../outside_model")
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("browse"))


@pytest.fixture(scope="module")
def client(run_dir):
    from starlette.testclient import TestClient

    from fashionblip2.browse.app import Run, create_app

    app = create_app(Run(run_dir, torch.device("cpu")), allowed_hosts=["testserver"])
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def assert_error(response, status: int, *words: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    message = response.json()["error"]
    assert all(w in message for w in words), message


def search(client, text="is red", k=3, reference=None, models=(MODEL_A,), **extra):
    body = {
        "models": list(models),
        "reference": reference or {"image_id": "fashioniq:dress:RED_DRESS"},
        "text": text,
        "k": k,
        **extra,
    }
    return client.post("/api/search", json=body)


# --- the page and its tables -------------------------------------------------------------------


def test_meta_lists_the_datasets_models_and_leakage(client):
    meta = client.get("/api/meta").json()
    assert [(d["name"], d["rows"]) for d in meta["triplets"]["datasets"]] == [
        ("facap", 12),
        ("enhfashioniq", 4),
        ("fashioniq", 12),
    ]
    # Stage 2 first; the index without a model, and the one naming a folder outside the run, are not offered.
    assert meta["models"] == [MODEL_A, MODEL_B]
    assert meta["leakage"] == {"pairs": 2} and meta["triplets"]["flagged"] == 4
    assert set(meta["triplets"]["scores"]) == {"caption_faithfulness", "grounding", "discriminative", "form"}
    page = client.get("/")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200


def test_paging_is_done_by_the_server(client):
    first = client.get("/api/triplets", params={"size": 5}).json()
    assert first["total"] == 28 and first["pages"] == 6 and len(first["rows"]) == 5
    second = client.get("/api/triplets", params={"size": 5, "page": 1}).json()
    assert {r["row"] for r in first["rows"]}.isdisjoint(r["row"] for r in second["rows"])
    last = client.get("/api/triplets", params={"size": 5, "page": 5}).json()
    assert len(last["rows"]) == 3 and client.get("/api/triplets", params={"size": 5, "page": 9}).json()["rows"] == []
    row = first["rows"][0]
    assert row["dataset"] == "facap" and row["reference_caption"] and row["scores"]["grounding"] == 0.0
    assert row["flags"] == ["grounding: contradicts_the_captions"]
    fiq = client.get("/api/triplets", params={"dataset": "fashioniq", "size": 1}).json()["rows"][0]
    assert fiq["text"] == "Is darker and has longer sleeves" and fiq["reference_id"].startswith("fashioniq:")
    assert set(fiq["scores"].values()) == {None} and fiq["flags"] == []


@pytest.mark.parametrize(
    "params, total, check",
    [
        ({"dataset": "enhfashioniq"}, 4, lambda r: r["dataset"] == "enhfashioniq"),
        ({"dataset": "facap,enhfashioniq"}, 16, lambda r: r["dataset"] != "fashioniq"),
        ({"category": "dress", "source": "fashion200k"}, 6, lambda r: r["category"] == "dress"),
        ({"q": "BLUE instead"}, 2, lambda r: "blue instead" in r["text"].lower()),
        ({"q": "<script>"}, 1, lambda r: r["text"] == HOSTILE),
        ({"min_grounding": "0.5", "max_grounding": "0.5"}, 4, lambda r: r["scores"]["grounding"] == 0.5),
        ({"min_discriminative": "0.95"}, 1, lambda r: r["scores"]["discriminative"] >= 0.95),
        ({"flagged": "1"}, 4, lambda r: r["flags"]),
    ],
)
def test_filters_narrow_the_rows(client, params, total, check):
    data = client.get("/api/triplets", params={**params, "size": 50}).json()
    assert data["total"] == total and all(check(r) for r in data["rows"])


def test_sorting_by_a_score_puts_rows_without_it_last(client):
    rows = client.get("/api/triplets", params={"sort": "discriminative", "order": "desc", "size": 50}).json()["rows"]
    values = [r["scores"]["discriminative"] for r in rows]
    known = [v for v in values if v is not None]
    assert known == sorted(known, reverse=True) and values[len(known) :] == [None] * (len(values) - len(known))
    texts = [r["text"] for r in client.get("/api/triplets", params={"sort": "text", "size": 50}).json()["rows"]]
    assert texts == sorted(texts)


@pytest.mark.parametrize(
    "params, words",
    [
        ({"sort": "price"}, ["cannot sort by 'price'"]),
        ({"min_grounding": "lots"}, ["min_grounding must be a number"]),
        ({"min_grounding": "nan"}, ["finite"]),
        ({"dataset": "imagenet"}, ["unknown dataset 'imagenet'", "facap"]),
        ({"size": "100000"}, ["size must be between 1 and 200"]),
        ({"page": "-1"}, ["page must be between"]),
        ({"colour": "red"}, ["unknown parameter(s): colour"]),
        ({"q": "x" * 300}, ["300 characters"]),
    ],
)
def test_bad_explorer_parameters_are_named(client, params, words):
    assert_error(client.get("/api/triplets", params=params), 400, *words)


def test_gallery_and_leakage_pages(client):
    gallery = client.get("/api/images", params={"model": MODEL_A, "category": "dress"}).json()
    assert gallery["total"] == 6 and all(r["image_id"].startswith("fashioniq:dress:") for r in gallery["rows"])
    assert client.get("/api/images").json()["total"] == 25
    assert_error(client.get("/api/images", params={"model": "nope"}), 404, "unknown model 'nope'")
    pairs = client.get("/api/leakage").json()
    assert pairs["total"] == 2 and pairs["rows"][0]["image_b"].startswith("fashioniq:")
    assert pairs["rows"][0]["exact"] is False and pairs["rows"][0]["cosine"] == 0.99


def test_images_are_served_by_id(client):
    response = client.get("/image", params={"id": "fashion200k:red_dress"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert Image.open(__import__("io").BytesIO(response.content)).size == (32, 40)


@pytest.mark.parametrize(
    "url, words",
    [
        ("/image?id=../../../../etc/passwd", ["unknown image id"]),
        ("/image?id=/etc/passwd", ["unknown image id"]),
        ("/image?id=%2e%2e%2f%2e%2e%2fetc%2fpasswd", ["unknown image id"]),
        ("/image?id=%252e%252e%252fetc%252fpasswd", ["unknown image id"]),
        ("/image?id=data/world/fashion200k/women/red_dress.png", ["unknown image id"]),  # a path is not an id
        ("/image?id=fashion200k:evil", ["outside the run's image folders"]),  # the symlink
        ("/image", ["unknown image id"]),
        ("/static/..%2f..%2fcli.py", ["no such page"]),
        ("/static/%2e%2e", ["outside the run's image folders"]),
        ("/static/app.py", ["not an image"]),
        ("/static/nothing.js", ["no such file"]),
    ],
)
def test_path_traversal_is_refused(client, url, words):
    assert_error(client.get(url), 404, *words)


# --- search ------------------------------------------------------------------------------------


def test_search_returns_k_results_and_marks_the_known_target(client):
    response = search(client, k=3)
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    assert result["model"] == MODEL_A and result["gallery"] == 12 and len(result["items"]) == 3
    scores = [i["score"] for i in result["items"]]
    assert scores == sorted(scores, reverse=True) and [i["rank"] for i in result["items"]] == [1, 2, 3]
    assert set(result["timings_ms"]) == {"image", "text_and_fusion", "search"}
    # A dataset triplet's query: its target is marked in the results and ranked in the whole gallery.
    target = "fashioniq:shirt:BLUE_SHIRT"
    everything = search(client, k=12, target_id=target).json()["results"][0]
    marked = [i for i in everything["items"] if i["is_target"]]
    assert [i["image_id"] for i in marked] == [target] and everything["target"]["rank"] == marked[0]["rank"]
    assert search(client, k=2, target_id="fashion200k:red_dress").json()["results"][0]["target"] is None


def test_two_models_side_by_side(client):
    results = search(client, models=(MODEL_A, MODEL_B), k=4).json()["results"]
    assert [r["model"] for r in results] == [MODEL_A, MODEL_B]
    # the same weights under two names: the same ranking, computed by each
    assert [i["image_id"] for i in results[0]["items"]] == [i["image_id"] for i in results[1]["items"]]


def png_bytes(size=(24, 24), colour=(200, 10, 10)) -> bytes:
    buffer = __import__("io").BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_upload_then_search_with_it(client):
    name = '<img src=x onerror="window.pwned=1">.png'
    response = client.post("/api/upload", content=png_bytes(), headers={"X-Filename": quote(name)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["name"] == name and (body["width"], body["height"]) == (24, 24)  # returned as text, as given
    result = search(client, reference={"upload": body["upload"]}, k=5).json()["results"][0]
    assert len(result["items"]) == 5
    assert_error(search(client, reference={"upload": "forged-token"}), 404, "unknown or expired upload")


def test_uploads_stay_in_memory_within_a_budget():
    from fashionblip2.browse.data import BrowseError
    from fashionblip2.browse.search import Uploads

    uploads = Uploads(keep=3, max_pixels=2_500)
    tokens = [uploads.add(Image.new("RGB", (30, 30)), f"{i}.png") for i in range(3)]  # 900 pixels each
    assert len(uploads) == 2 and uploads.get(tokens[2]).size == (30, 30)  # the oldest dropped: over 2,500 pixels
    with pytest.raises(BrowseError, match="unknown or expired upload"):
        uploads.get(tokens[0])
    big = uploads.add(Image.new("RGB", (60, 60)), "big.png")  # over the budget alone: kept, the rest dropped
    assert len(uploads) == 1 and uploads.get(big).size == (60, 60)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (its pixel data is cut short): what PIL's
    Image.open reads to know the size, before any decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    rows = zlib.compress(b"\0" * (width + 1) * 64, 9)  # the first 64 rows of zeros: a tiny file
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "data, status, words",
    [
        (b"", 400, ["the upload is empty"]),
        (b"%PDF-1.4 this is not an image", 400, ["not an image"]),
        (b"<script>alert(1)</script>", 400, ["not an image"]),
        (png_header_only(8000, 6250), 400, ["8,000 x 6,250 = 50 megapixels", "at most 40 megapixels"]),
        (png_header_only(10_000, 10_000), 400, ["decompression bomb", "100000000 pixels"]),  # PIL's warning, as error
        (png_header_only(20_000, 20_000), 400, ["decompression bomb", "400000000 pixels"]),  # PIL's error
        (png_bytes()[:60], 400, ["truncated or corrupt"]),
    ],
    ids=["empty", "pdf", "html", "50-megapixels", "100-megapixels", "bomb", "truncated"],
)
def test_bad_uploads_are_refused_with_a_reason(client, data, status, words):
    assert_error(client.post("/api/upload", content=data), status, *words)
    assert client.get("/api/meta").status_code == 200  # still serving


def test_an_oversized_upload_is_refused_before_it_is_read(client):
    from fashionblip2.browse.search import MAX_UPLOAD_BYTES

    response = client.post("/api/upload", content=b"\0" * (MAX_UPLOAD_BYTES + 1))
    assert_error(response, 413, "at most 20,971,520")


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"text": ""}, 400, ["the modification text is empty"]),
        ({"text": "   \n "}, 400, ["the modification text is empty"]),
        ({"text": "x" * 10_000}, 400, ["10,000 characters", "at most 1,000"]),
        ({"text": ["is red"]}, 400, ["text must be a string"]),
        ({"models": ["stage9/imaginary"]}, 404, ["unknown model 'stage9/imaginary'", MODEL_A]),
        ({"models": ["<b>x</b>"]}, 404, ["unknown model '<b>x</b>'"]),
        ({"models": []}, 400, ["models must be a list of 1 to 2"]),
        ({"models": [MODEL_A, MODEL_B, MODEL_A]}, 400, ["models must be a list of 1 to 2"]),
        ({"k": 0}, 400, ["k must be a whole number from 1 to 100"]),
        ({"k": "5"}, 400, ["k must be"]),
        ({"k": True}, 400, ["k must be"]),
        ({"reference": {"image_id": "../../etc/passwd"}}, 404, ["unknown image id"]),
        ({"reference": {"image_id": "fashion200k:evil"}}, 404, ["outside the run's image folders"]),
        ({"reference": {"path": "/etc/passwd"}}, 400, ["reference must be"]),
        ({"target_id": 7}, 400, ["target_id must be"]),
    ],
)
def test_bad_queries_are_refused_with_a_reason(client, body, status, words):
    assert_error(search(client, **body), status, *words)


def test_a_query_that_is_not_json_is_refused(client):
    assert_error(client.post("/api/search", content=b"{not json"), 400, "not JSON")
    assert_error(client.post("/api/search", content=b"[1, 2]"), 400, "JSON object")
    assert_error(client.post("/api/search", content=b"x" * 100_000), 413, "query")
    assert_error(client.get("/api/search"), 405)
    assert_error(client.get("/api/nothing"), 404, "no such page")


def test_foreign_host_headers_are_refused(client):
    # DNS rebinding: a page on another site that resolves its name to 127.0.0.1 sends its own Host.
    response = client.get("/api/meta", headers={"host": "evil.example"})
    assert response.status_code == 400


def test_nothing_is_written_and_the_server_keeps_serving(run_dir, client):
    before = snapshot(run_dir)
    token = client.post("/api/upload", content=png_bytes()).json()["upload"]
    for request in (
        lambda: client.post("/api/upload", content=b"not an image"),
        lambda: client.post("/api/upload", content=png_header_only(20_000, 20_000)),
        lambda: search(client, text=""),
        lambda: search(client, text="x" * 10_000),
        lambda: search(client, models=("nope",)),
        lambda: search(client, reference={"upload": token}, models=(MODEL_A, MODEL_B)),
        lambda: client.get("/image", params={"id": "fashion200k:evil"}),
        lambda: client.get("/api/triplets", params={"q": "red", "sort": "grounding"}),
    ):
        request()
        assert client.get("/api/meta").status_code == 200
    assert snapshot(run_dir) == before


def test_a_run_without_a_manifest_is_named(tmp_path):
    from fashionblip2.browse.app import Run

    with pytest.raises(FileNotFoundError, match="not a finished run"):
        Run(tmp_path, torch.device("cpu"))


def test_the_cli_has_a_browse_command(capsys):
    from fashionblip2.cli import main

    with pytest.raises(SystemExit):
        main(["browse", "--help"])
    out = capsys.readouterr().out
    assert "--port" in out and "7860" in out and "127.0.0.1" in out
