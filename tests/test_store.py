"""DVC round trip on the tiny preset: run and push from one clone, pull into a fresh clone, and
Snakemake recomputes only what was not pushed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fashionblip2.dvc_store import remote_url, resolve_tracked, tracked_outputs
from tests.conftest import REPO, WORKFLOW_FILES, python_first_env, snakemake

PRESET = ["--configfile", "config/presets/test.yaml", "store.yaml"]
DATASET_RULES = {"synthetic_world", "manifest", "embed", "gather_embeddings", "pair", "caption", "gather_captions",
                 "modify", "gather_modifications", "facap", "enhfashioniq"}  # fmt: skip


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def store(cwd: Path, action: str) -> subprocess.CompletedProcess:
    # The touch step runs Snakemake, whose rules call `python`.
    cmd = [sys.executable, "-m", "fashionblip2.cli", "store", action, "--configfile", *PRESET[1:]]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=python_first_env())


def planned_rules(dry_run: subprocess.CompletedProcess) -> set[str]:
    """Rules in the `Job stats` table of a dry run."""
    text = dry_run.stdout + dry_run.stderr
    if "Nothing to be done" in text:
        return set()
    table = text.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {m.group(1) for m in re.finditer(r"^(\w+)\s+\d+\s*$", table, re.M)} - {"all", "total"}


@pytest.mark.e2e
def test_push_then_pull_into_a_fresh_clone_recomputes_only_what_was_not_pushed(tmp_path):
    origin = tmp_path / "origin"
    origin.mkdir()
    for name in [*WORKFLOW_FILES, ".gitignore"]:
        src = REPO / name
        subprocess.run(["cp", "-r", str(src), str(origin / name)], check=True)
    remote = tmp_path / "remote"
    (origin / "store.yaml").write_text(yaml.safe_dump({"dvc": {"remote": {"name": "test", "url": str(remote)}}}))
    git(origin, "init", "-q")
    git(origin, "add", "-A")
    git(origin, "commit", "-qm", "workflow")

    # Clone 1 makes the dataset half of the tiny preset, and pushes what dvc.track names.
    snakemake(origin, "--cores", "2", "results/tables/table1.md", "data/enhfashioniq", *PRESET)
    pushed = store(origin, "push")
    assert pushed.returncode == 0, pushed.stderr
    assert "git add .dvc .dvcignore data" in pushed.stdout
    assert (origin / "data/facap.dvc").exists() and (origin / "data/manifest/images.parquet.dvc").exists()
    assert "results" not in tracked_outputs(origin)  # results/ is not tracked: Table 1 is remade
    git(origin, "add", ".dvc", ".dvcignore", "data")
    # Only .dvc files and DVC's .gitignore files are committed, never the data.
    staged = git(origin, "diff", "--cached", "--name-only").split()
    assert staged and all(p.endswith((".dvc", ".gitignore")) or p.startswith(".dvc") for p in staged), staged
    git(origin, "commit", "-qm", "DVC: tracked artefacts")
    assert any(remote.rglob("*")), "dvc push wrote nothing to the remote folder"

    # Clone 2: a fresh clone, pull, and Snakemake plans only what was not pushed.
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(origin), str(clone))
    assert not (clone / "data/facap").exists()
    before = planned_rules(snakemake(clone, "-n", "results/tables/table1.md", *PRESET))
    assert DATASET_RULES - {"enhfashioniq"} <= before  # without a pull, everything would run
    pulled = store(clone, "pull")
    assert pulled.returncode == 0, pulled.stderr
    assert "data/facap" in pulled.stdout and "data/cache" not in pulled.stdout.split("outputs", 1)[1]
    assert (clone / "data/cache").is_dir()  # the result cache came back too (pulled, not touched)
    assert planned_rules(snakemake(clone, "-n", "results/tables/table1.md", *PRESET)) == {"table1"}
    everything = planned_rules(snakemake(clone, "-n", "all", *PRESET))
    assert "table1" in everything and "train_stage1" in everything
    assert not everything & DATASET_RULES, everything & DATASET_RULES

    # The one job left runs and gives what clone 1 had; DVC sees nothing changed.
    snakemake(clone, "--cores", "2", "results/tables/table1.md", *PRESET)
    assert (clone / "results/tables/table1.csv").read_bytes() == (origin / "results/tables/table1.csv").read_bytes()
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=clone, capture_output=True,
                            text=True, check=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})  # fmt: skip
    assert json.loads(status.stdout) == {}


def test_pull_without_dvc_files_says_what_to_do(tmp_path):
    (tmp_path / "config").mkdir()
    for name in ("config.yaml", "config/schema.yaml"):
        (tmp_path / name).write_bytes((REPO / name).read_bytes())
    (tmp_path / "store.yaml").write_text("dvc: {remote: {name: t, url: remote}}\n")
    (tmp_path / "config/presets").mkdir()
    (tmp_path / "config/presets/test.yaml").write_bytes((REPO / "config/presets/test.yaml").read_bytes())
    no_git = store(tmp_path, "pull")
    assert no_git.returncode == 2 and "not a git checkout" in no_git.stderr
    git(tmp_path, "init", "-q")
    empty = store(tmp_path, "pull")
    assert empty.returncode == 2 and "no .dvc files" in empty.stderr


def test_tracked_paths_and_remote_urls(tmp_path):
    for path in ("data/pairs/pairs.parquet", "data/pairs/report.json", "data/pairs/report.json.dvc", "models/x/a"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x")
    assert resolve_tracked(tmp_path, ["data/pairs/*", "models/stage1/*", "models/x"]) == [
        "data/pairs/pairs.parquet", "data/pairs/report.json", "models/x"
    ]  # fmt: skip
    assert remote_url("s3://bucket/facap", tmp_path) == "s3://bucket/facap"
    assert remote_url("ssh://user@host/srv/facap", tmp_path) == "ssh://user@host/srv/facap"
    assert remote_url("../store", tmp_path / "repo") == str((tmp_path / "store").resolve())
