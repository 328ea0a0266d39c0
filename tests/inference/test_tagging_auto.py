"""The automatic split of the cores between decoding workers and model threads, and the flags that override it."""

from __future__ import annotations

import os

import pytest
import torch
from typer.testing import CliRunner

import vestis.cli
import vestis.inference.tagging as tagging
from vestis.errors import VestisError
from vestis.inference.items import auto_threads, available_cores, resolve_split
from vestis.inference.tagging import TagResult

runner = CliRunner()


def _cores(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)


@pytest.mark.parametrize(
    ("cores", "split"),
    [(1, (0, 1)), (2, (0, 2)), (3, (0, 3)), (4, (1, 3)), (16, (1, 15)), (32, (2, 30))],
)
def test_the_rule_splits_the_cores_of_the_affinity_mask(monkeypatch, cores, split):
    _cores(monkeypatch, cores)
    assert available_cores() == cores
    assert auto_threads() == split == auto_threads(cores)
    assert resolve_split("auto", "auto") == split


def test_on_a_gpu_decoding_gets_every_core_but_one(monkeypatch):
    _cores(monkeypatch, 8)
    assert auto_threads(gpu=True) == (7, 1)
    assert auto_threads(1, gpu=True) == (1, 1)


def test_numbers_override_auto_one_at_a_time(monkeypatch):
    _cores(monkeypatch, 8)
    assert resolve_split(3, "auto") == (3, 7)
    assert resolve_split("auto", "4") == (1, 4)
    assert resolve_split("0", 1) == (0, 1)


@pytest.mark.parametrize(
    ("workers", "threads", "bad"),
    [("auto", 0, "threads"), ("auto", "-2", "threads"), ("two", "auto", "workers"), (-1, 1, "workers"),
     (True, 1, "workers"), (1, 1.5, "threads")],
)  # fmt: skip
def test_bad_values_are_refused_by_name(workers, threads, bad):
    with pytest.raises(VestisError, match=rf"^{bad}: expected 'auto' or a whole number >= [01], got "):
        resolve_split(workers, threads)


@pytest.fixture
def captured(monkeypatch):
    """``tag_catalog`` replaced by a recorder: the CLI's predictor and workers, no tagging."""
    seen: dict = {}

    def fake(predictor, inputs, out, **kwargs):
        seen["predictor"], seen["workers"] = predictor, kwargs["workers"]
        return TagResult(out, 0, 0, 0, 0, 1.0)

    monkeypatch.setattr(tagging, "tag_catalog", fake)
    return seen


def _predict(model, image_dir, tmp_path, *flags):
    args = ["predict", str(model), str(image_dir), "--out", str(tmp_path / "t.jsonl"), "--device", "cpu", *flags]
    return runner.invoke(vestis.cli.app, [*args, "--no-progress"])


def _intra_op(predictor) -> int:
    return predictor._backend.session.get_session_options().intra_op_num_threads


def test_threads_and_workers_reach_the_onnx_session(onnx_fp32, image_dir, tmp_path, captured, monkeypatch):
    res = _predict(onnx_fp32, image_dir, tmp_path, "--threads", "3", "--workers", "0")
    assert res.exit_code == 0, res.output
    assert _intra_op(captured["predictor"]) == 3 and captured["workers"] == 0
    _cores(monkeypatch, 8)  # auto: 1 worker, 7 threads
    res = _predict(onnx_fp32, image_dir, tmp_path)
    assert res.exit_code == 0, res.output
    assert _intra_op(captured["predictor"]) == 7 and captured["workers"] == 1


def test_threads_reach_torch(ckpt, image_dir, tmp_path, captured):
    before = torch.get_num_threads()
    try:
        res = _predict(ckpt, image_dir, tmp_path, "-t", "3", "-w", "1")  # torch's own default on 2 cores is 2
        assert res.exit_code == 0, res.output
        assert torch.get_num_threads() == 3 and captured["workers"] == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--threads", "0"], "--threads: expected 'auto' or a whole number >= 1, got '0'"),
        (["--threads", "many"], "--threads: expected 'auto' or a whole number >= 1, got 'many'"),
        (["--workers", "-1"], "--workers: expected 'auto' or a whole number >= 0, got '-1'"),
    ],
)
def test_a_bad_flag_is_a_clear_error(ckpt, image_dir, tmp_path, captured, flags, message):
    res = _predict(ckpt, image_dir, tmp_path, *flags)
    assert res.exit_code == 1 and f"error: {message}" in " ".join(res.stderr.split())
    assert "Traceback" not in res.output and "predictor" not in captured


def test_tag_catalog_refuses_bad_values_before_any_work(ckpt, image_dir, tmp_path):
    with pytest.raises(VestisError, match=r"^threads: expected"):
        tagging.tag_catalog(ckpt, [image_dir], tmp_path / "t.jsonl", threads=0)
    with pytest.raises(VestisError, match=r"^workers: expected"):
        tagging.tag_catalog(ckpt, [image_dir], tmp_path / "t.jsonl", workers="x")
    assert not (tmp_path / "t.jsonl").exists()


class _Loaded(Exception):
    """Raised by the fake loader once it has seen its arguments."""


@pytest.fixture
def loads(monkeypatch):
    """``Predictor.from_path`` replaced by a recorder of its ``device`` and ``threads``; with ``result`` set it
    returns that (a stand-in predictor), else it raises :class:`_Loaded`."""
    from vestis.inference.predictor import Predictor

    seen: dict = {}

    def fake(model, device=None, *, threads=None, **kwargs):
        seen["device"], seen["threads"] = device, threads
        if "result" in seen:
            return seen["result"]
        raise _Loaded

    monkeypatch.setattr(Predictor, "from_path", staticmethod(fake))
    return seen


@pytest.mark.parametrize("onnx", [False, True])
def test_auto_threads_follow_the_cuda_device_the_model_will_get(
    ckpt, onnx_fp32, image_dir, tmp_path, captured, loads, monkeypatch, onnx
):
    """A CUDA device (picked by default, or asked for) gets the GPU split, its one model thread included."""
    from types import SimpleNamespace

    import onnxruntime as ort

    model = onnx_fp32 if onnx else ckpt
    _cores(monkeypatch, 8)  # the CPU split: 1 worker, 7 threads; the GPU split: 7 workers, 1 thread
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    for flags, dev, threads, workers in (([], "cuda:0", 1, 7), (["--device", "cuda"], "cuda:0", 1, 7),
                                         (["--device", "cpu"], "cpu", 7, 1)):  # fmt: skip
        loads["result"] = SimpleNamespace(device=dev)  # the device the loaded model reports
        args = ["predict", str(model), str(image_dir), "--out", str(tmp_path / "t.jsonl"), *flags, "--no-progress"]
        res = runner.invoke(vestis.cli.app, args)
        assert res.exit_code == 0, res.output
        assert loads["threads"] == threads and captured["workers"] == workers, flags
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    loads["result"] = SimpleNamespace(device="cpu")
    res = runner.invoke(vestis.cli.app, ["predict", str(model), str(image_dir), "-o", str(tmp_path / "t.jsonl")])
    assert res.exit_code == 0, res.output
    assert loads["threads"] == 7 and captured["workers"] == 1


def test_tag_catalog_resolves_auto_threads_for_the_cuda_device(ckpt, image_dir, tmp_path, loads, monkeypatch):
    _cores(monkeypatch, 8)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for device, threads in ((None, 1), ("cuda:0", 1), ("cpu", 7)):
        with pytest.raises(_Loaded):
            tagging.tag_catalog(ckpt, [image_dir], tmp_path / "t.jsonl", device=device)
        assert loads == {"device": device, "threads": threads}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(_Loaded):
        tagging.tag_catalog(ckpt, [image_dir], tmp_path / "t.jsonl")
    assert loads["threads"] == 7
