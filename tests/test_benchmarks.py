"""The benchmark suite runs on CPU at smoke size and writes its table (speed itself is not tested)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_the_benchmark_suite_runs_and_writes_its_table(tmp_path):
    proc = subprocess.run(
        [sys.executable, REPO / "benchmarks/run_all.py", "--smoke", "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    suite = json.loads((tmp_path / "suite.json").read_text())
    assert set(suite["benchmarks"]) == {
        "pairing", "api_concurrency", "embedding", "eval_retrieval", "train_step", "leakage",
    }  # fmt: skip
    assert all(b["status"] == "ok" for b in suite["benchmarks"].values())
    table = (tmp_path / "suite.md").read_text().splitlines()
    assert len(table) == 2 + 6 and "failed" not in "".join(table)
    step = suite["benchmarks"]["train_step"]["result"]
    assert step["config"] == "tiny" and step["micro_batch"] == 2 and step["seconds_per_step"] > 0
    evaluation = suite["benchmarks"]["eval_retrieval"]["result"]
    assert evaluation["same_top10_on_timed_queries"] and evaluation["speedup"] > 1
    leakage = suite["benchmarks"]["leakage"]["result"]
    assert leakage["planted_found"] == leakage["planted"] == 10 and leakage["x_floor"] > 0


# --- GPU benchmarks and the GPU check, on CPU ----------------------------------------------------

sys.path.insert(0, str(REPO / "benchmarks"))


def _run(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def test_captioning_benchmark_runs_the_tiny_internvl_through_the_backend(tmp_path):
    out = tmp_path / "captioning.json"
    proc = _run(
        "benchmarks/captioning.py", "--size", "tiny", "--device", "cpu", "--batch-sizes", "1,2", "--batches", "1",
        "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["size"] == "tiny" and r["device"] == "cpu" and r["load"] == "folder"
    assert [x["batch_size"] for x in r["results"]] == [1, 2]
    assert all(x["status"] == "ok" and x["images_per_s"] > 0 and x["errors"] == 0 for x in r["results"])
    # 128 new tokens for every image, forced and checked on every generated batch.
    assert r["max_new_tokens"] == 128 and r["every_batch_had_max_new_tokens"]
    assert r["paper_images_per_s"] == 1.54 and r["target_ratio"] == 10
    assert r["ratio_to_paper"] == pytest.approx(r["best"]["images_per_s"] / 1.54)
    assert r["best"]["images_per_s"] == max(x["images_per_s"] for x in r["results"])
    assert "ratio" in proc.stdout and "1.54 images/s" in proc.stdout


def test_captioning_benchmark_in_memory_matches_the_backends_attributes(tmp_path):
    """--load memory (the paper size's default) fills the backend object by hand: a renamed attribute
    in TransformersCaptioner fails here, not on a GPU."""
    out = tmp_path / "captioning.json"
    proc = _run(
        "benchmarks/captioning.py", "--size", "tiny", "--device", "cpu", "--batch-sizes", "2", "--batches", "1",
        "--max-new-tokens", "16", "--load", "memory", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["load"] == "memory" and r["every_batch_had_max_new_tokens"] and r["results"][0]["captions"] == 2


def test_the_paper_size_internvl_has_about_8b_parameters():
    import torch
    from random_internvl import build, parameter_count

    model, processor = build("paper", device="meta", dtype=torch.bfloat16)  # shapes only, no memory
    text, vision = model.config.text_config, model.config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (
        3584, 28, 28, 4,
    )  # fmt: skip
    assert text.intermediate_size == 18944 and text.vocab_size == 151_674 == len(processor.tokenizer)
    assert tuple(vision.image_size) == (448, 448) and vision.hidden_size == 1024 and vision.num_hidden_layers == 24
    assert 7.8e9 < parameter_count(model) < 8.1e9
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_the_gpu_scripts_refuse_to_run_without_a_gpu_unless_told_cpu(tmp_path):
    caption = _run("benchmarks/captioning.py", "--out", str(tmp_path / "c.json"))
    assert caption.returncode == 2 and "--device cpu" in caption.stderr
    paper_on_cpu = _run("benchmarks/captioning.py", "--device", "cpu", "--out", str(tmp_path / "c.json"))
    assert paper_on_cpu.returncode == 2 and "--size tiny" in paper_on_cpu.stderr
    workflow = _run("benchmarks/gpu_workflow.py", "--out", str(tmp_path / "w.json"))
    assert workflow.returncode == 2 and "--cpu-dry-run" in workflow.stderr
    check = subprocess.run(
        ["bash", REPO / "scripts/gpu_check.sh"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable},
    )
    assert check.returncode == 2 and "needs a GPU" in check.stdout + check.stderr
    assert not (tmp_path / "c.json").exists() and not (tmp_path / "w.json").exists()


def _fake_run(root: Path, device: str, loss: float = 1.38) -> Path:
    """The files gpu_workflow.compare reads, as one finished run writes them."""
    import numpy as np
    import pandas as pd
    from gpu_workflow import GPU_RULE_LOGS

    initialised = device == "cuda"
    probe = f"[device-probe] script=x.py cuda_initialized={initialised}"
    probe += " cuda_peak_mib=12.0 cuda_device=NVIDIA H200" if initialised else ""
    for pattern in GPU_RULE_LOGS.values():
        log = root / pattern.replace("[0-9]*", "0").replace("*", "x")
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"some output\n{probe}\n")
    (root / "data/embeddings").mkdir(parents=True)
    vectors = np.eye(4, dtype=np.float32) + (0.001 if initialised else 0.0)
    np.savez(root / "data/embeddings/images.npz", image_ids=np.array(list("abcd")), vectors=vectors)
    (root / "data/pairs").mkdir(parents=True)
    pairs = pd.DataFrame({"reference_id": list("abcd"), "target_id": list("badc")})
    pairs.to_parquet(root / "data/pairs/pairs.parquet")
    (root / "data/annotation").mkdir(parents=True)
    captions = pd.DataFrame({"image_id": list("abcd"), "text": ["red dress"] * 4, "status": ["ok"] * 4})
    captions.to_parquet(root / "data/annotation/captions.parquet")
    pairs.assign(text="is red", status="ok").to_parquet(root / "data/annotation/modifications.parquet")
    (root / "models/stage1/v").mkdir(parents=True)
    steps = [{"step": s, "loss": loss - 0.01 * s} for s in (1, 2, 3)]
    (root / "models/stage1/v/metrics.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    (root / "results/eval/stage1/v").mkdir(parents=True)
    summary = {"summary": {"mean R@10": 100.0, "Avg": 100.0}, "categories": {"dress": {"queries": 4}}}
    (root / "results/eval/stage1/v/fashioniq.json").write_text(json.dumps(summary))
    ranks = pd.DataFrame({"target_rank": [1, 2, 3, 6]})
    ranks.to_parquet(root / "results/eval/stage1/v/fashioniq_rankings.parquet")
    return root


def test_the_gpu_workflow_comparison_passes_equal_runs_and_names_each_mismatch(tmp_path):
    from gpu_workflow import TOLERANCES, compare

    gpu, ref = _fake_run(tmp_path / "gpu", "cuda"), _fake_run(tmp_path / "ref", "cpu")
    checks = compare(gpu, ref, "cuda", TOLERANCES)
    assert checks.ok, [c for c in checks.items if not c["ok"]]

    def failing(gpu_dir: Path, expected: str = "cuda") -> set[str]:
        return {c["check"].split(" (")[0] for c in compare(gpu_dir, ref, expected, TOLERANCES).items if not c["ok"]}

    # A GPU rule that ran on the CPU (a silent fallback) is a mismatch.
    assert failing(gpu, expected="cpu") == {"GPU run: every GPU rule computed on cpu"}
    # Losses beyond the tolerance, a different row count, a missing file, a collapsed embedding.
    import numpy as np
    import pandas as pd

    def fewer_captions(d: Path) -> None:
        one = pd.DataFrame({"image_id": ["a"], "text": ["x"], "status": ["ok"]})
        one.to_parquet(_fake_run(d, "cuda") / "data/annotation/captions.parquet")

    def renamed_output(d: Path) -> None:
        folder = _fake_run(d, "cuda") / "results/eval/stage1/v"
        (folder / "fashioniq_rankings.parquet").rename(folder / "other.parquet")

    def collapsed_embeddings(d: Path) -> None:
        vectors = np.ones((4, 4), dtype=np.float32)
        np.savez(_fake_run(d, "cuda") / "data/embeddings/images.npz", image_ids=np.array(list("abcd")), vectors=vectors)

    cases = {
        "training losses": lambda d: _fake_run(d, "cuda", loss=1.9),
        "same rows, columns, shapes and keys in every file": fewer_captions,
        "same output files": renamed_output,
        "image embeddings": collapsed_embeddings,
    }
    for i, (name, make) in enumerate(cases.items()):
        make(tmp_path / f"case{i}")
        assert name in failing(tmp_path / f"case{i}"), name
