"""Several training seeds and the best-on-val checkpoint: cells are means over seeds with two-way
(seeds x queries) intervals, differences are paired by seed and by query, and Tables 3-5 show the
best-on-val numbers beside the last ones."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from fashionblip2.results import tables as et
from fashionblip2.results.experiments import DIFFERENCES, Origin, write_table3, write_table4, write_table5
from fashionblip2.results.significance import (
    BOOTSTRAP_TEST,
    PERMUTATION_TEST,
    Floor,
    bootstrap_floor,
    bootstrap_p_value,
    confidence_intervals,
    holm,
    holm_with_bounds,
    paired_difference,
    permutation_floor,
)
from fashionblip2.results.writing import TableFiles
from tests.conftest import REPO
from tests.results.test_tables import write_eval

BOOTSTRAP = et.Bootstrap(samples=200, seed=0)
SPECS = {
    "a": {"losses": ["cir"], "adapters": False, "matching": "global"},
    "b": {"losses": ["cir"], "adapters": True, "matching": "multihead"},
}


def write_seed_eval(root, stage, variant, dataset, base, seed=None, checkpoint=None, step=None, n=100):
    """write_eval's files (Avg = base + 6) for one seed and checkpoint, in a folder of their own;
    ``seed``/``checkpoint``/``step`` None: the JSON has no such key (a file from before them)."""
    folder = root / f"seed{seed}" / (checkpoint or "none")
    result, rankings = write_eval(folder, stage, variant, dataset, base, n)
    data = json.loads(result.read_text())
    extra = {"seed": seed, "checkpoint": checkpoint, "step": step}
    result.write_text(json.dumps(data | {k: v for k, v in extra.items() if v is not None}))
    return result, rankings


def load(written):
    results, rankings = zip(*written, strict=True)
    return et.Evaluations.load(results, rankings, BOOTSTRAP)


def rankings(h10, h50, categories):
    n = len(h10)
    return pd.DataFrame(
        {
            "category": categories,
            "reference": [f"r{i}" for i in range(n)],
            "target": [f"t{i}" for i in range(n)],
            "text": ["x"] * n,
            "hit@10": h10,
            "hit@50": h50,
        }
    )


# --- the numbers


def test_two_seeds_with_different_hit_rates_give_their_mean(tmp_path):
    evals = load(
        [
            write_seed_eval(tmp_path, "stage1", "a", "fashioniq", 10, seed=0, checkpoint="last"),
            write_seed_eval(tmp_path, "stage1", "a", "fashioniq", 20, seed=1, checkpoint="last"),
        ]
    )
    e = evals["stage1", "a", "fashioniq"]
    assert e.seeds == (0, 1) and e.checkpoint == "last" and len(e.seed_rankings) == 2
    assert e.intervals["Avg"].value == pytest.approx((16 + 26) / 2)  # each seed's Avg is base + 6
    assert e.intervals["shirt R@10"].value == pytest.approx((11 + 21) / 2)
    assert e.intervals["Avg"].low < 21 < e.intervals["Avg"].high
    assert e.rankings is e.seed_rankings[0] and e.result["seed"] == 0  # Figure 6: the first seed's


def test_the_two_way_interval_is_wider_when_seeds_disagree_and_the_same_when_they_agree(tmp_path):
    n = 600
    rng = np.random.default_rng(0)
    cats = np.repeat(["dress", "shirt", "toptee"], n // 3)
    low, high = (rng.random(n) < 0.3), (rng.random(n) < 0.5)
    query_only = {
        s: confidence_intervals(rankings(h, h, cats), 400, 0)["Avg"] for s, h in (("low", low), ("high", high))
    }
    two_way = confidence_intervals([rankings(low, low, cats), rankings(high, high, cats)], 400, 0)["Avg"]
    assert two_way.value == pytest.approx((query_only["low"].value + query_only["high"].value) / 2)
    # About 20 points between the seeds: the draws of one seed twice reach both of its intervals' ends.
    assert two_way.half_width > 3 * max(q.half_width for q in query_only.values())
    assert two_way.low < query_only["low"].high and two_way.high > query_only["high"].low
    # Two seeds with the same hits: drawing seeds changes nothing, the interval is the one over queries.
    same = confidence_intervals([rankings(low, low, cats)] * 2, 400, 0)
    assert same == confidence_intervals(rankings(low, low, cats), 400, 0)


# The old (one-seed) code's numbers on these rankings, from commit 8fb5b4e: one seed must keep them.
N_OLD = 300
CATS_OLD = np.repeat(["dress", "shirt", "toptee"], [90, 120, 90])
Q = np.arange(N_OLD)
OLD_A = rankings(Q % 3 == 0, Q % 3 != 2, CATS_OLD)
OLD_B = rankings((Q % 3 == 0) & (Q % 13 != 0) | (Q % 17 == 1), (Q % 3 != 2) & (Q % 11 != 0), CATS_OLD)


def test_one_seed_reproduces_the_query_bootstrap_and_the_permutation_test_exactly(tmp_path):
    for given in (OLD_A, [OLD_A]):
        ci = confidence_intervals(given, 200, 0)
        assert (ci["Avg"].value, ci["Avg"].low, ci["Avg"].high) == (
            49.99999999999999,
            45.642361111111114,
            54.86458333333333,
        )
        assert (ci["shirt R@10"].low, ci["shirt R@10"].high) == (25.812500000000007, 41.70833333333335)
    for a, b in ((OLD_A, OLD_B), ([OLD_A], [OLD_B])):
        d = paired_difference(a, b, samples=200, seed=0)
        assert (d.interval.value, d.interval.low, d.interval.high) == (
            2.361111111111107,
            0.08333333333332371,
            4.311342592592582,
        )
        assert d.p_value == 7 / 201 and d.test == PERMUTATION_TEST and d.seeds == 1
        assert d.floor == Floor.permutation(200) and not d.p_at_floor
    # Through the files: one without "seed" and "checkpoint" is seed 0's last checkpoint, as before.
    result, ranks = write_seed_eval(tmp_path, "stage1", "a", "fashioniq", 20)
    evals = et.Evaluations.load([result], [ranks], BOOTSTRAP)
    e = evals["stage1", "a", "fashioniq", "last"]
    assert e.seeds == (0,) and e.intervals == confidence_intervals(pd.read_parquet(ranks), 200, 0)
    assert evals.best("stage1", "a") is None and evals.get(("stage1", "a", "fashioniq", "best")) is None


def test_a_seed_on_other_queries_a_repeated_seed_and_different_seed_sets_are_refused(tmp_path):
    other = write_seed_eval(tmp_path, "stage1", "a", "fashioniq", 20, seed=1, n=40)
    with pytest.raises(ValueError, match=r"seed1/none/stage1/a/fashioniq_rankings.parquet does not hold the same"):
        load([write_seed_eval(tmp_path, "stage1", "a", "fashioniq", 10, seed=0), other])
    twice = [write_seed_eval(tmp_path / x, "stage1", "a", "fashioniq", 10, seed=0) for x in ("p", "q")]
    with pytest.raises(ValueError, match="are both seed 0 of the evaluation of a"):
        load(twice)
    evals = load(
        [write_seed_eval(tmp_path, "stage1", v, "fashioniq", 10, seed=s) for v, s in (("a", 0), ("a", 1), ("b", 0))]
        + [write_seed_eval(tmp_path, "stage1", "b", "fashioniq", 10, seed=2)]
    )
    with pytest.raises(ValueError, match=r"\(seeds 0, 1\) with the evaluation of b \(stage1\) .*\(seeds 0, 2\)"):
        evals.difference(("stage1", "a", "fashioniq"), ("stage1", "b", "fashioniq"))
    with pytest.raises(ValueError, match="as many seeds"):
        paired_difference([OLD_A, OLD_A], [OLD_B])
    with pytest.raises(ValueError, match="unknown checkpoint 'middle'"):
        load([write_seed_eval(tmp_path / "m", "stage1", "a", "fashioniq", 10, seed=0, checkpoint="middle")])


# --- the tests of a difference


def test_the_bootstrap_p_by_hand():
    assert bootstrap_p_value(np.array([1.0, 2.0, 3.0, 4.0])) == 2 / 5 == bootstrap_floor(4)
    assert bootstrap_p_value(np.array([-1.0, 2.0, 3.0, 4.0])) == 2 * 2 / 5
    assert bootstrap_p_value(np.array([0.0, 2.0, 3.0, 4.0])) == 2 * 2 / 5  # a replicate at 0 counts on both sides
    assert bootstrap_p_value(np.array([-1.0, -2.0, 3.0, 4.0])) == 1.0  # 2 * 3 / 5, capped
    assert bootstrap_p_value(np.zeros(9)) == 1.0


def test_opposite_seeds_are_not_significant_though_one_seed_alone_would_be(tmp_path):
    # a - b: +20 points on seed 0, -10 on seed 1 (mean +5). The permutation test over seed 0's
    # queries calls it certain; the bootstrap over seeds and queries draws seed 1 twice a quarter of the time.
    written = [
        write_seed_eval(tmp_path, "stage1", v, "fashioniq", base, seed=s, checkpoint="last")
        for v, s, base in (("a", 0, 30), ("a", 1, 10), ("b", 0, 10), ("b", 1, 20))
    ]
    both = load(written).difference(("stage1", "a", "fashioniq"), ("stage1", "b", "fashioniq"))
    assert both.interval.value == pytest.approx(5)
    assert both.test == BOOTSTRAP_TEST and both.seeds == 2 and both.draws == 200
    assert both.p_value > 0.25 and both.interval.low < 0 < both.interval.high
    first = load([written[0], written[2]]).difference(("stage1", "a", "fashioniq"), ("stage1", "b", "fashioniq"))
    assert first.test == PERMUTATION_TEST and first.p_value == permutation_floor(200) and first.p_at_floor
    diff = et.comparisons(load(written), [("a minus b", ("stage1", "a"), ("stage1", "b"))], datasets=("fashioniq",))
    assert diff["Test"].tolist() == [BOOTSTRAP_TEST] and diff["Significant (95 %)"].tolist() == ["no"]


def test_seeds_that_agree_reach_the_bootstrap_floor_and_print_below_its_bound(tmp_path):
    written = [
        write_seed_eval(tmp_path, "stage1", v, "fashioniq", base, seed=s)
        for v, s, base in (("a", 0, 30), ("a", 1, 32), ("b", 0, 10), ("b", 1, 12))
    ]
    diff = et.comparisons(load(written), [("a minus b", ("stage1", "a"), ("stage1", "b"))], datasets=("fashioniq",))
    assert diff["p"].astype(float).tolist() == [bootstrap_floor(200)] and diff["p at floor"].tolist() == ["yes"]
    assert f"{diff['p'].iloc[0]:.3f}" == "< 0.01" and diff["Significant (95 %)"].tolist() == ["yes"]
    assert diff.loc[0, "Avg difference"].value == pytest.approx(20)


def test_holm_bounds_each_p_by_its_own_floor():
    perm, boot = Floor.permutation(1000), Floor.bootstrap(1000)
    p = [perm.value, boot.value, 0.2, boot.value]
    raw, adjusted = holm_with_bounds(p, [perm, boot, None, boot])
    assert [f"{x:.3f}" for x in raw] == ["< 0.001", "< 0.002", "0.200", "< 0.002"]
    assert [float(x) for x in adjusted] == pytest.approx(holm(p).tolist())
    # Bounds 0.001, 0.002, 0.2, 0.002: Holm 0.004, 0.006, 0.2, 0.006 (the two 0.002 at 3 and 2 -> 0.006).
    assert [f"{x:.3f}" for x in adjusted] == ["< 0.004", "< 0.006", "0.200", "< 0.006"]
    # A bootstrap p of 1/1001 is not at the bootstrap floor (2/1001): the number, not a bound.
    raw, _ = holm_with_bounds([1 / 1001], [boot])
    assert f"{raw[0]:.4f}" == "0.0010"


# --- last and best on val in the tables


def write_run(root, best=True, seeds=(0, 1), skip_best=()):
    """Variants a and b, both stages, both evaluation sets, every seed; the last checkpoint's base
    per (stage, variant), the seed adding 2 per seed; best on val (FashionIQ only) 3 points above,
    chosen at step 100 * (seed + 1) (+ 1000 at stage 2). ``skip_best``: (stage, variant) without."""
    written = []
    for stage_n, stage in enumerate(("stage1", "stage2")):
        for v_n, v in enumerate(("a", "b")):
            base = 10 + 20 * stage_n + 5 * v_n
            for s in seeds:
                for d, shift in (("fashioniq", 0), ("enhfashioniq", 4)):
                    written.append(write_seed_eval(root, stage, v, d, base + 2 * s + shift, seed=s, checkpoint="last"))
                if best and (stage, v) not in skip_best:
                    step = 100 * (s + 1) + 1000 * stage_n
                    written.append(write_seed_eval(root, stage, v, "fashioniq", base + 2 * s + 3, s, "best", step))
    return load(written)


def avg(stage, variant, best=False, enh=False, seeds=(0, 1)):
    base = 10 + 20 * (stage == "stage2") + 5 * (variant == "b")
    return base + 2 * np.mean(seeds) + (3 if best else 0) + (4 if enh else 0) + 6


def test_best_on_val_columns_hold_the_best_files_recalls(tmp_path):
    evals = write_run(tmp_path)
    assert evals["stage2", "b", "fashioniq", "best"] is evals.best("stage2", "b")
    assert evals.best("stage2", "b").steps == (1100, 1200) and evals.best("stage2", "b").seeds == (0, 1)
    assert evals.best("stage1", "a", "enhfashioniq") is None  # chosen on FashionIQ val: FashionIQ only

    t3 = et.table3(evals, {"without_finetuning": "a", "with_finetuning": "b"}, "ours")
    ours = t3[t3["Rows from"] == "ours"].set_index("Model")
    assert list(ours.index) == [
        "chance (random ranking)",
        "FashionBLIP-2 (a)",
        f"FashionBLIP-2 (a) {et.BEST_ROW}",
        "FashionBLIP-2 (b)",
        f"FashionBLIP-2 (b) {et.BEST_ROW}",
    ]
    assert et.BEST_ROW == "best on val (selected on the reported set)"
    best_a = ours.loc[f"FashionBLIP-2 (a) {et.BEST_ROW}"]
    assert best_a["Setting"] == et.WITHOUT_FT and best_a["Avg"].value == pytest.approx(avg("stage1", "a", best=True))
    assert best_a["Shirts R@10"].value == pytest.approx(10 + 1 + 3 + 1)  # base + i + best's 3, mean seed +1
    assert ours.loc["FashionBLIP-2 (b)"]["Avg"].value == pytest.approx(avg("stage2", "b"))

    t4 = et.table4(evals, [{"model": "M", "without_facap": "a", "with_facap": "b"}], "ours")
    assert list(t4.columns) == [
        "Model",
        "Pretrain on FACap",
        "Fine-tune on FIQ",
        "FIQ",
        "FIQ (best on val)",
        "enhFIQ",
        "Rows from",
    ]
    assert t4.loc[1, "FIQ (best on val)"].value == pytest.approx(avg("stage2", "b", best=True))
    assert t4.loc[1, "FIQ"].value == pytest.approx(avg("stage2", "b"))
    assert t4.loc[1, "enhFIQ"].value == pytest.approx(avg("stage2", "b", enh=True))
    assert np.isnan(t4.loc[2, "FIQ (best on val)"])  # a reported row: no such number

    t5 = et.table5(evals, ["a", "b"], SPECS, "ours")
    assert [c for c in t5.columns if "FIQ" in c] == [
        "no fine-tuning FIQ",
        "no fine-tuning FIQ (best on val)",
        "no fine-tuning enhFIQ",
        "w/ fine-tuning FIQ",
        "w/ fine-tuning FIQ (best on val)",
        "w/ fine-tuning enhFIQ",
    ]
    assert t5.loc[0, "no fine-tuning FIQ (best on val)"].value == pytest.approx(avg("stage1", "a", best=True))
    assert t5.loc[1, "w/ fine-tuning FIQ (best on val)"].value == pytest.approx(avg("stage2", "b", best=True))
    assert t5["Rows from"].tolist().count(et.REPORTED) == len(et.TABLE5_REPORTED)

    # The differences stay on the last checkpoints.
    diff = et.table4_comparisons(evals, [{"model": "M", "without_facap": "a", "with_facap": "b"}])
    assert diff.loc[0, "Avg difference"].value == pytest.approx(5) and set(diff["Test"]) == {BOOTSTRAP_TEST}


def table_files(tmp_path, name):
    return TableFiles(
        *(str(tmp_path / f"{name}.{e}") for e in ("md", "csv", "tex")), {DIFFERENCES: str(tmp_path / f"{name}_d.csv")}
    )


def test_the_written_tables_say_what_last_best_and_the_seeds_are(tmp_path):
    evals = write_run(tmp_path / "eval")
    origin = Origin("synthetic", "default")
    write_table3(evals, {"without_finetuning": "a", "with_finetuning": "b"}, origin, table_files(tmp_path, "t3"))
    write_table4(evals, [{"model": "M", "without_facap": "a", "with_facap": "b"}], origin, table_files(tmp_path, "t4"))
    write_table5(evals, ["a", "b"], SPECS, origin, table_files(tmp_path, "t5"))
    for name in ("t3", "t4", "t5"):
        md = (tmp_path / f"{name}.md").read_text()
        assert et.LAST_AND_BEST_NOTE in md and et.DIFFERENCES_ON_LAST_NOTE in md
        assert "Each cell of ours is the mean over 2 seeds (seeds 0, 1)." in md
        assert "two-way bootstrap interval over seeds and queries" in md and "only 3 distinct multisets" in md
        assert "Test: 'bootstrap over seeds and queries'" in md and "over 2 seeds (seeds 0, 1)" in md
        assert ("enhFIQ has no best-on-val column" in md) == (name != "t3")
        assert "| p " in md and "| Test " in md and "p (permutation)" not in md
    md = (tmp_path / "t4.md").read_text()
    assert "Best on val, the step chosen: a (stage2): step 1100 (seed 0), 1200 (seed 1); b (stage2): step " in md
    csv = pd.read_csv(tmp_path / "t4.csv")
    assert {"FIQ (best on val)", "FIQ (best on val) low", "FIQ (best on val) high"} <= set(csv.columns)
    assert csv.loc[0, "FIQ (best on val)"] == pytest.approx(avg("stage2", "a", best=True))
    diff = pd.read_csv(tmp_path / "t5_d.csv")
    assert list(diff.columns) == [
        "Comparison",
        "Evaluation set",
        "Avg difference",
        "Avg difference low",
        "Avg difference high",
        "p",
        "p (Holm)",
        "p at floor",
        "Significant (95 %)",
        "Test",
    ]
    assert len(diff) == (2 * 1 + 2) * 2 and set(diff["Test"]) == {BOOTSTRAP_TEST}
    # 8 rows at the bootstrap floor 2/201: Holm p 8 x 2/201 > 0.05, nothing can be significant, and the note says so.
    assert set(diff["p at floor"]) == {"yes"} and set(diff["Significant (95 %)"]) == {"no"}
    assert "With 200 draws and 8 rows no row can be significant" in (tmp_path / "t5.md").read_text()
    assert "no row can be significant" not in (tmp_path / "t4.md").read_text()  # 2 rows: 2 x 2/201 < 0.05


def test_a_table_without_best_files_builds_without_best_columns(tmp_path):
    evals = write_run(tmp_path / "eval", best=False, seeds=(0,))
    t4 = et.table4(evals, [{"model": "M", "without_facap": "a", "with_facap": "b"}], "ours")
    assert "FIQ (best on val)" not in t4.columns
    t5 = et.table5(evals, ["a", "b"], SPECS, "ours")
    assert not [c for c in t5.columns if "best on val" in c]
    t3 = et.table3(evals, {"without_finetuning": "a", "with_finetuning": "b"}, "ours")
    assert not t3["Model"].str.contains("best on val").any()
    write_table5(evals, ["a", "b"], SPECS, Origin("synthetic", "default"), table_files(tmp_path, "t5"))
    md = (tmp_path / "t5.md").read_text()
    assert et.NO_BEST_NOTE in md and et.LAST_AND_BEST_NOTE not in md
    assert "Each cell of ours is one training run's (seed 0)" in md
    assert "Test: 'permutation over queries'" in md and "200 sign-flip draws" in md
    assert set(pd.read_csv(tmp_path / "t5_d.csv")["Test"]) == {PERMUTATION_TEST}


def test_a_model_without_its_best_file_shows_a_dash_and_is_named(tmp_path):
    evals = write_run(tmp_path / "eval", skip_best={("stage1", "b"), ("stage2", "a")})
    t5 = et.table5(evals, ["a", "b"], SPECS, "ours")
    assert np.isnan(t5.loc[1, "no fine-tuning FIQ (best on val)"]) and np.isnan(
        t5.loc[0, "w/ fine-tuning FIQ (best on val)"]
    )
    notes = et.checkpoint_notes(evals, et.table5_models(["a", "b"]))
    assert (
        "No best-on-val evaluation was given for b (stage1), a (stage2): its best-on-val numbers are not available."
        in notes
    )
    write_table5(evals, ["a", "b"], SPECS, Origin("synthetic", "default"), table_files(tmp_path, "t5"))
    row_b = next(line for line in (tmp_path / "t5.md").read_text().splitlines() if line.startswith("| b "))
    assert row_b.split("|")[6].strip() == "–"  # no fine-tuning FIQ (best on val)


def test_table6_and_figure5_use_the_means_over_seeds(tmp_path):
    written = [
        write_seed_eval(tmp_path, stage, v, d, base + 2 * s, seed=s)
        for stage in ("stage1", "stage2")
        for v, base in (("a", 10), ("a_unfiltered", 14))
        for d in ("fashioniq", "enhfashioniq")
        for s in (0, 1)
    ]
    evals = load(written)
    t6 = et.table6(evals, {"variants": ["a"]}, "ours")
    assert t6.loc[1, "no fine-tuning FIQ"].value == pytest.approx(10 + 1 + 6)
    diff = et.table6_comparisons(evals, {"variants": ["a"]})
    assert diff.loc[0, "Avg difference"].value == pytest.approx(-4) and set(diff["Test"]) == {BOOTSTRAP_TEST}
    series, frame = et.fraction_series(evals, [(0.5, "a_unfiltered"), (1.0, "a")])
    assert [i.value for i in series["FashionIQ val"]["Avg"]] == pytest.approx([21, 17])


def test_make_results_reads_every_seed_and_the_best_files(tmp_path):
    files = [
        write_seed_eval(tmp_path / "eval", "stage2", v, "fashioniq", 30 + 5 * (v == "b") + 2 * s, s, "last")
        for v in ("a", "b")
        for s in (0, 1)
    ]
    files += [
        write_seed_eval(tmp_path / "eval", "stage2", v, "enhfashioniq", 34 + 5 * (v == "b") + 2 * s, s, "last")
        for v in ("a", "b")
        for s in (0, 1)
    ]
    files += [
        write_seed_eval(tmp_path / "eval", "stage2", v, "fashioniq", 33 + 5 * (v == "b") + 2 * s, s, "best", 7 + s)
        for v in ("a", "b")
        for s in (0, 1)
    ]
    results, ranks = zip(*files, strict=True)
    out = tmp_path / "tables"
    command = [
        sys.executable,
        str(REPO / "workflow_scripts" / "make_results.py"),
        "table4",
        "--spec",
        json.dumps([{"model": "FashionBLIP-2", "without_facap": "a", "with_facap": "b"}]),
        "--results",
        *map(str, results),
        "--rankings",
        *map(str, ranks),
        "--bootstrap",
        json.dumps({"samples": 200, "seed": 0}),
        "--data",
        "synthetic",
        "--run-name",
        "default",
        *("--md", str(out / "table4.md"), "--csv", str(out / "table4.csv")),
        *("--tex", str(out / "table4.tex"), "--differences", str(out / "table4_differences.csv")),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(out / "table4.csv")
    assert table.loc[1, "FIQ (best on val)"] == pytest.approx(35 + 1 + 3 + 6)
    assert table.loc[1, "FIQ"] == pytest.approx(35 + 1 + 6)
    md = (out / "table4.md").read_text()
    assert "step 7 (seed 0), 8 (seed 1)" in md
    print(md)  # the rendered example (pytest -s)
