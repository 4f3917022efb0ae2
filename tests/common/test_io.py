import pytest

from fashionblip2.common.io import atomic_path, write_json_atomic


def test_atomic_path_renames_only_on_success(tmp_path):
    target = tmp_path / "sub" / "out.json"
    write_json_atomic(target, {"b": 1, "a": [1, 2]})
    assert target.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("complete old result")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half a new res")
            raise RuntimeError("killed")
    assert target.read_text() == "complete old result"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_failed_first_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.parquet"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            assert tmp.suffix == ".tmp" and tmp.name.startswith(".out.parquet.")
            tmp.write_bytes(b"PAR1")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
