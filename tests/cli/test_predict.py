"""`vestis predict`: output formats, error rows, and a run killed with SIGKILL then resumed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import vestis.cli
from tests.conftest import REPO, write_image
from tests.inference.conftest import make_checkpoint, make_images

runner = CliRunner()


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_predict_folder_and_files_to_jsonl_and_parquet(tmp_path):
    ckpt = make_checkpoint(tmp_path / "tiny.ckpt")
    make_images(tmp_path / "imgs")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "tags.jsonl"
    args = ["predict", str(ckpt), str(tmp_path / "imgs"), str(broken), "--out", str(out), "--workers", "0"]
    res = runner.invoke(vestis.cli.app, [*args, "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "5 predicted, 1 unreadable" in res.stdout and f"wrote {out}" in res.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a.jpg", "b.png", "c.jpg", "sub/d.jpg", "sub/e.png", str(broken)]
    assert all(set(r["attributes"]) >= {"category", "colour", "occasion"} for r in rows[:5])
    assert "error" in rows[5] and "attributes" not in rows[5]
    # a rerun has nothing left to do
    res = runner.invoke(vestis.cli.app, [*args, "--no-progress"])
    assert "6 of 6 images were already done" in res.stdout and "0 predicted, 0 unreadable" in res.stdout
    res = runner.invoke(vestis.cli.app, [*args[:-4], "--out", str(tmp_path / "t.parquet"), "--no-calibrated"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "t.parquet").exists() and not (tmp_path / "t.parquet.partial.jsonl").exists()


def test_predict_bad_output_suffix(tmp_path):
    ckpt = make_checkpoint(tmp_path / "tiny.ckpt")
    write_image(tmp_path / "a.jpg")
    res = runner.invoke(
        vestis.cli.app, ["predict", str(ckpt), str(tmp_path / "a.jpg"), "--out", str(tmp_path / "x.txt")]
    )
    assert res.exit_code == 1 and "unsupported output format '.txt'" in res.stderr


def test_killed_run_resumes_with_every_image_once(tmp_path):
    ckpt = make_checkpoint(tmp_path / "tiny.ckpt")
    paths = make_images(tmp_path / "imgs")
    # many rows over a few files: slow enough at batch size 1 to be killed half-way
    n = 600
    manifest = tmp_path / "catalog.csv"
    rows = [f"{i:04d},{paths[i % len(paths)]}" for i in range(n)]
    manifest.write_text("id,image\n" + "\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "tags.jsonl"
    cmd = [sys.executable, "-m", "vestis", "predict", str(ckpt), str(manifest), "--out", str(out)]
    cmd += ["--batch-size", "1", "--workers", "0", "--device", "cpu", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while proc.poll() is None and _lines(out) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.fail(f"the run ended before it could be killed (rc {proc.returncode}): {proc.stderr.read().decode()}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    killed = out.read_bytes()
    done = killed.count(b"\n")
    assert 20 <= done < n
    # and as if the kill had hit in the middle of a write
    with out.open("ab") as f:
        f.write(b'{"id": "9999", "image": "x.jp')
    res = runner.invoke(vestis.cli.app, ["predict", str(ckpt), str(manifest), "--out", str(out), "--workers", "0"])
    assert res.exit_code == 0, res.output
    assert f"{done} of {n} images were already done" in res.stdout
    text = out.read_bytes()
    assert text.startswith(killed[: killed.rfind(b"\n") + 1]) and text.endswith(b"\n")
    ids = [json.loads(line)["id"] for line in text.splitlines()]
    assert sorted(ids) == [f"{i:04d}" for i in range(n)]  # every image exactly once, no torn line


def test_progress_is_plain_lines_when_not_a_terminal(tmp_path):
    ckpt = make_checkpoint(tmp_path / "tiny.ckpt")
    for i in range(23):
        write_image(tmp_path / "imgs" / f"{i:02d}.jpg", (24, 24))
    out = tmp_path / "tags.jsonl"
    args = ["predict", str(ckpt), str(tmp_path / "imgs"), "--out", str(out), "--workers", "0", "--batch-size", "2"]
    res = runner.invoke(vestis.cli.app, args)
    assert res.exit_code == 0, res.output
    number = r"(?:\d{1,4}|\d{1,3}\.\d{1,3}|0\.0*[1-9]\d{0,3}|\d(?:\.\d{1,3})?e[-+]\d+)"
    lines = [line for line in res.stderr.splitlines() if line.startswith("tagging")]
    # 12 batches of 2 images (the last holds 1): a line after batch 10, one for the rest
    assert len(lines) == 2, res.stderr
    want = [("20", "86.96"), ("23", "100")]
    for line, (done, pct) in zip(lines, want, strict=True):
        assert re.fullmatch(rf"tagging: {done}/23 images \({pct} %\), {number} images/s", line), line
    assert "━" not in res.stderr and "\r" not in res.stderr  # no Rich bar
    assert re.search(rf"23 predicted, 0 unreadable, {number} images/s; wrote ", res.stdout), res.stdout
    # and --no-progress prints none
    res = runner.invoke(vestis.cli.app, [*args, "--no-progress", "--restart"])
    assert res.exit_code == 0 and "tagging:" not in res.stderr
