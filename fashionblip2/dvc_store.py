"""Versioned artefacts with DVC: push what the workflow made, pull it into another clone, and make
Snakemake treat what was pulled as done.

DVC only stores files here; Snakemake stays the pipeline. What the workflow starts from (the raw
datasets, or the embedded default's synthetic world) is pinned by one root ``data.dvc``
(``pin``): a clone that pulls it starts from exactly those bytes. Each intermediate gets its own
``.dvc`` file beside it (``data/facap.dvc``, ``models/stage1/cir_mh/seed0.dvc``), so a clone can hold
any subset; a single ``data.dvc`` over all of ``data/`` would overlap them, which DVC forbids.
After ``dvc pull`` the files have fresh modification times in a random order and the clone has no
Snakemake metadata, so Snakemake may want to rerun pulled stages; ``pull`` therefore runs
``snakemake --touch`` on exactly the pulled outputs, after which only the stages that were not
pushed are left to run.
"""

from __future__ import annotations

import glob
import json
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


DVC_CONFIG = ".dvc/config"


def project_remotes(root: Path) -> dict[str, str]:
    """The remotes of the committed .dvc/config (not config.local); a local folder as an absolute path
    (DVC stores a relative one relative to .dvc/)."""
    listed = dvc("config", "--list", "--project", cwd=root, what="dvc config --list").stdout
    remotes = {}
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "remote" and parts[2] == "url":
            local = not urlparse(value).scheme or len(urlparse(value).scheme) == 1  # C:\ is a folder
            remotes[parts[1]] = str((root / ".dvc" / value).resolve()) if local else value
    return remotes


def sync_remote(root: Path, remote: dict) -> bool:
    """Make the configured remote (dvc.remote) the default and only remote of the committed
    .dvc/config, so that a plain `dvc pull` or `dvc push` in any clone uses it and the remote has no
    second place to drift in. A local folder is given as configured, relative to the checkout: DVC
    stores it relative to .dvc/, so the committed file names no machine's absolute path. Returns
    whether .dvc/config changed (then it must be committed)."""
    config = root / DVC_CONFIG
    before = config.read_text() if config.exists() else ""
    for name in project_remotes(root):
        if name != remote["name"]:
            dvc("remote", "remove", "--project", name, cwd=root, what="dvc remote remove")
    dvc("remote", "add", "--project", "--force", "--default", remote["name"], remote["url"], cwd=root,
        what="dvc remote add")  # fmt: skip
    changed = config.read_text() != before
    if changed:
        log.warning("%s now names dvc.remote (%s: %s): commit it", DVC_CONFIG, remote["name"], remote["url"])
    return changed


def ensure_repository(root: Path, remote: dict) -> bool:
    """`dvc init` once (a clone has the committed .dvc/), and the configured remote in .dvc/config;
    returns whether .dvc/config changed."""
    if not (root / ".git").exists():
        raise StoreError(f"{root} is not a git checkout: DVC records what it stores in .dvc files committed to git")
    if not (root / ".dvc").is_dir():
        dvc("init", "--quiet", cwd=root, what="dvc init")
        dvc("config", "--project", "core.analytics", "false", cwd=root, what="dvc config")
    return sync_remote(root, remote)


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


PIN_FILE = "data.dvc"


def pinned_paths(root: Path) -> list[str]:
    """What the root data.dvc pins (relative to root); none without one."""
    pin_file = root / PIN_FILE
    if not pin_file.exists():
        return []
    return [out["path"] for out in (yaml.safe_load(pin_file.read_text()) or {}).get("outs", [])]


def _inside(path: str, folders: Sequence[str]) -> bool:
    return any(path == f or path.startswith(f.rstrip("/") + "/") for f in folders)


def pin(root: Path, settings: dict) -> list[str]:
    """Pin what the workflow starts from (``dvc.pin``: the raw datasets folder, or the synthetic world)
    in the root data.dvc, replacing the previous pin; returns the pinned paths."""
    ensure_repository(root, settings["remote"])
    paths = resolve_tracked(root, settings["pin"])
    if not paths:
        raise StoreError(f"nothing to pin: none of dvc.pin ({', '.join(settings['pin'])}) exists in {root}")
    pin_file, previous = root / PIN_FILE, root / f"{PIN_FILE}.previous"
    if pin_file.exists():  # else `dvc add` refuses a path that data.dvc already tracks
        pin_file.rename(previous)
    try:
        dvc("add", "--quiet", *paths, cwd=root, what="dvc add")
    except StoreError:
        if previous.exists():
            previous.rename(pin_file)
        raise
    outs = []
    for path in paths:
        own = root / f"{path}.dvc"  # dvc add writes <path>.dvc beside the path: one root file instead
        out = (yaml.safe_load(own.read_text()) or {})["outs"][0]
        outs.append({**out, "path": path})
        own.unlink()
    tmp = root / f"{PIN_FILE}.tmp"
    tmp.write_text(yaml.safe_dump({"outs": outs}, sort_keys=False))
    tmp.replace(pin_file)
    previous.unlink(missing_ok=True)
    return paths


def pin_problem(root: Path, settings: dict) -> str | None:
    """Why the pinned data cannot be pushed as data.dvc pins it, or None. A changed raw folder or a
    regenerated world is pinned again on purpose (``store pin``), never silently."""
    pinned = pinned_paths(root)
    if not pinned:
        return None
    if sorted(settings["pin"]) != sorted(pinned):
        return (
            f"dvc.pin names {', '.join(settings['pin']) or 'nothing'} but {PIN_FILE} pins "
            f"{', '.join(pinned)}: run `fashionblip2 store pin` (and commit {PIN_FILE})"
        )
    missing = [p for p in pinned if not (root / p).exists()]
    if missing:
        return f"{', '.join(missing)} (pinned by {PIN_FILE}) does not exist here: make or pull it first"
    # `dvc data status` compares the workspace with the .dvc files whether or not the cache holds
    # the pinned version (`dvc status` only says "not in cache" then).
    status = json.loads(dvc("data", "status", "--json", cwd=root, what="dvc data status").stdout or "{}")
    modified = {p.rstrip("/") for p in status.get("uncommitted", {}).get("modified", [])}
    changed = sorted(modified & set(pinned))
    if changed:
        return (
            f"{', '.join(changed)} differ from what {PIN_FILE} pins: run `fashionblip2 store pin` to pin them "
            f"(and commit {PIN_FILE}), or restore the pinned version with `dvc checkout {PIN_FILE}`"
        )
    return None


def push(root: Path, settings: dict) -> list[str]:
    """`dvc add` every existing tracked path and `dvc push` them, then the pinned data; returns the
    .dvc files to commit. The intermediates and the result cache are pushed first, so that a pin
    that needs attention never keeps the paid answers from their backup."""
    ensure_repository(root, settings["remote"])
    pinned = pinned_paths(root)
    paths = [
        p
        for p in resolve_tracked(root, [*settings["track"], *settings["also_track"]])
        if not _inside(p, pinned)  # pushed through data.dvc, which already tracks them
    ]
    if not paths and not pinned:
        raise StoreError(f"nothing to push in {root}: none of dvc.track exists yet (run the workflow first)")
    files = [f"{p}.dvc" for p in paths]
    if paths:
        log.info("tracking %d paths: %s", len(paths), ", ".join(paths))
        dvc("add", "--quiet", *paths, cwd=root, what="dvc add")
        dvc("push", *files, cwd=root, what="dvc push")
    problem = pin_problem(root, settings)
    if problem:
        done = f"pushed {len(files)} tracked paths (commit their .dvc files); not the pinned data: " if files else ""
        raise StoreError(done + problem)
    if pinned:
        dvc("commit", "--force", "--quiet", PIN_FILE, cwd=root, what="dvc commit")  # same bytes: into the cache
        dvc("push", PIN_FILE, cwd=root, what="dvc push")
        files.append(PIN_FILE)
    return files


def pull(root: Path, settings: dict, snakemake_args: Sequence[str] = ()) -> list[str]:
    """`dvc pull`, then `snakemake --touch` on the pulled workflow outputs; returns what was touched."""
    ensure_repository(root, settings["remote"])
    if not dvc_files(root):
        raise StoreError(f"no .dvc files in {root}: push from a clone that ran the workflow, commit them, then pull")
    dvc("pull", cwd=root, what="dvc pull")
    # Only workflow outputs are marked as made: a pinned raw folder or the cache is no rule's output.
    made = set(resolve_tracked(root, settings["track"])) - set(resolve_tracked(root, settings["also_track"]))
    outputs = [p for p in tracked_outputs(root) if p in made and (root / p).exists()]
    if outputs:
        # --touch marks the outputs as made, in DAG order; it runs nothing.
        _run([sys.executable, "-m", "snakemake", "--touch", "--cores", "1", *outputs, *snakemake_args], root,
             "snakemake --touch")  # fmt: skip
    return outputs
