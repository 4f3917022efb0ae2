"""Versioned artefacts with DVC: push what the workflow made, pull it into another clone, and make
Snakemake treat what was pulled as done.

DVC only stores files here; Snakemake stays the pipeline. Each tracked path gets its own ``.dvc``
file beside it (``data/facap.dvc``, ``models/stage1/cir_mh.dvc``), so a clone can hold any subset.
After ``dvc pull`` the files have fresh modification times in a random order and the clone has no
Snakemake metadata, so Snakemake may want to rerun pulled stages; ``pull`` therefore runs
``snakemake --touch`` on exactly the pulled outputs, after which only the stages that were not
pushed are left to run.
"""

from __future__ import annotations

import glob
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

import yaml

log = logging.getLogger(__name__)

# No usage reports or update checks: nothing reaches the network but the configured remote.
DVC_ENV = {"DVC_NO_ANALYTICS": "1"}


class StoreError(RuntimeError):
    pass


def _run(cmd: Sequence[str], cwd: Path, what: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), cwd=cwd, env={**os.environ, **DVC_ENV}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StoreError(f"{what} failed ({' '.join(cmd[2:])}):\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    return proc


def dvc(*args: str, cwd: Path, what: str = "dvc") -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "dvc", *args], cwd, what)


def resolve_tracked(root: Path, patterns: Sequence[str]) -> list[str]:
    """The existing paths (relative to root, sorted) that the patterns name; globs allowed."""
    found = set()
    for pattern in patterns:
        for match in glob.glob(pattern, root_dir=root):
            if not match.endswith(".dvc") and not Path(match).name.startswith("."):
                found.add(Path(match).as_posix())
    return sorted(found)


def remote_url(url: str, root: Path) -> str:
    """A URL with a scheme (s3://, gs://, ssh://, ...) as given; a local folder as an absolute path."""
    if urlparse(url).scheme and len(urlparse(url).scheme) > 1:
        return url
    return str((root / url).resolve())


def ensure_repository(root: Path, remote: dict) -> None:
    """`dvc init` once (inside the git checkout) and point the default remote at the configured one."""
    if not (root / ".git").exists():
        raise StoreError(f"{root} is not a git checkout: DVC records what it stores in .dvc files committed to git")
    if not (root / ".dvc").is_dir():
        dvc("init", "--quiet", cwd=root, what="dvc init")
        dvc("config", "core.analytics", "false", cwd=root, what="dvc config")
    dvc("remote", "add", "--force", "--default", remote["name"], remote_url(remote["url"], root), cwd=root,
        what="dvc remote add")  # fmt: skip


def dvc_files(root: Path) -> list[Path]:
    """The .dvc files of the checkout (outside .dvc/, .git/ and environments)."""
    skip = {".dvc", ".git", ".venv", ".snakemake", "node_modules"}
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip]
        out += [Path(dirpath) / f for f in filenames if f.endswith(".dvc")]
    return sorted(out)


def tracked_outputs(root: Path) -> list[str]:
    """The paths the .dvc files of the checkout stand for (relative to root)."""
    outs = []
    for path in dvc_files(root):
        spec = yaml.safe_load(path.read_text()) or {}
        for out in spec.get("outs", []):
            outs.append((path.parent / out["path"]).relative_to(root).as_posix())
    return sorted(outs)


def push(root: Path, settings: dict) -> list[str]:
    """`dvc add` every existing tracked path, `dvc push` them; returns the .dvc files to commit."""
    ensure_repository(root, settings["remote"])
    paths = resolve_tracked(root, [*settings["track"], *settings.get("also_track", [])])
    if not paths:
        raise StoreError(f"nothing to push in {root}: none of dvc.track exists yet (run the workflow first)")
    log.info("tracking %d paths: %s", len(paths), ", ".join(paths))
    dvc("add", "--quiet", *paths, cwd=root, what="dvc add")
    dvc("push", *[f"{p}.dvc" for p in paths], cwd=root, what="dvc push")
    return [f"{p}.dvc" for p in paths]


def pull(root: Path, settings: dict, snakemake_args: Sequence[str] = ()) -> list[str]:
    """`dvc pull`, then `snakemake --touch` on the pulled workflow outputs; returns what was touched."""
    ensure_repository(root, settings["remote"])
    if not dvc_files(root):
        raise StoreError(f"no .dvc files in {root}: push from a clone that ran the workflow, commit them, then pull")
    dvc("pull", cwd=root, what="dvc pull")
    never_touched = set(resolve_tracked(root, settings.get("also_track", [])))
    outputs = [p for p in tracked_outputs(root) if p not in never_touched and (root / p).exists()]
    if outputs:
        # --touch marks the outputs as made, in DAG order; it runs nothing.
        _run([sys.executable, "-m", "snakemake", "--touch", "--cores", "1", *outputs, *snakemake_args], root,
             "snakemake --touch")  # fmt: skip
    return outputs
