"""Shared by the benchmarks: machine description and writing one section of docs/benchmarks.md.

Each benchmark owns a section delimited by ``<!-- bench:NAME -->`` / ``<!-- /bench:NAME -->`` and
rewrites only that section, with the command that produced it and the machine it ran on.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import torch

from vestis.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
SHARED_DATA = ROOT.parent / "shared" / "data"
HEADER = (
    "# Benchmarks\n\n"
    "Every section is written by a script under `bench/`; the command and the machine are given with it.\n"
)


def machine() -> str:
    """One line: CPU model, cores, memory, GPU, torch version."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{cpu}, {os.cpu_count()} cores{mem}{gpu}; Python {platform.python_version()}, torch {torch.__version__}"


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])


def git_revision() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_section(name: str, title: str, body: str, *, doc: Path = DOC) -> Path:
    """Replace (or append) the section ``name`` of ``doc`` with ``body`` plus its provenance."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    block = (
        f"<!-- bench:{name} -->\n## {title}\n\n"
        f"Command: `{command_line()}`  \nMachine: {machine()}  \nRevision: {git_revision()}, {stamp}\n\n"
        f"{body.strip()}\n<!-- /bench:{name} -->"
    )
    text = doc.read_text(encoding="utf-8") if doc.exists() else HEADER
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    atomic_write_text(doc, text)
    return doc


def train_and_evaluate(
    name: str, overrides: list[str], manifest: Path, work: Path, *, preset: str = "default"
) -> dict[str, Any]:
    """Train ``preset`` + ``overrides`` on ``manifest`` in ``work/name`` and evaluate the test split.

    The result (per-attribute metrics, summary, timings) is cached in ``work/name/result.json``: a rerun of a
    benchmark skips what is already measured.
    """
    from vestis.config import load_config
    from vestis.eval.run import evaluate_checkpoint
    from vestis.train.loop import train

    run = work / name
    cached = run / "result.json"
    if cached.is_file():
        old = json.loads(cached.read_text())
        if old.get("overrides") == overrides and old.get("preset", preset) == preset:
            return old
        print(f"[{name}] cached result in {run} was made with other settings: training again", flush=True)
        shutil.rmtree(run)
    cfg = load_config(preset, overrides)
    if (run / "last.ckpt").is_file():
        shutil.rmtree(run)  # an interrupted run: start it again rather than mix budgets
    t0 = time.perf_counter()
    result = train(cfg, manifest, run, check_images=False, log=lambda msg: print(f"[{name}] {msg}", flush=True))
    train_s = time.perf_counter() - t0
    ev = evaluate_checkpoint(result.best, manifest, run / "report", split="test")
    out = {
        "name": name,
        "preset": preset,
        "overrides": overrides,
        "split": {
            "val_fraction": cfg.data.val_fraction,
            "test_fraction": cfg.data.test_fraction,
            "split_seed": cfg.data.split_seed,
        },
        "model": cfg.model.name,
        "backbone": cfg.model.backbone,
        "epochs": len(result.history),
        "train_seconds": train_s,
        "images_per_s": sum(h["images_per_s"] for h in result.history) / max(1, len(result.history)),
        "attributes": ev.metrics["attributes"],
        "summary": ev.metrics["summary"],
        "num_test": ev.num_items,
    }
    atomic_write_text(cached, json.dumps(out, indent=2))
    return out


def fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


# --- roofline -----------------------------------------------------------------------------------------------------
def onnx_flops(model: str | os.PathLike[str] | Any, batch: int = 1) -> dict[str, int]:
    """Static FLOP count of an ONNX graph: 2 x the multiply-adds of every Conv, Gemm and MatMul node.

    Shapes come from ``onnx.shape_inference`` after fixing every symbolic input axis to ``batch`` (vestis
    exports have a dynamic batch axis only). Per node, with ``Y`` its output: Conv ``prod(Y.shape) x
    (C_in / group) x kH x kW`` (the weight's ``(C_out, C_in / group, kH, kW)`` without its first axis, so 1-D and 3-D
    convolutions count alike), Gemm and MatMul ``prod(Y.shape) x K`` with ``K`` the reduced axis of the first
    operand. Bias additions, activations, pooling and element-wise arithmetic are left out, as
    ``torch.utils.flop_counter.FlopCounterMode`` leaves them out, so the two counts are comparable. Nodes inside
    subgraphs (``If``, ``Loop``) are not visited.

    Args:
        model: an ``onnx.ModelProto`` or the path of an ``.onnx`` file.
        batch: the size given to symbolic input axes.

    Returns:
        FLOPs per op type (``Conv``, ``Gemm``, ``MatMul``) and ``total``, for ``batch`` images; also
        ``Conv depthwise``, the part of ``Conv`` in depthwise convolutions.

    Raises:
        ValueError: a counted node whose operand or output shape inference could not determine.
    """
    import onnx
    from onnx import shape_inference

    proto = onnx.load(os.fspath(model)) if isinstance(model, str | os.PathLike) else model
    proto = type(proto).FromString(proto.SerializeToString())  # a copy: the input axes are rewritten below
    for inp in proto.graph.input:
        for dim in inp.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = batch
    graph = shape_inference.infer_shapes(proto, strict_mode=True).graph
    shapes: dict[str, tuple[int, ...] | None] = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        dims = vi.type.tensor_type.shape.dim
        known = all(d.HasField("dim_value") for d in dims) and vi.type.tensor_type.HasField("shape")
        shapes[vi.name] = tuple(d.dim_value for d in dims) if known else None
    for init in graph.initializer:
        shapes[init.name] = tuple(init.dims)

    def shape(name: str, node: Any) -> tuple[int, ...]:
        s = shapes.get(name)
        if s is None:
            raise ValueError(f"{node.op_type} node {node.name!r}: shape of {name!r} unknown after shape inference")
        return s

    out = {"Conv": 0, "Gemm": 0, "MatMul": 0}
    depthwise = 0
    for node in graph.node:
        if node.op_type not in out:
            continue
        y = math.prod(shape(node.output[0], node))
        if node.op_type == "Conv":
            w = shape(node.input[1], node)
            macs = y * math.prod(w[1:])  # (C_in / group) x kernel per output element
            if w[1] == 1 and any(at.name == "group" and at.i > 1 for at in node.attribute):
                depthwise += 2 * macs
        else:
            a = shape(node.input[0], node)
            trans_a = node.op_type == "Gemm" and any(at.name == "transA" and at.i for at in node.attribute)
            macs = y * (a[0] if trans_a else a[-1])
        out[node.op_type] += 2 * macs
    out["total"] = sum(out.values())
    out["Conv depthwise"] = depthwise  # part of Conv (one input channel per group), not added to the total again
    return out


def _node_kind(args: dict[str, Any]) -> str:
    """``depthwise``, ``conv``, ``matmul`` or ``other`` for one node event of ONNX Runtime's profile.

    From the event itself (the optimised graph's nodes are fused and renamed, so names do not map back to the
    exported graph): its op and its operand shapes. A convolution is depthwise when its weight
    ``(C_out, C_in / group, kH, kW)`` has one input channel per group and its input has more than one channel.
    """
    op = args.get("op_name", "")
    if op in ("Gemm", "MatMul", "FusedMatMul", "FusedGemm", "MatMulNBits"):
        return "matmul"
    if "Conv" not in op:
        return "other"
    shapes = [next(iter(t.values())) for t in args.get("input_type_shape", [])]
    if len(shapes) >= 2 and len(shapes[1]) == 4 and shapes[1][1] == 1 and len(shapes[0]) >= 2 and shapes[0][1] > 1:
        return "depthwise"
    return "conv"


def onnx_time_profile(path: str | os.PathLike[str], batch: Any, runs: int, threads: int) -> dict[str, float]:
    """Share of ONNX Runtime's node time per kind of :func:`_node_kind`, from its own profiler over ``runs`` calls.

    The session is a separate one with ``enable_profiling`` (the timings of the benchmark's sessions are not
    touched); the first call is a warm-up and left out. Shares are of the summed node durations.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory(prefix="vestis-ort-profile-") as tmp:
        opts.profile_file_prefix = os.path.join(tmp, "ort")
        sess = ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        for _ in range(runs + 1):
            sess.run(None, {name: batch})
        events = json.loads(Path(sess.end_profiling()).read_text())
    model_runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                        key=lambda e: e["ts"])  # fmt: skip
    warm_end = model_runs[0]["ts"] + model_runs[0]["dur"] if model_runs else -1
    totals: dict[str, float] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] <= warm_end:
            continue
        kind = _node_kind(e.get("args", {}))
        totals[kind] = totals.get(kind, 0.0) + float(e["dur"])
    whole = sum(totals.values()) or 1.0
    return {k: v / whole for k, v in totals.items()}


def _best_seconds(fn: Any, reps: int) -> float:
    fn()  # warm-up: first-touch page faults, the library's thread pool and packing buffers
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def gemm_peak(threads: int, sizes: tuple[int, ...] = (1024, 2048, 4096), reps: int = 3) -> dict[str, float]:
    """Measured fp32 GEMM GFLOP/s on ``threads`` threads: the best of ``reps`` runs per size, per library.

    Three libraries because each is a lower bound of what the cores can do and they differ by 10-20 % on one
    machine (MKL's sgemm on AMD CPUs is not its best path): PyTorch (MKL), NumPy (OpenBLAS, limited to
    ``threads`` by threadpoolctl) and ONNX Runtime's own MatMul (MLAS, the kernels the ONNX backends run).
    Also an int8 ceiling, ONNX Runtime's ``MatMulInteger`` (uint8 x int8 -> int32, 2 operations per
    multiply-add), which int8 graphs are compared with instead of the fp32 one.

    Returns:
        GFLOP/s (GOP/s for ``int8``) under ``torch``, ``numpy``, ``onnxruntime``, ``int8``, and ``best``: the
        best fp32 figure, the ceiling an fp32 backend's achieved rate is compared with.
    """
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper
    from threadpoolctl import threadpool_limits

    def ort_matmul(n: int, op: str, dtypes: tuple[int, int, int]) -> Any:
        a, b, y = (helper.make_tensor_value_info(k, t, [n, n]) for k, t in zip("ABY", dtypes, strict=True))
        graph = helper.make_graph([helper.make_node(op, ["A", "B"], ["Y"])], "gemm", [a, b], [y])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    out = {"torch": 0.0, "numpy": 0.0, "onnxruntime": 0.0, "int8": 0.0}
    rng = np.random.default_rng(0)
    try:
        for n in sizes:
            a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
            f32 = ort_matmul(n, "MatMul", (TensorProto.FLOAT,) * 3)
            i8 = ort_matmul(n, "MatMulInteger", (TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32))
            feed8 = {"A": rng.integers(0, 256, (n, n), np.uint8), "B": rng.integers(-128, 128, (n, n), np.int8)}
            runs = {
                "torch": partial(torch.matmul, torch.from_numpy(a), torch.from_numpy(b)),
                "numpy": partial(np.matmul, a, b),
                "onnxruntime": partial(f32.run, None, {"A": a, "B": b}),
                "int8": partial(i8.run, None, feed8),
            }
            for lib, fn in runs.items():
                with threadpool_limits(threads):  # OpenBLAS's pool; the others take their threads above
                    out[lib] = max(out[lib], 2 * n**3 / _best_seconds(fn, reps) / 1e9)
    finally:
        torch.set_num_threads(previous)
    out["best"] = max(out["torch"], out["numpy"], out["onnxruntime"])
    return out


def theoretical_peak(threads: int) -> tuple[float | None, str]:
    """fp32 GFLOP/s the CPU's vector units allow on ``threads`` cores, and how that figure was made.

    ``threads x clock x FLOPs per cycle``, assuming one thread per physical core and two FMA units per core:
    AVX-512 64 fp32 FLOPs per cycle (2 x 16 lanes x 2), AVX2 + FMA 32 (2 x 8 x 2), AVX without FMA 16 (an add
    and a multiply unit, 8 lanes each). The clock is lscpu's ``CPU max MHz``, else the GHz in the model name,
    else ``cpu MHz`` of /proc/cpuinfo; the last two are the nominal clock, which turbo exceeds (and a virtual
    machine may report only it), so a measured GEMM above this figure means the cores ran faster than that
    clock. ``None`` when neither the flags nor a clock can be read (not Linux, not x86).
    """
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None, "no /proc/cpuinfo"
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    if "avx512f" in flags:
        per_cycle, unit = 64, "AVX-512 (2 FMA units x 16 fp32 lanes x 2)"
    elif {"avx2", "fma"} <= flags:
        per_cycle, unit = 32, "AVX2 + FMA (2 FMA units x 8 fp32 lanes x 2)"
    elif "avx" in flags:
        per_cycle, unit = 16, "AVX without FMA (1 add + 1 multiply unit x 8 lanes)"
    else:
        return None, "no AVX flags in /proc/cpuinfo"
    mhz, source = None, ""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        m = re.search(r"^CPU max MHz:\s*([\d.]+)", lscpu, re.M)
        if m:
            mhz, source = float(m.group(1)), "lscpu CPU max MHz"
    except (OSError, subprocess.CalledProcessError):
        pass
    if mhz is None:
        m = re.search(r"^model name\s*:.*?([\d.]+)\s*GHz", info, re.M)
        if m:
            mhz, source = float(m.group(1)) * 1000, "the model name's GHz (nominal; turbo may exceed it)"
    if mhz is None:
        m = re.search(r"^cpu MHz\s*:\s*([\d.]+)", info, re.M)
        if m:
            mhz, source = float(m.group(1)), "/proc/cpuinfo cpu MHz (nominal or current; turbo may exceed it)"
    if mhz is None:
        return None, f"{unit}, but no clock could be read"
    gflops = threads * mhz / 1000 * per_cycle
    return gflops, f"{threads} core(s) x {mhz / 1000:.2f} GHz from {source} x {per_cycle} FLOP/cycle, {unit}"
