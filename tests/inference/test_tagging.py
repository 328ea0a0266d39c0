"""Catalog tagging: input collection, rows, error rows, the three output formats, resuming and locking."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.conftest import write_image
from vestis.errors import VestisError
from vestis.inference.journal import Journal
from vestis.inference.predictor import Predictor
from vestis.inference.tagging import (
    ImageItem,
    collect_inputs,
    flatten_row,
    journal_path,
    read_journal,
    tag_catalog,
)

IDS = ["a.jpg", "b.png", "c.jpg", "sub/d.jpg", "sub/e.png"]


@pytest.fixture(scope="module")
def predictor(ckpt):
    return Predictor.from_path(ckpt, device="cpu")


@pytest.fixture
def catalog(tmp_path, image_dir):
    """The five images, a corrupt file and a manifest naming all of them plus a missing file."""
    root = tmp_path / "cat"
    shutil.copytree(image_dir, root / "images")
    (root / "images" / "broken.jpg").write_bytes(b"this is not a JPEG")
    rows = ["id,image", *(f"p{i},images/{name}" for i, name in enumerate(IDS))]
    rows += ["bad,images/broken.jpg", "gone,images/missing.jpg"]
    (root / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _assert_same_rows(got: list[dict], expected: list[dict]) -> None:
    """Same ids, values and errors in the same order; scores equal up to batch-size rounding noise."""
    assert [r["id"] for r in got] == [r["id"] for r in expected]
    for g, e in zip(got, expected, strict=True):
        assert g.get("error") == e.get("error") and g["image"] == e["image"]
        ga, ea = g.get("attributes", {}), e.get("attributes", {})
        assert list(ga) == list(ea)
        for name in ga:
            assert ga[name].get("value") == ea[name].get("value")
            assert ga[name].get("values") == ea[name].get("values")
            assert ga[name]["scores"] == pytest.approx(ea[name]["scores"], abs=1e-5)


def test_collect_inputs(catalog, tmp_path):
    (catalog / "images" / "notes.txt").write_text("not an image")
    folder = collect_inputs([catalog / "images"])
    assert [it.id for it in folder] == ["a.jpg", "b.png", "broken.jpg", "c.jpg", "sub/d.jpg", "sub/e.png"]
    assert folder[4].path == catalog / "images" / "sub" / "d.jpg"
    manifest = collect_inputs([catalog / "manifest.csv"])
    assert [it.id for it in manifest] == ["p0", "p1", "p2", "p3", "p4", "bad", "gone"]
    assert manifest[3].path == catalog / "images" / "sub" / "d.jpg"  # relative to the manifest
    one = catalog / "images" / "a.jpg"
    missing = catalog / "images" / "nowhere.jpg"  # an image path that does not exist becomes an error row later
    assert collect_inputs([one, one, missing]) == [ImageItem(str(one), one), ImageItem(str(missing), missing)]


def test_collect_inputs_errors(catalog, tmp_path):
    other = tmp_path / "other"
    write_image(other / "a.jpg")
    with pytest.raises(VestisError, match=r"duplicate image ids for different files: 'a\.jpg'"):
        collect_inputs([catalog / "images", other])
    with pytest.raises(VestisError, match="no such folder, manifest or image"):
        collect_inputs([tmp_path / "typo"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(VestisError, match="no images found"):
        collect_inputs([tmp_path / "empty"])
    (tmp_path / "m.csv").write_text("id,image\n,a.jpg\n")
    with pytest.raises(VestisError, match=r"m.csv:2: id: expected a non-empty id"):
        collect_inputs([tmp_path / "m.csv"])


def test_jsonl_rows_and_error_rows(predictor, catalog, tmp_path):
    out = tmp_path / "tags.jsonl"
    result = tag_catalog(predictor, [catalog / "manifest.csv"], out, batch_size=3, workers=0)
    assert (result.total, result.done_before, result.predicted, result.errors) == (7, 0, 5, 2)
    rows = _jsonl(out)
    assert [r["id"] for r in rows] == ["p0", "p1", "p2", "p3", "p4", "bad", "gone"]
    assert rows[5] == {
        "id": "bad",
        "image": str(catalog / "images" / "broken.jpg"),
        "model": predictor.fingerprint,
        "error": "not a readable image in an allowed format (JPEG, PNG, WEBP, GIF, BMP, TIFF)",
    }
    assert rows[6]["error"] == "image file not found"
    assert predictor.fingerprint.startswith("sha256:")
    assert {r["model"] for r in rows} == {predictor.fingerprint}
    expected = predictor.predict([Image.open(catalog / "images" / name) for name in IDS])
    for row, exp in zip(rows[:5], expected, strict=True):
        assert list(row["attributes"]) == list(exp)
        for name, r in row["attributes"].items():
            assert r.get("value") == exp[name].get("value") and r.get("values") == exp[name].get("values")
            assert r["scores"] == pytest.approx(exp[name]["scores"], abs=1e-6)  # rounded to 6 decimals


def test_decoding_workers_give_the_same_rows(predictor, catalog, tmp_path):
    a = tag_catalog(predictor, [catalog / "images"], tmp_path / "w0.jsonl", batch_size=2, workers=0)
    b = tag_catalog(predictor, [catalog / "images"], tmp_path / "w2.jsonl", batch_size=2, workers=2)
    assert a.predicted == b.predicted == 5
    assert (tmp_path / "w0.jsonl").read_bytes() == (tmp_path / "w2.jsonl").read_bytes()


def test_csv_and_parquet_flatten_the_rows(predictor, catalog, tmp_path):
    rows = _jsonl(Path(tag_catalog(predictor, [catalog / "manifest.csv"], tmp_path / "t.jsonl", workers=0).out))
    tag_catalog(predictor, [catalog / "manifest.csv"], tmp_path / "t.csv", workers=0)
    tag_catalog(predictor, [catalog / "manifest.csv"], tmp_path / "t.parquet", workers=0)
    assert not journal_path(tmp_path / "t.csv").exists() and not journal_path(tmp_path / "t.parquet").exists()
    with (tmp_path / "t.csv").open(newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    parquet = pq.read_table(tmp_path / "t.parquet").to_pylist()
    columns = list(table[0])
    assert columns[:8] == ["id", "image", "error", "model", "category", "colour", "sleeve.length", "occasion"]
    assert {c["model"] for c in table} == {p["model"] for p in parquet} == {predictor.fingerprint}
    assert columns[8:] == [
        "category:t-shirt", "category:trousers", "category:dress", "colour:red", "colour:blue", "colour:green",
        "sleeve.length:short", "sleeve.length:long", "occasion:casual", "occasion:formal", "occasion:sport",
    ]  # fmt: skip
    assert list(parquet[0]) == columns
    for row, c, p in zip(rows, table, parquet, strict=True):
        flat = flatten_row(row, predictor.taxonomy)
        assert c["id"] == p["id"] == row["id"]
        for k, v in flat.items():
            assert c[k] == ("" if v is None else str(v)), k
            assert p[k] == (pytest.approx(v, abs=1e-6) if isinstance(v, float) else v), k
        attrs = row.get("attributes", {})
        if "occasion" in attrs:
            assert c["occasion"] == "|".join(attrs["occasion"]["values"])
        if attrs and "sleeve.length" not in attrs:  # not a t-shirt: empty cells
            assert c["sleeve.length"] == "" and p["sleeve.length:short"] is None
    assert (
        table[5]["error"] == "not a readable image in an allowed format (JPEG, PNG, WEBP, GIF, BMP, TIFF)"
        and table[5]["category"] == ""
    )


def test_resume_after_a_torn_write(predictor, catalog, tmp_path):
    out = tmp_path / "tags.jsonl"
    tag_catalog(predictor, [catalog / "manifest.csv"], out, workers=0)
    full = out.read_bytes()
    lines = full.splitlines(keepends=True)
    # a run killed after three rows, in the middle of writing the fourth
    out.write_bytes(b"".join(lines[:3]) + lines[3][:25])
    result = tag_catalog(predictor, [catalog / "manifest.csv"], out, workers=0)
    assert (result.done_before, result.predicted, result.errors) == (3, 2, 2)
    text = out.read_bytes()
    assert text.startswith(b"".join(lines[:3])) and text.endswith(b"\n")  # the done rows untouched
    _assert_same_rows(_jsonl(out), [json.loads(line) for line in lines])  # each once, the torn line replaced
    again = tag_catalog(predictor, [catalog / "manifest.csv"], out, workers=0)
    assert (again.done_before, again.predicted, again.errors) == (7, 0, 0) and out.read_bytes() == text


def test_resume_csv_from_its_journal(predictor, catalog, tmp_path):
    rows = tag_catalog(predictor, [catalog / "manifest.csv"], tmp_path / "ref.jsonl", workers=0).out.read_bytes()
    out = tmp_path / "tags.csv"
    journal_path(out).write_bytes(b"".join(rows.splitlines(keepends=True)[2:4]))  # rows 3 and 4 were done
    result = tag_catalog(predictor, [catalog / "manifest.csv"], out, workers=0)
    assert (result.done_before, result.predicted, result.errors) == (2, 3, 2)
    assert not journal_path(out).exists()
    with out.open(newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [r["id"] for r in table] == ["p0", "p1", "p2", "p3", "p4", "bad", "gone"]  # input order
    for c, row in zip(table, _jsonl(tmp_path / "ref.jsonl"), strict=True):
        for k, v in flatten_row(row, predictor.taxonomy).items():
            if isinstance(v, float):
                assert float(c[k]) == pytest.approx(v, abs=1e-5), k
            else:
                assert c[k] == ("" if v is None else v), k


def test_rows_of_another_input_are_kept_and_restart_discards_them(predictor, catalog, tmp_path):
    out = tmp_path / "tags.jsonl"
    out.write_text('{"id": "old", "image": "x.jpg", "error": "image file not found"}\n')
    result = tag_catalog(predictor, [catalog / "images" / "a.jpg"], out, workers=0)
    assert result.extra_rows == 1 and [r["id"] for r in _jsonl(out)] == ["old", str(catalog / "images" / "a.jpg")]
    result = tag_catalog(predictor, [catalog / "images" / "a.jpg"], out, workers=0, restart=True)
    assert result.extra_rows == 0 and len(_jsonl(out)) == 1


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_resuming_with_another_model_is_refused(predictor, catalog, tmp_path, suffix):
    from tests.inference.conftest import make_checkpoint

    other = Predictor.from_path(make_checkpoint(tmp_path / "other.ckpt", seed=1), device="cpu")
    assert other.fingerprint != predictor.fingerprint
    out = tmp_path / f"tags{suffix}"
    journal = journal_path(out)
    # the first model stops after one batch (a kill), leaving a journal to resume
    with pytest.raises(KeyboardInterrupt):
        tag_catalog(predictor, [catalog / "manifest.csv"], out, batch_size=2, workers=0, on_batch=_interrupt)
    before = journal.read_bytes() + b'{"id": "torn'  # a torn line: even the repair must not run
    journal.write_bytes(before)
    with pytest.raises(VestisError) as e:
        tag_catalog(other, [catalog / "manifest.csv"], out, batch_size=2, workers=0)
    msg = str(e.value)
    assert msg.startswith(f"{journal}: model: expected rows of {other.fingerprint}")
    assert predictor.fingerprint in msg and "--restart" in msg
    assert journal.read_bytes() == before and not (out != journal and out.exists())
    # the same model resumes; another one may start over with restart
    assert tag_catalog(predictor, [catalog / "manifest.csv"], out, workers=0).done_before == 2
    r = tag_catalog(other, [catalog / "manifest.csv"], out, workers=0, restart=True)
    assert r.done_before == 0 and r.predicted == 5
    rows = read_journal(out) if suffix == ".jsonl" else list(csv.DictReader(out.open(newline="")))
    assert {row["model"] for row in rows} == {other.fingerprint}


def test_a_row_with_a_malformed_model_is_refused(predictor, catalog, tmp_path):
    out = tmp_path / "odd.jsonl"
    out.write_text('{"id": "p0", "image": "x.jpg", "model": {"a": [1]}, "error": "gone"}\n')
    with pytest.raises(VestisError, match=r"odd\.jsonl: model: expected rows of sha256:.*holds rows of \{'a': \[1\]\}"):
        tag_catalog(predictor, [catalog / "manifest.csv"], out, workers=0)


def _interrupt(n: int) -> None:
    raise KeyboardInterrupt


def test_rows_without_a_model_are_accepted(predictor, catalog, tmp_path):
    out = tmp_path / "old.jsonl"
    out.write_text('{"id": "p0", "image": "x.jpg", "error": "image file not found"}\n')  # written before rows named it
    r = tag_catalog(predictor, [catalog / "manifest.csv"], out, workers=0)
    assert (r.done_before, r.predicted + r.errors) == (1, 6)


def test_a_second_writer_is_refused(predictor, catalog, tmp_path):
    out = tmp_path / "tags.jsonl"
    first = Journal(out)
    try:
        with pytest.raises(VestisError, match="another vestis predict is writing this output"):
            tag_catalog(predictor, [catalog / "images"], out, workers=0)
    finally:
        first.close()
    assert tag_catalog(predictor, [catalog / "images"], out, workers=0).predicted == 5


def test_read_journal_rejects_foreign_files(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(VestisError, match=r"x.jsonl:2: not a JSON row"):
        read_journal(path)
    path.write_text('{"id": "a"}\n[1, 2]\n')
    with pytest.raises(VestisError, match=r"x.jsonl:2: expected a JSON object with an 'id'"):
        read_journal(path)
    path.write_text('{"id": "a"}\n{"id": "b", "err')
    assert read_journal(path) == [{"id": "a"}]
    assert path.read_text() == '{"id": "a"}\n{"id": "b", "err'  # not repaired unless asked
    assert read_journal(path, repair=True) == [{"id": "a"}] and path.read_text() == '{"id": "a"}\n'
    # a torn line longer than the repair's 64 KiB read-back window, and a file that is all torn line
    path.write_text('{"id": "a"}\n{"id": "b", "image": "' + "x" * 200_000)
    assert read_journal(path, repair=True) == [{"id": "a"}] and path.read_text() == '{"id": "a"}\n'
    path.write_text('{"id": "a", "ima')
    assert read_journal(path, repair=True) == [] and path.read_bytes() == b""


def test_bad_arguments(predictor, catalog, tmp_path):
    with pytest.raises(VestisError, match=r"unsupported output format '\.txt'"):
        tag_catalog(predictor, [catalog / "images"], tmp_path / "tags.txt")
    with pytest.raises(VestisError, match="engine: expected one of"):
        tag_catalog(predictor, [catalog / "images"], tmp_path / "tags.jsonl", engine="spark")
    with pytest.raises(VestisError, match="engine ray: the model must be a file"):
        model = Predictor.from_model(predictor.module.model, preprocessing=predictor.preprocessing, device="cpu")
        tag_catalog(model, [catalog / "images"], tmp_path / "tags.jsonl", engine="ray")
    assert not (tmp_path / "tags.jsonl").exists() and not (tmp_path / "tags.txt").exists()


def _children(pid: int) -> set[int]:
    """Every descendant of ``pid`` (from /proc)."""
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                kids = {int(k) for k in Path(f"/proc/{p}/task/{t}/children").read_text().split()}
            except OSError:
                continue
            todo += sorted(kids - out)
            out |= kids
    return out


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped holds nothing and runs nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the worker processes through /proc")
@pytest.mark.parametrize(
    "sig", [signal.SIGKILL, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)], ids=["SIGKILL", "SIGTERM"]
)
def test_decoder_workers_exit_when_predict_is_killed(ckpt, image_dir, tmp_path, sig):
    # one image under many ids: a run long enough to be killed in the middle, written in a blink
    rows = ["id,image", *(f"r{i},{image_dir / 'a.jpg'}" for i in range(20_000))]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "tags.jsonl"
    cmd = [sys.executable, "-m", "vestis", "predict", str(ckpt), str(tmp_path / "m.csv"), "--out", str(out)]
    proc = subprocess.Popen([*cmd, "--workers", "2", "-b", "2", "--no-progress"], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        workers: set[int] = set()
        while time.monotonic() < deadline and proc.poll() is None:
            workers = _children(proc.pid)
            if len(workers) >= 2 and out.exists() and out.stat().st_size > 0:
                break  # both decoders are up and batches are being written
            time.sleep(0.05)
        assert proc.poll() is None and len(workers) >= 2, f"predict did not get going: {workers}"
        os.kill(proc.pid, sig)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_running(w) for w in workers):
            time.sleep(0.05)
        left = [w for w in workers if _running(w)]
        assert left == [], f"decoder processes still running after the parent's {sig.name}: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for w in workers:  # on a failure, do not leave them behind either
            if _running(w):
                os.kill(w, signal.SIGKILL)
