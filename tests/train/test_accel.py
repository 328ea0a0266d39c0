"""train.channels_last and train.compile: resolved once, they reach the model; checkpoints keep clean keys."""

import pytest
import torch
from torch import nn

import vestis
from vestis.config import load_config
from vestis.data.synthetic import generate_catalog
from vestis.errors import VestisError
from vestis.models import create_model
from vestis.train import accel
from vestis.train.checkpoint import load_checkpoint
from vestis.train.loop import train

QUIET = {"progress": False, "log": lambda *_: None}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_catalog(root, n=40, size=32, seed=3)
    return root / "manifest.csv"


def _cfg(*extra):
    # one batch per epoch (batch 64 > the ~36 training rows): the epoch losses of the history are per-step losses
    base = ["data.image_size=32", "data.augment.enabled=false", "model.dropout=0", "train.batch_size=64"]
    return load_config("tiny", [*base, *extra])


class _Recorder(nn.Module):
    """Stands in for torch.compile's wrapper: calls the module and keeps the inputs it was given."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self._orig_mod = module
        self.inputs: list[torch.Tensor] = []
        self.weights_nhwc: list[bool] = []

    def forward(self, *args):
        self.inputs.append(args[0])
        conv = next(m for m in self._orig_mod.modules() if isinstance(m, nn.Conv2d))
        self.weights_nhwc.append(conv.weight.is_contiguous(memory_format=torch.channels_last))
        return self._orig_mod(*args)


@pytest.fixture
def fake_compile(monkeypatch):
    made: list[_Recorder] = []

    def compile_(module, mode=None):
        made.append(_Recorder(module))
        return made[-1]

    monkeypatch.setattr(torch, "compile", compile_)
    monkeypatch.setattr(accel, "_check_compiler", lambda device_type: None)
    return made


@pytest.mark.parametrize(
    ("value", "mode"),
    [(False, None), (True, "default"), ("off", None), ("on", "default"), ("max-autotune", "max-autotune")],
)
def test_compile_mode(value, mode):
    assert accel.compile_mode(value) == mode


def test_compile_mode_refuses_unknown_values():
    with pytest.raises(VestisError, match=r"train\.compile: expected true, false or one of"):
        accel.compile_mode("fastest")


def test_channels_last_on_everywhere_by_default_null_is_cuda_only():
    tc = load_config("tiny").train
    assert tc.channels_last is True and tc.compile is False
    assert accel.resolve(tc, CPU) == accel.Accel(channels_last=True, compile=None)
    auto = load_config("tiny", ["train.channels_last=null"]).train
    assert accel.resolve(auto, CPU).channels_last is False
    assert accel.resolve(auto, torch.device("cuda")).channels_last is True
    on = load_config("tiny", ["train.channels_last=true"]).train
    assert accel.resolve(on, CPU).channels_last is True
    off = load_config("tiny", ["train.channels_last=false"]).train
    assert accel.resolve(off, torch.device("cuda")).channels_last is False


def test_apply_wraps_with_torch_compile_and_unwrap_gives_clean_keys():
    lin = nn.Linear(2, 3)
    wrapped = accel.Accel(channels_last=False, compile="default").apply(lin)  # lazy: nothing compiles until called
    assert isinstance(wrapped, torch._dynamo.eval_frame.OptimizedModule)
    assert set(wrapped.state_dict()) == {"_orig_mod.weight", "_orig_mod.bias"}
    assert accel.unwrap(wrapped) is lin and set(accel.unwrap(wrapped).state_dict()) == {"weight", "bias"}
    conv = nn.Conv2d(3, 4, 3)
    assert accel.Accel(channels_last=True, compile=None).apply(conv) is conv
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()


def test_compiler_failure_is_a_clear_error(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("InductorError: CppCompileError: C++ compile error\nlots of lines")

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(VestisError, match=r"could not build code on cpu \(InductorError.*train.compile=false"):
        accel._check_compiler.__wrapped__("cpu")
    monkeypatch.setattr(accel.shutil, "which", lambda name: None)
    with pytest.raises(VestisError, match=r"no C\+\+ compiler found"):
        accel._check_compiler.__wrapped__("cpu")


def test_switches_reach_the_model_and_checkpoints_stay_clean(catalog, tmp_path, fake_compile):
    cfg = _cfg("train.epochs=1", "train.compile=true", "train.channels_last=true")
    result = train(cfg, catalog, tmp_path / "run", **QUIET)
    (rec,) = fake_compile
    assert rec._orig_mod is result.model  # the module the steps called: the model, wrapped once
    assert rec.inputs and all(x.is_contiguous(memory_format=torch.channels_last) for x in rec.inputs)
    assert all(not x.is_contiguous() for x in rec.inputs)  # NHWC order, not the default NCHW
    assert rec.weights_nhwc and all(rec.weights_nhwc)
    conv = next(m for m in result.model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous()  # handed back in the default order, as a loaded checkpoint is
    state = load_checkpoint(result.last)["model"]
    assert not [k for k in state if "_orig_mod" in k]
    plain = create_model(cfg.model, vestis.load(result.last).taxonomy, image_size=32)
    plain.load_state_dict(state)  # strict: every key of a plain model, nothing more
    # a resume may change the execution switches: eager now, one more epoch
    more = train(_cfg("train.epochs=2"), catalog, tmp_path / "run", resume=True, **QUIET)
    assert more.steps == 2 and len(more.history) == 2 and len(fake_compile) == 1


def test_channels_last_loss_curve_equals_eager(catalog, tmp_path):
    curves = {}
    for flag in ("false", "true"):
        result = train(_cfg("train.epochs=3", f"train.channels_last={flag}"), catalog, tmp_path / flag, **QUIET)
        assert result.steps == 3
        curves[flag] = [h["train"]["loss"] for h in result.history]
    assert curves["true"] == pytest.approx(curves["false"], abs=1e-4)
    assert curves["false"][0] != pytest.approx(curves["false"][2], abs=1e-3)  # the steps did move the weights


@pytest.mark.slow
def test_real_compile_matches_eager_and_saves_clean_keys(catalog, tmp_path):
    curves = {}
    for flag in ("false", "true"):
        result = train(_cfg("train.epochs=2", f"train.compile={flag}"), catalog, tmp_path / flag, **QUIET)
        curves[flag] = [h["train"]["loss"] for h in result.history]
        assert not [k for k in load_checkpoint(result.last)["model"] if "_orig_mod" in k]
    assert curves["true"] == pytest.approx(curves["false"], abs=1e-4)
