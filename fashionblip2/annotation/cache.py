"""A content-keyed cache of model answers, so that no question is ever paid for twice.

The key is a SHA-256 of (backend, model, the fully rendered request, the input contents: image
bytes are hashed, not their paths). A rerun, a resumed shard, or a second config that asks the
same question finds the answer here. One small JSON file per answer, in folders by key prefix:
safe for concurrent cluster jobs on a shared file system (each write is a rename), and nothing
else to run. Only accepted answers are stored: failures are retried by the next run. API keys
are never part of a key or a value.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from fashionblip2.common.issues import StopRun


def request_key(backend: str, model: str, request: Any) -> str:
    payload = json.dumps({"backend": backend, "model": model, "request": request}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def file_digest(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class CacheWriteError(StopRun):
    """A paid answer could not be stored. Never an item failure: asking again would pay again."""


class ResultCache:
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.hits = 0
        self.stores = 0
        self._made: set[str] = set()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            value = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            return None
        self.hits += 1
        return value

    def __contains__(self, key: str) -> bool:
        return self._path(key).exists()

    def check_writable(self) -> None:
        """Store and remove a probe answer, so that an unwritable folder stops a run before it pays."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.root, prefix=".probe.")
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise self._write_error(self.root, e) from e

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Store an answer atomically; any failure is a :class:`CacheWriteError` naming the folder."""
        path = self._path(key)
        try:
            if key[:2] not in self._made:  # one mkdir per prefix folder, not per answer
                path.parent.mkdir(parents=True, exist_ok=True)
                self._made.add(key[:2])
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key}.", suffix=".tmp")
        except OSError as e:
            raise self._write_error(path, e) from e
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(value, sort_keys=True, ensure_ascii=False))
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)  # readers see the whole answer or none
        except OSError as e:
            Path(tmp).unlink(missing_ok=True)
            raise self._write_error(path, e) from e
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.stores += 1

    def _write_error(self, path: Path, cause: OSError) -> CacheWriteError:
        return CacheWriteError(
            f"cannot store an answer in the result cache {self.root} ({path}: "
            f"{cause.strerror or type(cause).__name__}): stopped so that no answer is paid for and lost; "
            "make the folder writable (annotation.cache_dir) and rerun: stored answers are not asked again"
        )
