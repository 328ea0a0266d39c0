"""`vestis stats` in-process: the files it writes and the summary it prints."""

from __future__ import annotations

import json

from typer.testing import CliRunner

import vestis.cli
from vestis.data.taxonomy import Taxonomy, save_taxonomy

runner = CliRunner()


def test_stats(tmp_path):
    tax = Taxonomy.from_dict(
        {"attributes": [{"name": "tags", "kind": "multi", "values": ["casual", "party", "work", "formal"]}]}
    )
    save_taxonomy(tax, tmp_path / "taxonomy.yaml")
    rows = ["a,a.jpg,train,casual|party", "b,b.jpg,train,casual", "c,c.jpg,val,casual|work", "d,d.jpg,test,"]
    path = tmp_path / "manifest.csv"
    path.write_text("\n".join(["id,image,split,tags", *rows, "e,e.jpg,nope,casual"]) + "\n", encoding="utf-8")
    out = tmp_path / "stats"
    res = runner.invoke(vestis.cli.app, ["stats", str(path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    st = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    tags = st["attributes"]["tags"]
    # counts casual 4, party 1, work 1, formal 0 -> IR 1, 4, 4; MeanIR 3
    assert tags["counts"] == {"casual": 4, "party": 1, "work": 1, "formal": 0}
    assert tags["mean_ir"] == 3.0
    # rows {casual, party} and {casual, work}: 1 - 2/2.5 = 0.2 each; {casual} twice: 0 -> SCUMBLE 0.4/4 = 0.1
    assert abs(tags["scumble"] - 0.1) < 1e-12
    assert {p.name for p in out.iterdir()} == {"stats.json", "stats.md", "missing_rate.png", "counts_tags.png"}
    # the summary table: 4 labelled rows, missing 1/5, MeanIR 3, max IR 4, SCUMBLE 0.1
    line = next(x for x in res.stdout.splitlines() if "tags" in x)
    assert line.replace("│", " ").split() == ["tags", "multi", "4", "20.0%", "3.000", "4.000", "0.100"]
    assert "note: 1 format problem(s)" in res.stdout
    assert "wrote 4 files to" in res.stdout


def test_stats_needs_out(tmp_path):
    res = runner.invoke(vestis.cli.app, ["stats", str(tmp_path / "m.csv")])
    assert res.exit_code == 2
    assert "--out" in res.output
