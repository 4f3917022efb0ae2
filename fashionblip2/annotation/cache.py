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


def request_key(backend: str, model: str, request: Any) -> str:
    payload = json.dumps({"backend": backend, "model": model, "request": request}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def file_digest(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        self.hits += 1
        return value

    def __contains__(self, key: str) -> bool:
        return self._path(key).exists()

    def put(self, key: str, value: dict[str, Any]) -> None:
        path = self._path(key)
        if key[:2] not in self._made:  # one mkdir per prefix folder, not per answer
            path.parent.mkdir(parents=True, exist_ok=True)
            self._made.add(key[:2])
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(value, sort_keys=True, ensure_ascii=False))
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)  # readers see the whole answer or none
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.stores += 1
