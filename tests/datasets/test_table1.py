import pandas as pd

from fashionblip2.common.issues import InputReport
from fashionblip2.datasets.table1 import TABLE1_COLUMNS, fashioniq_row, table1, text_stats
from fashionblip2.results.writing import TableFiles, write_table
from fashionblip2.sources import read_fashioniq_triplets


def test_text_stats():
    assert text_stats(["Is red", "is Longer  and red"]) == (4, 3.0)
    assert text_stats([]) == (0, 0.0)


def test_table1_fashioniq_row_from_the_real_annotations(shared_fashioniq):
    triplets = read_fashioniq_triplets(shared_fashioniq, InputReport(), splits=["train"])
    row = fashioniq_row(triplets, "real data")
    assert row["#Uniq imgs"] == 25_136 and row["#Pairs"] == 18_000
    # Whitespace tokens: close to the paper's vocabulary of 4,401 (it does not say how it tokenised).
    assert 4_000 < row["Vocab size"] < 4_800 and 5.0 < row["Avg. length"] < 6.5


def test_table1_marks_the_papers_rows_and_writes_md_and_csv(tmp_path):
    frame = table1(
        [dict(zip(TABLE1_COLUMNS, ["FACap (mod. texts)", "this run", 3, "Auto", "x", 2, 5, 3.5], strict=True))]
    )
    assert list(frame["Rows from"]) == ["this run"] + ["reported by the paper"] * 5
    write_table(frame, TableFiles(str(tmp_path / "table1.md"), str(tmp_path / "table1.csv")), "Table 1", ["a note"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table1.csv", "table1.md"]  # what was declared, no more
    md = (tmp_path / "table1.md").read_text()
    assert md.startswith("# Table 1") and "| FACap (mod. texts) | this run" in md and md.rstrip().endswith("- a note")
    assert pd.read_csv(tmp_path / "table1.csv").shape == (6, len(TABLE1_COLUMNS))
