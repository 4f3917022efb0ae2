"""Downloads of the real sources: resumable transfers, SHA-256 checks, unpacking.

Only called for a source whose ``root`` is ``download`` in config, with the URLs the config lists:
nothing here reaches the network on its own. A transfer that breaks leaves a ``.part`` file in the
partial folder (outside the rule's output, which Snakemake clears before a rerun); the next attempt,
in this run or a later one, asks the server for the remaining bytes only (an HTTP Range request).
A file whose SHA-256 differs from the configured one is deleted and the download fails, naming the
URL and both checksums. Finished archives are kept by checksum, so unpacking again downloads nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from tqdm import tqdm

from fashionblip2.common.io import write_json_atomic
from fashionblip2.common.issues import BadInputError

log = logging.getLogger(__name__)
CHUNK = 1 << 20
# Network reads: a dropped connection loses the chunk being read, so keep it small.
NET_CHUNK = 1 << 14


class DownloadError(RuntimeError):
    pass


class ChecksumError(DownloadError):
    pass


@dataclass
class DownloadSettings:
    partial_dir: Path
    timeout_s: float
    retries: int
    backoff_s: float
    progress: bool = True


def sha256_of(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _partial_path(url: str, sha256: str | None, settings: DownloadSettings) -> Path:
    key = sha256 or hashlib.sha256(url.encode()).hexdigest()
    return Path(settings.partial_dir) / f"{key}.part"


def _transfer(url: str, part: Path, settings: DownloadSettings) -> None:
    """One attempt: continue ``part`` from its size (Range), or start over if the server ignores it."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with requests.get(url, headers=headers, stream=True, timeout=settings.timeout_s) as reply:
        if reply.status_code == 416 and offset:  # nothing left to send: the partial file is whole
            return
        reply.raise_for_status()
        if offset and reply.status_code != 206:
            log.info("%s: the server ignored the range request; starting over", url)
            offset = 0
        size = reply.headers.get("Content-Length")
        total = offset + int(size) if size is not None else None
        mode = "ab" if offset else "wb"
        with (
            open(part, mode) as out,
            tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=Path(url).name,
                 disable=not settings.progress, mininterval=1) as bar,
        ):  # fmt: skip
            for chunk in reply.iter_content(NET_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
        received = part.stat().st_size
        if total is not None and received < total:
            raise DownloadError(f"{url}: connection closed at byte {received} of {total}")


def fetch(url: str, dest: str | os.PathLike[str], sha256: str | None, settings: DownloadSettings) -> Path:
    """Download ``url`` to ``dest`` (atomically), resuming a partial file and checking its SHA-256."""
    dest = Path(dest)
    if dest.exists() and (sha256 is None or sha256_of(dest) == sha256):
        return dest
    part = _partial_path(url, sha256, settings)
    part.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(settings.retries + 1):
        try:
            _transfer(url, part, settings)
            break
        except (requests.RequestException, DownloadError) as error:
            kept = part.stat().st_size if part.exists() else 0
            if attempt == settings.retries:
                raise DownloadError(
                    f"{url}: {error} (after {settings.retries + 1} attempts; {kept} bytes kept in {part}, "
                    "a rerun resumes from there)"
                ) from error
            wait = settings.backoff_s * 2**attempt
            log.warning("%s: %s; %d bytes so far, retrying in %.0f s", url, error, kept, wait)
            time.sleep(wait)
    if sha256 is not None:
        actual = sha256_of(part)
        if actual != sha256.lower():
            part.unlink()
            raise ChecksumError(
                f"{url}: SHA-256 is {actual}, config says {sha256}; the file was deleted. If the source "
                "changed on purpose, update downloads.<source>[].sha256; otherwise retry later."
            )
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, dest)
    return dest


def unpack(archive: Path, dest: Path, strip_components: int = 0) -> None:
    """Unpack a zip or tar archive into ``dest``, dropping ``strip_components`` leading folders."""
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".unpack-") as tmp:
        # Archives are kept under their checksum (no suffix): tell shutil the format from the bytes.
        fmt = "zip" if zipfile.is_zipfile(archive) else "tar"
        shutil.unpack_archive(archive, tmp, format=fmt, **({"filter": "data"} if fmt == "tar" else {}))
        for path in sorted(Path(tmp).rglob("*")):
            parts = path.relative_to(tmp).parts
            if path.is_dir() or len(parts) <= strip_components:
                continue
            target = dest.joinpath(*parts[strip_components:])
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(path, target)


@dataclass
class SourceDownload:
    """What one source's download got: files, archives unpacked, list images fetched and failed."""

    files: list[str] = field(default_factory=list)
    archives: list[str] = field(default_factory=list)
    images: int = 0
    images_failed: dict[str, str] = field(default_factory=dict)


def check_entries(source: str, entries: list[dict[str, Any]]) -> None:
    """Fail on a config that cannot be downloaded, naming the key."""
    if not entries:
        raise BadInputError(
            f"sources.{source}.root is 'download' but downloads.{source} lists no files: add each file's url "
            f"and sha256 (see the dataset's page), or set sources.{source}.root to a folder holding the data"
        )
    for i, entry in enumerate(entries):
        where = f"downloads.{source}[{i}]"
        if not entry.get("url"):
            raise BadInputError(f"{where}.url is empty: fill it in from the dataset's page, or use a local root")
        kind = entry["kind"]  # the schema's one default (file) fills it when the entry leaves it out
        if kind in ("file", "archive") and not entry.get("sha256"):
            raise BadInputError(f"{where}.sha256 is empty: a {kind} is only accepted with its checksum")
        if kind == "file" and not entry.get("path"):
            raise BadInputError(f"{where}.path is empty: say where the file goes inside the source folder")


def unsafe_image_name(name: str) -> str | None:
    """Why a name from an image list cannot be a file name in the download folder, or None. A list
    comes from the web: a name with a folder in it, or ``..``, could write outside the folder."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or name.startswith("."):
        return f"refused: unsafe image name {name!r} (a path, not a file name)"
    return None


def download_source(
    source: str, entries: list[dict[str, Any]], out: Path, settings: DownloadSettings
) -> SourceDownload:
    """Download every entry of one source into ``out`` (written under a temporary name, then renamed).

    Entry kinds: ``file`` (url, sha256, path), ``archive`` (url, sha256, unpacked into the folder,
    ``strip_components`` leading folders dropped), ``image_list`` (a text file of ``name url`` lines,
    each image fetched to ``images/<name>``; the web copies of FashionIQ miss many images, so a failed
    image is counted and reported, never fatal).
    """
    check_entries(source, entries)
    out = Path(out)
    staging = out.with_name(f".{out.name}.incomplete")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    result = SourceDownload()
    archives = Path(settings.partial_dir) / "archives"
    for entry in entries:
        kind = entry["kind"]
        if kind == "file":
            fetch(entry["url"], staging / entry["path"], entry["sha256"], settings)
            result.files.append(entry["path"])
        elif kind == "archive":
            archive = fetch(entry["url"], archives / entry["sha256"], entry["sha256"], settings)
            unpack(archive, staging, entry.get("strip_components", 0))
            result.archives.append(entry["url"])
        elif kind == "image_list":
            listing = fetch(entry["url"], archives / f"list-{entry.get('sha256') or 'unchecked'}",
                            entry.get("sha256") or None, settings)  # fmt: skip
            quiet = DownloadSettings(settings.partial_dir, settings.timeout_s, retries=1, backoff_s=0.5, progress=False)
            lines = [line.split() for line in listing.read_text().splitlines() if line.strip()]
            for fields in tqdm(lines, desc=f"{source} images", unit="img", disable=not settings.progress):
                name, url = (fields + [""])[:2] if len(fields) <= 2 else ("", "")
                refused = unsafe_image_name(name)
                if refused or not url:
                    result.images_failed[" ".join(fields)] = refused or "not a 'name url' line"
                    continue
                try:
                    fetch(
                        url, staging / entry.get("folder", "images") / f"{name}{entry.get('suffix') or ''}", None, quiet
                    )
                    result.images += 1
                except DownloadError as error:
                    result.images_failed[name] = str(error).split(" (after", 1)[0]
            if result.images_failed:
                log.warning("%s: %d of %d images could not be downloaded (listed in download_report.json)",
                            source, len(result.images_failed), len(lines))  # fmt: skip
        else:
            raise BadInputError(f"downloads.{source}: unknown kind {kind!r} (file, archive, image_list)")
    write_json_atomic(staging / "download_report.json", {"source": source, **result.__dict__})
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)
    return result
