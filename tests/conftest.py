from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fashionblip2.config import WORKFLOW_FILES
from fashionblip2.synthetic import WorldSpec, generate_world

REPO = Path(__file__).resolve().parents[1]
# The real FashionIQ annotation files live beside the repository, never inside it (CDLA licence).
SHARED_FASHIONIQ = REPO.parent / "shared" / "data" / "fashion-iq"


def default_config() -> dict:
    """config.yaml, the one owner of every setting's default: tests build the library's settings
    from it (the library has no defaults of its own), changing only what they test."""
    return yaml.safe_load((REPO / "config.yaml").read_text())


def merged(base: dict, override: dict) -> dict:
    """``base`` with ``override``'s keys replaced, nested sections merged (as Snakemake merges a preset)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def train_config(run: str = "stage1", **overrides):
    """A TrainConfig from config.yaml's training.<run> and shared keys, with ``overrides``."""
    from fashionblip2.training.runs import train_config as from_config

    training = default_config()["training"]
    return from_config({**training[run], **overrides}, {**training, **overrides})


def variant(**spec):
    """A variant as config declares one (CIR + CTR, adapters, multi-head matching), with ``spec``."""
    from fashionblip2.training.runs import Variant

    return Variant.from_spec({"losses": ["cir", "ctr"], "adapters": True, "matching": "multihead", **spec})


def model_settings(**overrides):
    """config.yaml's model settings (the heads, the text length), with ``overrides``."""
    from fashionblip2.config import MODEL_SETTING_KEYS
    from fashionblip2.training.runs import ModelSettings

    config = default_config()
    model = {k: config["model"][k] for k in MODEL_SETTING_KEYS} | {"image_mode": config["images"]["mode"]}
    return ModelSettings(**{**model, **overrides})


def synthetic_spec(override: dict) -> dict:
    """The synthetic section of config.yaml with ``override`` merged in."""
    return merged(default_config()["synthetic"], override)


def source_settings(**roots: str) -> dict:
    """config.yaml's settings of the named sources, each with the given root."""
    sources = default_config()["sources"]
    return {name: {**sources[name], "root": root} for name, root in roots.items()}


TINY_SPEC = synthetic_spec(
    {
        "seed": 3,
        "image_size": 40,
        "fashion200k": {"items_per_category": 3, "min_views": 1, "max_views": 2},
        "deepfashion_mm": {"items": 8, "min_views": 1, "max_views": 2, "missing_caption": 0.0, "missing_shape": 0.0},
        "fashioniq": {
            "images": {"train": 6, "val": 5, "test": 3},
            "triplets": {"train": 5, "val": 4, "test": 2},
            "missing_images": 0.0,
        },
    }
)


@pytest.fixture(scope="session")
def tiny_world_session(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("world")
    generate_world(WorldSpec.from_dict(TINY_SPEC), root / "world", root / "truth.parquet", progress=False)
    return root / "world", root / "truth.parquet"


@pytest.fixture
def tiny_world(tiny_world_session, tmp_path) -> tuple[Path, Path]:
    """A private copy of the tiny world, so a test may damage it."""
    world, truth = tiny_world_session
    shutil.copytree(world, tmp_path / "world")
    shutil.copy(truth, tmp_path / "truth.parquet")
    return tmp_path / "world", tmp_path / "truth.parquet"


@pytest.fixture
def shared_fashioniq() -> Path:
    if not (SHARED_FASHIONIQ / "captions").is_dir():
        pytest.skip(f"the real FashionIQ annotation files are not at {SHARED_FASHIONIQ}")
    return SHARED_FASHIONIQ


def python_first_env(base: dict[str, str] | None = None, *before: str | os.PathLike[str]) -> dict[str, str]:
    """Rules call `python`: it must be this interpreter's environment, as after `make` or an activation
    (``before``: folders to put ahead of it, such as a wrapper's)."""
    base = dict(os.environ if base is None else base)
    return {
        **base,
        "PATH": os.pathsep.join([*map(str, before), str(Path(sys.executable).parent), base.get("PATH", "")]),
    }


def require_service(reason: str | None) -> None:
    """A test that needs a system service or program: skipped with the reason where it is missing,
    but failed under CI (CI=true), where .ci/run installs everything."""
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run this test, but: {reason}")
    pytest.skip(reason)


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = python_first_env()
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", *args], cwd=workdir, capture_output=True, text=True, timeout=900, env=env
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def workflow_copy(tmp_path: Path) -> Path:
    for name in WORKFLOW_FILES:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    return tmp_path


@pytest.fixture
def server_factory(tmp_path):
    """Start fake OpenAI-compatible servers (tests/support/fake_openai_server.py); all are killed at the end."""
    from tests.support.fake_openai_server import FakeServer

    servers = []

    def start(*args: str, env: dict | None = None) -> FakeServer:
        servers.append(FakeServer(tmp_path, *args, env=env))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()
