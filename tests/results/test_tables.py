"""Tables 3-5 from evaluation files: our rows beside the paper's, never mixed."""

import io
import json

import numpy as np
import pandas as pd
import pytest

from fashionblip2.results import tables as et
from fashionblip2.results.significance import Difference, holm, permutation_floor
from fashionblip2.results.writing import TableFiles, as_numbers, for_display, write_table

CATEGORIES = ("dress", "shirt", "toptee")


def write_eval(root, stage, variant, dataset, base, n=100):
    """A model's evaluation files whose hits give R@10 = base + i and R@50 = base + 10 + i (in percent)
    on category i, for n queries per category (the same queries for every model)."""
    cats, rows = {}, []
    for i, c in enumerate(CATEGORIES):
        for q in range(n):
            rows.append(
                {
                    "category": c,
                    "reference": f"{c}{q}",
                    "target": f"t{c}{q}",
                    "text": "x",
                    "top": ["y"],
                    "target_rank": 1 if 100 * q < (base + i) * n else 60,
                    "hit@10": 100 * q < (base + i) * n,
                    "hit@50": 100 * q < (base + 10 + i) * n,
                }
            )
        cats[c] = {
            "R@10": base + i,
            "R@50": base + 10 + i,
            "gallery": 80,
            "queries": n,
            "chance R@10": 12.5,
            "chance R@50": 62.5,
        }
    summary = {"mean R@10": base + 1, "mean R@50": base + 11, "Avg": base + 6}
    chance = {"mean R@10": 12.5, "mean R@50": 62.5, "Avg": 37.5}
    folder = root / stage / variant
    folder.mkdir(parents=True, exist_ok=True)
    result = {
        "categories": cats,
        "summary": summary,
        "chance": chance,
        "stage": stage,
        "variant": variant,
        "dataset": dataset,
    }
    (folder / f"{dataset}.json").write_text(json.dumps(result))
    pd.DataFrame(rows).to_parquet(folder / f"{dataset}_rankings.parquet")
    return folder / f"{dataset}.json", folder / f"{dataset}_rankings.parquet"


@pytest.fixture
def evals(tmp_path):
    files = []
    for n, v in enumerate(["a", "b", "c"]):
        for stage in ("stage1", "stage2"):
            for d, shift in (("fashioniq", 0), ("enhfashioniq", 5)):
                files.append(
                    write_eval(tmp_path / "eval", stage, v, d, 10 * n + (20 if stage == "stage2" else 0) + shift)
                )
    results, rankings = zip(*files, strict=True)
    return et.Evaluations.load(results, rankings, et.Bootstrap(samples=200, seed=0))


def test_table3_puts_our_rows_chance_and_reported_rows_apart(evals, tmp_path):
    frame = et.table3(evals, {"without_finetuning": "a", "with_finetuning": "b"}, "this run (synthetic data)")
    ours = frame[frame["Rows from"] == "this run (synthetic data)"]
    assert list(ours["Model"]) == ["chance (random ranking)", "FashionBLIP-2 (a)", "FashionBLIP-2 (b)"]
    assert ours.iloc[1]["Shirts R@50"].value == 11 and ours.iloc[2]["Avg"].value == pytest.approx(10 + 20 + 6)
    assert ours.iloc[1]["Avg"].low < 6 < ours.iloc[1]["Avg"].high
    assert ours.iloc[0]["Avg"] == 37.5  # chance: exact, no interval
    reported = frame[frame["Rows from"] == et.REPORTED]
    assert len(reported) == len(et.TABLE3_REPORTED)
    assert reported[reported["Model"] == "FashionBLIP-2"]["Avg"].tolist() == [44.6, 65.9]
    write_table(frame, TableFiles(*(str(tmp_path / f"t3.{e}") for e in ("md", "csv", "tex"))), "Table 3", ["note"])
    md = (tmp_path / "t3.md").read_text()
    assert "reported by the paper" in md
    half = ours.iloc[1]["Avg"].half_width
    assert f"6.00 ± {half:.2f}" in md and "| 44.60 " in md  # our cells with intervals, reported ones plain
    assert "\\begin{tabular}" in (tmp_path / "t3.tex").read_text()
    csv = pd.read_csv(tmp_path / "t3.csv")
    assert len(csv) == len(frame)
    assert csv.loc[1, "Avg low"] == ours.iloc[1]["Avg"].low and csv.loc[1, "Avg"] == pytest.approx(6)
    assert csv["Avg low"].isna().sum() == len(et.TABLE3_REPORTED) + 1  # reported rows and chance: no bounds


def test_reported_rows_that_do_not_add_up_are_marked_and_explained(evals):
    slips = et.table3_inconsistencies()
    assert sorted(model for _, model in slips) == ["Context-I2W", "FTI4CIR", "SPRC", "TG-CIR"]
    assert "per-category R@10 average 29.39, not the reported mean 20.39" in slips[(et.WITHOUT_FT, "FTI4CIR")]
    assert "reported means give Avg 62.20, not 58.0" in slips[(et.WITH_FT, "TG-CIR")]
    assert "Avg 38.35, not 39.3" in slips[(et.WITHOUT_FT, "Context-I2W")]
    assert "Avg 64.94, not 64.8" in slips[(et.WITH_FT, "SPRC")]
    # Rows consistent up to the decimals shown are left alone; a made-up slip is found.
    assert et.table3_inconsistencies([(et.WITH_FT, "x", 10, 20, 12, 22, 14, 24, 12.0, 22.0, 17.0)]) == {}
    assert et.table3_inconsistencies([(et.WITH_FT, "x", 10, 20, 12, 22, 14, 24, 12.0, 22.0, 18.0)])
    frame = et.table3(evals, {"without_finetuning": "a", "with_finetuning": "b"}, "this run (synthetic data)")
    marked = frame[frame["Model"].str.endswith(et.INCONSISTENT)]
    assert sorted(marked["Model"]) == [f"{m} {et.INCONSISTENT}" for m in ("Context-I2W", "FTI4CIR", "SPRC", "TG-CIR")]
    assert marked[marked["Model"].str.startswith("TG-CIR")]["Avg"].tolist() == [58.0]  # kept as reported
    (note,) = et.table3_inconsistency_notes()
    assert note.startswith(et.INCONSISTENT) and all(m in note for m in ("FTI4CIR", "TG-CIR", "SPRC", "Context-I2W"))


def test_table4_and_table5_read_stage_and_dataset(evals):
    t4 = et.table4(evals, [{"model": "M", "without_facap": "a", "with_facap": "b"}], "ours")
    values = t4.map(lambda v: round(getattr(v, "value", v), 6) if isinstance(v, float | et.Interval) else v)
    assert values.iloc[0][["Pretrain on FACap", "FIQ", "enhFIQ"]].tolist() == ["no", 26, 31]
    assert values.iloc[1][["Pretrain on FACap", "FIQ", "enhFIQ"]].tolist() == ["yes", 36, 41]
    variants = {
        "a": {"losses": ["cir"], "adapters": False, "matching": "global"},
        "c": {"losses": ["cir", "ctr"], "adapters": True, "matching": "multihead"},
    }
    t5 = et.table5(evals, ["a", "c"], variants, "ours")
    assert t5.iloc[0][["Training tasks", "Adapter", "Matching"]].tolist() == ["CIR", "no", "Global"]
    assert t5.iloc[1][["Training tasks", "Adapter", "Matching"]].tolist() == ["CIR+CTR", "yes", "MH"]
    assert [round(v.value, 6) for v in t5.iloc[1][["no fine-tuning FIQ", "w/ fine-tuning enhFIQ"]]] == [26, 51]
    assert (t5["Rows from"] == et.REPORTED).sum() == 4


def test_a_missing_evaluation_is_named(evals):
    with pytest.raises(et.MissingEvaluation, match="nope"):
        et.table3(evals, {"without_finetuning": "nope", "with_finetuning": "b"}, "ours")


def test_rankings_that_do_not_match_their_summary_are_refused(tmp_path):
    result, _ = write_eval(tmp_path, "stage1", "a", "fashioniq", 10)
    _, other = write_eval(tmp_path, "stage1", "b", "fashioniq", 10, n=40)
    with pytest.raises(ValueError, match="does not hold the queries"):
        et.Evaluations.load([result], [other], et.Bootstrap(samples=100, seed=0))


def test_comparisons_report_each_pair_with_its_interval_and_test(evals):
    spec = [{"model": "M", "without_facap": "a", "with_facap": "c"}]
    diff = et.table4_comparisons(evals, spec)
    assert diff["Comparison"].tolist() == ["M: with FACap minus without"] * 2
    fiq = diff.iloc[0]["Avg difference"]
    assert fiq.value == pytest.approx(20) and fiq.low > 0  # 20 points on 300 queries: clearly significant
    assert diff.iloc[0]["Significant (95 %)"] == "yes" and diff.iloc[0]["p"] < 0.05
    assert list(diff.columns) == et.COMPARISON_COLUMNS
    t5 = et.table5_comparisons(evals, ["a", "b", "c"])
    assert t5["Comparison"].tolist()[:2] == ["b minus a (no fine-tuning)"] * 2 and len(t5) == (2 * 2 + 3) * 2
    assert t5["Comparison"].tolist()[-1] == "c: with minus without fine-tuning"
    # The family is the whole section: every row of Table 5's comparisons, both evaluation sets.
    raw = t5["p"].astype(float).to_numpy()
    assert t5["p (Holm)"].astype(float).tolist() == pytest.approx(holm(raw).tolist())
    assert (t5["Significant (95 %)"] == np.where(holm(raw) < 0.05, "yes", "no")).all()
    assert (t5["p at floor"] == np.where(raw == permutation_floor(200), "yes", "no")).all()


class Given:
    """Evaluations whose differences are given: what comparisons() makes of prescribed p-values."""

    def __init__(self, differences, samples=1000):
        self.bootstrap = et.Bootstrap(samples=samples, seed=0)
        self.differences = iter(differences)

    def difference(self, a, b):
        return next(self.differences)


def test_significant_means_the_holm_p_and_the_interval_stays_unadjusted():
    floor = permutation_floor(1000)
    given = [
        Difference(et.Interval(2.0, 0.5, 3.5), 0.03, 1000),  # interval excludes 0, raw p < 0.05
        Difference(et.Interval(1.0, -0.5, 2.5), 0.04, 1000),
        Difference(et.Interval(9.0, 7.0, 11.0), floor, 1000),  # no draw as extreme
        Difference(et.Interval(0.1, -2.0, 2.2), 0.5, 1000),
    ]
    pairs = [("x minus y", ("stage1", "x"), ("stage1", "y")), ("x minus z", ("stage1", "x"), ("stage1", "z"))]
    diff = et.comparisons(Given(given), pairs)
    # Holm by hand: floor * 4 = 0.004; 0.03 * 3 = 0.09; 0.04 * 2 = 0.08 -> 0.09; 0.5 * 1 = 0.5.
    assert diff["p (Holm)"].astype(float).tolist() == pytest.approx([0.09, 0.09, 4 * floor, 0.5])
    assert diff["Significant (95 %)"].tolist() == ["no", "no", "yes", "no"]  # row 1: interval excludes 0, yet no
    assert diff["p at floor"].tolist() == ["no", "no", "yes", "no"]
    assert [d.interval for d in given] == diff["Avg difference"].tolist()  # the intervals as computed
    shown = for_display(diff, 3)
    assert shown["p"].tolist() == ["0.030", "0.040", "< 0.001", "0.500"]
    assert shown["p (Holm)"].tolist() == ["0.090", "0.090", "< 0.004", "0.500"]
    csv = pd.read_csv(io.StringIO(as_numbers(diff).to_csv(index=False)))
    assert csv["p"].tolist() == [0.03, 0.04, floor, 0.5]  # the numbers, not the display
    assert csv.loc[2, "p (Holm)"] == pytest.approx(4 * floor)


def test_the_written_table_has_its_differences_section_and_csv(evals, tmp_path):
    from fashionblip2.results.experiments import DIFFERENCES, Origin, write_table4

    files = TableFiles(
        *(str(tmp_path / f"t4.{e}") for e in ("md", "csv", "tex")), {DIFFERENCES: str(tmp_path / "t4_diff.csv")}
    )
    write_table4(
        evals, [{"model": "M", "without_facap": "a", "with_facap": "b"}], Origin("synthetic", "default"), files
    )
    md = (tmp_path / "t4.md").read_text()
    assert "## Differences: paired, on the same queries" in md and "bootstrap interval" in md
    assert "'Significant (95 %)' is Holm p < 0.05" in md and "(unadjusted" in md
    assert "200 sign-flip draws" in md and "over the section's 2 rows" in md
    diff = pd.read_csv(tmp_path / "t4_diff.csv")
    assert {"Avg difference", "Avg difference low", "Avg difference high", "p"} <= set(diff.columns)
    assert {"p (Holm)", "p at floor", "Significant (95 %)"} <= set(diff.columns)
    # 10 points on 300 queries: no sign flip of 200 is as extreme; the .csv keeps 1/201, the .md says "< 0.005".
    assert diff["p"].tolist() == [1 / 201] * 2 and diff["p at floor"].tolist() == ["yes"] * 2
    assert diff["p (Holm)"].tolist() == pytest.approx([2 / 201] * 2)
    section = md.split("## Differences")[1]
    assert section.count("| < 0.005 ") == 2 and section.count("| < 0.01 ") == 2


def test_figure6_rows_pick_the_best_and_the_worst_query_and_show_a_missed_target():
    from fashionblip2.results.figures import qualitative_row

    ranks = pd.DataFrame(
        {
            "reference": ["r1", "r2"],
            "target": ["t1", "t2"],
            "text": ["is red", "is blue"],
            "top": [["t1", "x"], ["x", "y"]],
            "target_rank": [1, 40],
        }
    )
    paths = {k: f"{k}.png" for k in ("r1", "r2", "t1", "t2", "x", "y")}
    best = qualitative_row(ranks, "fashioniq", "best", paths, k=2)
    assert best.reference == "r1.png" and best.framed == [True, False] and best.note == "target rank: 1"
    worst = qualitative_row(ranks, "fashioniq", "worst", paths, k=2)
    assert worst.retrieved == ["x.png", "y.png", "t2.png"] and worst.labels[-1] == "target (#40)"
    assert qualitative_row(ranks.iloc[:0], "fashioniq", "best", paths, k=2) is None
