"""The benchmark suite runs on CPU at smoke size and writes its table (speed itself is not tested)."""

import json
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
    assert set(suite["benchmarks"]) == {"pairing", "api_concurrency", "embedding", "eval_retrieval", "train_step"}
    assert all(b["status"] == "ok" for b in suite["benchmarks"].values())
    table = (tmp_path / "suite.md").read_text().splitlines()
    assert len(table) == 2 + 5 and "failed" not in "".join(table)
    step = suite["benchmarks"]["train_step"]["result"]
    assert step["config"] == "tiny" and step["micro_batch"] == 2 and step["seconds_per_step"] > 0
    evaluation = suite["benchmarks"]["eval_retrieval"]["result"]
    assert evaluation["same_top10_on_timed_queries"] and evaluation["speedup"] > 1
