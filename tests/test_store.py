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

from fashionblip2.dvc_store import DVC_CONFIG, project_remotes, resolve_tracked, sync_remote, tracked_outputs
from tests.conftest import REPO, WORKFLOW_FILES, python_first_env, snakemake

PRESET = ["--configfile", "config/presets/test.yaml", "store.yaml"]
DATASET_RULES = {"synthetic_world", "manifest", "embed", "gather_embeddings", "pair", "caption", "gather_captions",
                 "modification", "gather_modifications", "facap", "enhfashioniq"}  # fmt: skip


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
    for name in [*WORKFLOW_FILES, ".gitignore", "data.dvc", ".dvc", ".dvcignore"]:
        src = REPO / name
        subprocess.run(["cp", "-r", str(src), str(origin / name)], check=True)
    for scratch in ("cache", "tmp"):  # only what a clone of the repository has
        subprocess.run(["rm", "-rf", str(origin / ".dvc" / scratch)], check=True)
    remote = tmp_path / "remote"
    (origin / "store.yaml").write_text(yaml.safe_dump({"dvc": {"remote": {"name": "test", "url": str(remote)}}}))
    git(origin, "init", "-q")
    git(origin, "add", "-A")
    git(origin, "commit", "-qm", "workflow")

    # Clone 1 makes the dataset half of the tiny preset, and pushes what dvc.track names. The tiny
    # world is not the default one the committed data.dvc pins: push refuses until it is pinned.
    snakemake(origin, "--cores", "2", "results/tables/table1.md", "data/enhfashioniq", *PRESET)
    refused = store(origin, "push")
    assert refused.returncode == 2 and "data/synthetic/world differ from what data.dvc pins" in refused.stderr
    pinned = store(origin, "pin")
    assert pinned.returncode == 0 and "pinned in data.dvc: data/synthetic/world" in pinned.stdout, pinned.stderr
    pushed = store(origin, "push")
    assert pushed.returncode == 0, pushed.stderr
    assert "git add .dvc .dvcignore data" in pushed.stdout
    assert (origin / "data/facap.dvc").exists() and (origin / "data/manifest/images.parquet.dvc").exists()
    assert not (origin / "data/synthetic/world.dvc").exists()  # the world goes through the root data.dvc
    assert "results" not in tracked_outputs(origin)  # results/ is not tracked: Table 1 is remade
    # models/ too: FACap's rows carry the triplet scores, made with the tokenizer and the backbone.
    assert (origin / "models/backbone.dvc").exists()
    git(origin, "add", ".dvc", ".dvcignore", "data", "models", "data.dvc")
    # Only .dvc files, DVC's .gitignore files and .dvc/config (now naming this test's remote, from
    # store.yaml) are committed, never the data.
    staged = git(origin, "diff", "--cached", "--name-only").split()
    assert DVC_CONFIG in staged, "store push did not put the configured remote in .dvc/config"
    assert all(p.endswith((".dvc", ".gitignore")) or p == DVC_CONFIG for p in staged), staged
    git(origin, "commit", "-qm", "DVC: tracked artefacts")
    assert any(remote.rglob("*")), "dvc push wrote nothing to the remote folder"

    # Clone 2: a fresh clone. `dvc status` and `dvc pull` work as typed (the remote comes from the
    # committed .dvc/config); then `store pull` marks what was pulled as made, and Snakemake plans
    # only what was not pushed.
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(origin), str(clone))
    assert not (clone / "data/facap").exists()
    before = planned_rules(snakemake(clone, "-n", "results/tables/table1.md", *PRESET))
    assert DATASET_RULES - {"enhfashioniq"} <= before  # without a pull, everything would run
    typed = subprocess.run(["dvc", "pull"], cwd=clone, capture_output=True, text=True, env=dvc_on_path())
    assert typed.returncode == 0, typed.stdout + typed.stderr
    assert (clone / "data/facap").is_dir() and (clone / "data/synthetic/world").is_dir()
    pulled = store(clone, "pull")
    assert pulled.returncode == 0, pulled.stderr
    assert "data/facap" in pulled.stdout and "data/cache" not in pulled.stdout.split("outputs", 1)[1]
    assert "data/synthetic/world" in pulled.stdout  # pinned by data.dvc, and a workflow output: touched
    assert (clone / "data/cache").is_dir()  # the result cache came back too (pulled, not touched)
    assert planned_rules(snakemake(clone, "-n", "results/tables/table1.md", *PRESET)) == {"table1"}
    dry = snakemake(clone, "-n", "all", *PRESET)
    everything = planned_rules(dry)
    assert "table1" in everything and "train_stage1" in everything
    assert not everything & DATASET_RULES, dry.stdout

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


def dvc_on_path() -> dict[str, str]:
    """The environment of a user who typed `dvc` after activating the project's environment."""
    return python_first_env(DVC)


def test_dvc_status_works_as_typed_in_a_fresh_clone(tmp_path):
    origin = tmp_path / "origin"
    origin.mkdir()
    for name in (".dvc", ".dvcignore", ".gitignore", "data.dvc", "config.yaml"):
        subprocess.run(["cp", "-r", str(REPO / name), str(origin / name)], check=True)
    git(origin, "init", "-q")
    git(origin, "add", "-A")
    git(origin, "commit", "-qm", "repository")
    committed = git(origin, "ls-files").split()
    assert {".dvc/config", ".dvc/.gitignore", ".dvcignore"} <= set(committed)
    assert not [p for p in committed if p.startswith((".dvc/cache", ".dvc/tmp"))]
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(origin), str(clone))
    status = subprocess.run(["dvc", "status"], cwd=clone, capture_output=True, text=True, env=dvc_on_path())
    # Nothing pulled yet: DVC lists the pinned world as missing here, and exits 0.
    assert status.returncode == 0 and "data/synthetic/world" in status.stdout, status.stdout + status.stderr
    # What DVC made while it ran is ignored by git: the clone stays clean.
    assert git(clone, "status", "--porcelain") == ""


def test_the_committed_dvc_config_names_the_configured_remote():
    remote = yaml.safe_load((REPO / "config.yaml").read_text())["dvc"]["remote"]
    remotes = project_remotes(REPO)
    # One remote, the default, where dvc.remote.url points (a local folder beside the checkout).
    assert remotes == {remote["name"]: str((REPO / remote["url"]).resolve())}
    listed = subprocess.run([sys.executable, "-m", "dvc", "remote", "default", "--project"], cwd=REPO,
                            capture_output=True, text=True, check=True, env=DVC)  # fmt: skip
    assert listed.stdout.strip() == remote["name"]
    assert str(REPO) not in (REPO / DVC_CONFIG).read_text()  # no machine's absolute path is committed


def test_store_keeps_dvc_config_in_step_with_the_workflow_config(tmp_path):
    git(tmp_path, "init", "-q")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True, env=DVC)
    subprocess.run([sys.executable, "-m", "dvc", "remote", "add", "old", "/srv/old-store"], cwd=tmp_path, check=True,
                   env=DVC)  # fmt: skip
    assert sync_remote(tmp_path, {"name": "facap-store", "url": "../facap-dvc-store"})
    text = (tmp_path / DVC_CONFIG).read_text()
    assert "old" not in text and "url = ../../facap-dvc-store" in text  # relative to .dvc/, as DVC resolves it
    assert project_remotes(tmp_path) == {"facap-store": str((tmp_path / "../facap-dvc-store").resolve())}
    assert not sync_remote(tmp_path, {"name": "facap-store", "url": "../facap-dvc-store"})  # in step: unchanged
    assert sync_remote(tmp_path, {"name": "lab", "url": "s3://bucket/facap"})
    assert project_remotes(tmp_path) == {"lab": "s3://bucket/facap"}


def dvc_hash(folder: Path, tmp: Path) -> str:
    """DVC's own hash of a folder (``<md5>.dir``), computed by ``dvc add`` in a scratch repository."""
    repo = tmp / "hash"
    repo.mkdir()
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=repo, check=True, env=DVC)
    subprocess.run(["cp", "-r", str(folder), str(repo / "world")], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", "world"], cwd=repo, check=True, env=DVC)
    return yaml.safe_load((repo / "world.dvc").read_text())["outs"][0]["md5"]


DVC = {**os.environ, "DVC_NO_ANALYTICS": "1"}


def test_the_committed_data_dvc_pins_the_world_the_default_config_generates(workflow_copy, tmp_path):
    pinned = yaml.safe_load((REPO / "data.dvc").read_text())["outs"]
    assert [o["path"] for o in pinned] == yaml.safe_load((REPO / "config.yaml").read_text())["dvc"]["pin"]
    snakemake(workflow_copy, "--cores", "2", "data/synthetic/world")  # the default config, no preset
    world = workflow_copy / "data/synthetic/world"
    assert dvc_hash(world, tmp_path) == pinned[0]["md5"], (
        "the default synthetic world changed: if on purpose, regenerate it and run `fashionblip2 store pin`"
    )
    assert sum(1 for p in world.rglob("*") if p.is_file()) == pinned[0]["nfiles"]


def test_pin_replaces_the_pin_and_push_refuses_a_changed_pinned_folder(tmp_path):
    from fashionblip2.dvc_store import StoreError, pin, pinned_paths, push

    git(tmp_path, "init", "-q")
    raw = tmp_path / "data/raw/fashioniq"
    raw.mkdir(parents=True)
    (raw / "a.json").write_text("[1]")
    settings = {"remote": {"name": "t", "url": str(tmp_path / "remote")}, "pin": ["data/raw"], "track": [],
                "also_track": ["data/raw/*"]}  # fmt: skip
    assert pin(tmp_path, settings) == ["data/raw"] and pinned_paths(tmp_path) == ["data/raw"]
    assert not (tmp_path / "data/raw.dvc").exists()  # one root data.dvc, no file beside the folder
    first = yaml.safe_load((tmp_path / "data.dvc").read_text())["outs"][0]["md5"]
    # Pinned data is pushed through data.dvc (also_track names a folder inside it: not added twice).
    assert push(tmp_path, settings) == ["data.dvc"] and not (raw.parent / "fashioniq.dvc").exists()
    (raw / "a.json").write_text("[2]")
    with pytest.raises(StoreError, match="data/raw differ from what data.dvc pins"):
        push(tmp_path, settings)
    pin(tmp_path, settings)  # pinned again on purpose
    assert yaml.safe_load((tmp_path / "data.dvc").read_text())["outs"][0]["md5"] != first
    assert push(tmp_path, settings) == ["data.dvc"]
    # A config that pins something else (the paper preset's data/raw against a committed world), or
    # a pinned folder that is not there: a clear message, after the other tracked paths are pushed.
    (tmp_path / "data/cache").mkdir()
    (tmp_path / "data/cache/answer.json").write_text("{}")
    other = {**settings, "pin": ["data/synthetic/world"], "also_track": ["data/cache"]}
    with pytest.raises(StoreError, match=r"pushed 1 tracked paths .* dvc.pin names data/synthetic/world but data.dvc"):
        push(tmp_path, other)
    assert (tmp_path / "data/cache.dvc").exists()  # the paid answers were pushed all the same
    subprocess.run(["rm", "-rf", str(tmp_path / "data/raw")], check=True)
    with pytest.raises(StoreError, match=r"data/raw \(pinned by data.dvc\) does not exist here"):
        push(tmp_path, {**settings, "also_track": []})
