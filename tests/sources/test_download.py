"""Downloads against a loopback HTTP server started by the test: checksums, resume after a dropped
connection, unpacking, and the `download` rule feeding the manifest."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fashionblip2.common.issues import BadInputError
from fashionblip2.sources.download import ChecksumError, DownloadError, DownloadSettings, download_source, fetch
from tests.conftest import REPO, snakemake


class FileServer:
    def __init__(self, root: Path, work: Path, *flags: str) -> None:
        self.log = work / "requests.jsonl"
        port_file = work / "port"
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "tests/support/http_file_server.py"), "--root", str(root),
             "--port-file", str(port_file), "--log", str(self.log), *flags]
        )  # fmt: skip
        for _ in range(100):
            if port_file.exists() and port_file.read_text():
                break
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{port_file.read_text()}"

    def requests(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []

    def stop(self) -> None:
        os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=10)


@pytest.fixture
def serve(tmp_path):
    servers = []

    def start(root: Path, *flags: str) -> FileServer:
        work = tmp_path / f"server{len(servers)}"
        work.mkdir()
        servers.append(FileServer(root, work, *flags))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def payload(tmp_path) -> tuple[Path, bytes]:
    files = tmp_path / "files"
    files.mkdir()
    data = os.urandom(300_000)
    (files / "blob.bin").write_bytes(data)
    return files, data


def settings(tmp_path, retries=0) -> DownloadSettings:
    return DownloadSettings(tmp_path / "partial", timeout_s=10, retries=retries, backoff_s=0.01, progress=False)


def test_fetch_checks_the_checksum_and_writes_atomically(tmp_path, payload, serve):
    files, data = payload
    server = serve(files)
    dest = fetch(f"{server.url}/blob.bin", tmp_path / "out/blob.bin", sha(data), settings(tmp_path))
    assert dest.read_bytes() == data
    assert not list((tmp_path / "partial").iterdir())  # the .part file became the destination
    # Already there with the right checksum: nothing is downloaded again.
    fetch(f"{server.url}/blob.bin", dest, sha(data), settings(tmp_path))
    assert len(server.requests()) == 1


def test_an_interrupted_transfer_resumes_with_a_range_request(tmp_path, payload, serve):
    files, data = payload
    server = serve(files, "--cut-after", "100000")
    url = f"{server.url}/blob.bin"
    with pytest.raises(DownloadError, match="a rerun resumes from there"):
        fetch(url, tmp_path / "blob.bin", sha(data), settings(tmp_path, retries=0))
    part = tmp_path / "partial" / f"{sha(data)}.part"
    kept = part.stat().st_size  # what arrived whole before the cut (reads are 16 KiB)
    assert 50_000 < kept <= 100_000 and part.read_bytes() == data[:kept] and not (tmp_path / "blob.bin").exists()
    # A later run (a new call, as after a killed job) asks only for the rest.
    fetch(url, tmp_path / "blob.bin", sha(data), settings(tmp_path))
    assert (tmp_path / "blob.bin").read_bytes() == data
    assert [r["range"] for r in server.requests()] == [None, f"bytes={kept}-"]


def test_a_retry_in_the_same_run_resumes_too(tmp_path, payload, serve):
    files, data = payload
    server = serve(files, "--cut-after", "50000")
    fetch(f"{server.url}/blob.bin", tmp_path / "blob.bin", sha(data), settings(tmp_path, retries=2))
    assert (tmp_path / "blob.bin").read_bytes() == data
    ranges = [r["range"] for r in server.requests()]
    assert len(ranges) == 2 and ranges[0] is None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"


def test_a_server_without_range_support_restarts_the_file(tmp_path, payload, serve):
    files, data = payload
    server = serve(files, "--cut-after", "100000", "--ignore-range")
    fetch(f"{server.url}/blob.bin", tmp_path / "blob.bin", sha(data), settings(tmp_path, retries=1))
    assert (tmp_path / "blob.bin").read_bytes() == data


def test_a_wrong_checksum_deletes_the_file_and_names_both_sums(tmp_path, payload, serve):
    files, data = payload
    server = serve(files)
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as error:
        fetch(f"{server.url}/blob.bin", tmp_path / "blob.bin", wrong, settings(tmp_path))
    assert sha(data) in str(error.value) and wrong in str(error.value) and "blob.bin" in str(error.value)
    assert not (tmp_path / "blob.bin").exists() and not list((tmp_path / "partial").iterdir())


def test_a_missing_file_fails_naming_the_url(tmp_path, payload, serve):
    server = serve(payload[0])
    with pytest.raises(DownloadError, match="404.*nothing.bin|nothing.bin.*404"):
        fetch(f"{server.url}/nothing.bin", tmp_path / "x", "a" * 64, settings(tmp_path))


def test_a_source_of_files_archives_and_an_image_list(tmp_path, serve):
    site = tmp_path / "site"
    (site / "pkg/top/labels").mkdir(parents=True)
    (site / "pkg/top/labels/a.txt").write_text("label a")
    with tarfile.open(site / "labels.tar.gz", "w:gz") as tar:
        tar.add(site / "pkg/top", arcname="top")
    with zipfile.ZipFile(site / "more.zip", "w") as z:
        z.writestr("more/b.txt", "b")
    (site / "img1.png").write_bytes(b"png1")
    (site / "list.txt").write_text("x1.png {url}/img1.png\nx2.png {url}/gone.png\n")
    server = serve(site)
    (site / "list.txt").write_text((site / "list.txt").read_text().format(url=server.url))
    (site / "cap.json").write_text("[]")
    read = lambda name: (site / name).read_bytes()  # noqa: E731
    entries = [
        {"kind": "file", "url": f"{server.url}/cap.json", "sha256": sha(read("cap.json")), "path": "captions/cap.json"},
        {"kind": "archive", "url": f"{server.url}/labels.tar.gz", "sha256": sha(read("labels.tar.gz")),
         "strip_components": 1},
        {"kind": "archive", "url": f"{server.url}/more.zip", "sha256": sha(read("more.zip"))},
        {"kind": "image_list", "url": f"{server.url}/list.txt", "sha256": sha(read("list.txt"))},
    ]  # fmt: skip
    out = tmp_path / "raw/src"
    result = download_source("src", entries, out, settings(tmp_path))
    assert (out / "captions/cap.json").read_text() == "[]"
    assert (out / "labels/a.txt").read_text() == "label a" and (out / "more/b.txt").read_text() == "b"
    assert (out / "images/x1.png").read_bytes() == b"png1" and not (out / "images/x2.png").exists()
    assert result.images == 1 and list(result.images_failed) == ["x2.png"]
    report = json.loads((out / "download_report.json").read_text())
    assert report["images_failed"]["x2.png"].startswith(f"{server.url}/gone.png")
    # Downloading again reuses the kept archives: only the list's images are asked for again.
    before = len(server.requests())
    download_source("src", entries, out, settings(tmp_path))
    asked = {r["path"] for r in server.requests()[before:]}
    assert "/labels.tar.gz" not in asked and "/more.zip" not in asked


@pytest.mark.parametrize(
    "entries, named",
    [
        ([], "downloads.src lists no files"),
        ([{"kind": "file", "url": "", "sha256": "a", "path": "x"}], r"downloads.src\[0\].url is empty"),
        ([{"kind": "file", "url": "http://h/x", "sha256": "", "path": "x"}], r"downloads.src\[0\].sha256 is empty"),
        ([{"kind": "archive", "url": "http://h/x", "sha256": ""}], r"downloads.src\[0\].sha256 is empty"),
        ([{"kind": "file", "url": "http://h/x", "sha256": "a"}], r"downloads.src\[0\].path is empty"),
    ],
)
def test_an_incomplete_download_config_names_the_key(tmp_path, entries, named):
    with pytest.raises(BadInputError, match=named):
        download_source("src", entries, tmp_path / "out", settings(tmp_path))
    assert not (tmp_path / "out").exists()


@pytest.mark.e2e
def test_the_download_rule_feeds_the_manifest(workflow_copy, tiny_world, tmp_path, serve):
    """FashionIQ from a (loopback) web server: its annotation files one by one with checksums, its
    images as an archive whose first transfer breaks; then the manifest reads the downloaded copy."""
    world, _ = tiny_world
    site = tmp_path / "site"
    site.mkdir()
    fashioniq = world / "fashioniq"
    with tarfile.open(site / "images.tar", "w") as tar:
        tar.add(fashioniq / "images", arcname="fashion-iq/images")
    server = serve(site, "--cut-after", "20000")
    entries = [{"kind": "archive", "url": f"{server.url}/images.tar", "sha256": sha((site / "images.tar").read_bytes()),
                "strip_components": 1}]  # fmt: skip
    for path in sorted(fashioniq.rglob("*.json")):
        relative = path.relative_to(fashioniq).as_posix()
        (site / relative).parent.mkdir(parents=True, exist_ok=True)
        (site / relative).write_bytes(path.read_bytes())
        entries.append(
            {"kind": "file", "url": f"{server.url}/{relative}", "sha256": sha(path.read_bytes()), "path": relative}
        )
    overlay = {
        "sources": {"fashioniq": {"root": "download"}},
        "downloads": {"retries": 2, "backoff_s": 0.1, "files": {"fashioniq": entries}},
    }
    (workflow_copy / "download.yaml").write_text(yaml.safe_dump(overlay))
    args = ["--configfile", "config/presets/test.yaml", "download.yaml"]
    snakemake(workflow_copy, "--cores", "1", "data/manifest/images.parquet", *args)
    raw = workflow_copy / "data/downloaded/fashioniq"
    for path in fashioniq.rglob("*"):
        if path.is_file():
            assert (raw / path.relative_to(fashioniq)).read_bytes() == path.read_bytes(), path
    ranges = [r["range"] for r in server.requests() if r["path"] == "/images.tar"]
    assert len(ranges) == 2 and ranges[0] is None and ranges[1].startswith("bytes="), ranges
    images = pd.read_parquet(workflow_copy / "data/manifest/images.parquet")
    fiq = images[images.source == "fashioniq"]
    assert len(fiq) and all(p.startswith("data/downloaded/fashioniq/") for p in fiq.path)
    assert "download_fashioniq" not in snakemake(workflow_copy, "-n", "data/manifest/images.parquet", *args).stdout


def test_an_image_list_cannot_write_outside_its_folder(tmp_path, serve):
    site = tmp_path / "site"
    site.mkdir()
    (site / "img.png").write_bytes(b"png")
    server = serve(site)
    names = ["../escaped.png", "sub/dir.png", "..", ".hidden.png", "ok.png", "no-url-here"]
    listing = "".join(f"{n} {server.url}/img.png\n" if n != "no-url-here" else f"{n}\n" for n in names)
    (site / "list.txt").write_text(listing)
    entries = [{"kind": "image_list", "url": f"{server.url}/list.txt", "sha256": sha(listing.encode())}]
    out = tmp_path / "downloads/src"
    result = download_source("src", entries, out, settings(tmp_path))
    assert result.images == 1 and (out / "images/ok.png").read_bytes() == b"png"
    assert sorted(p.name for p in tmp_path.rglob("*.png") if site not in p.parents) == ["ok.png"]
    assert len(result.images_failed) == 5
    assert all(v.startswith("refused: unsafe image name") for k, v in result.images_failed.items() if "url" not in k)
    assert [r["path"] for r in server.requests()].count("/img.png") == 1  # nothing refused was even fetched
