"""loadtest/table_memory.py end to end on a small table: the real service starts with the table,
serves every id asked for, swaps in each new table, and the report holds every figure."""

from __future__ import annotations

import json

from loadtest import table_memory


def test_a_short_run_reports_sizes_and_every_reload(exported, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--model-dir", str(exported), "--items", "3000", "--reloads", "2", "--out", str(out)]
    table_memory.main(args)
    r = json.loads((out / "table_memory.json").read_text())
    assert json.loads(capsys.readouterr().out) == r
    assert r["items"] == 3000 and len(r["reloads"]) == 2
    assert r["npz_bytes_per_item"] > r["parquet_bytes_per_item"] > 0
    for step in (r["without_table"], r["with_table"], *r["reloads"]):
        assert 0 < step["rss_mb"] <= step["peak_rss_mb"]
    assert all(x["reload_s"] > 0 for x in r["reloads"])
