"""How the training step runs: channels-last memory format and ``torch.compile``, decided and applied in one place.

Both are execution switches (``train.channels_last``, ``train.compile``): they change how the same model is
computed, not what it computes (the loss curves agree with eager within float rounding, ``bench/train_speed.py``
measures both). The loop calls :func:`resolve` once and :meth:`Accel.apply` on the module it steps through;
checkpoints are written from the uncompiled model, so their keys never carry ``_orig_mod.``.
"""

from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vestis.errors import VestisError

__all__ = ["COMPILE_MODES", "Accel", "compile_mode", "resolve", "unwrap"]

# torch.compile's modes; train.compile=true means "default"
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class Accel:
    """The resolved switches of one run on one device."""

    channels_last: bool  # the model's weights and its image inputs in NHWC memory order
    compile: str | None  # a torch.compile mode, or None for eager

    def apply(self, module: nn.Module) -> nn.Module:
        """``module`` in the memory format (in place: its parameters stay the same objects, so an optimiser built
        before or after sees them), then compiled when asked; returns the module to call."""
        if self.channels_last:
            module.to(memory_format=torch.channels_last)
        if self.compile is None:
            return module
        return torch.compile(module, mode=None if self.compile == "default" else self.compile)

    def describe(self) -> str:
        return f"channels-last {'on' if self.channels_last else 'off'}, torch.compile {self.compile or 'off'}"


def compile_mode(value: bool | str | None) -> str | None:
    """``train.compile`` as a torch.compile mode (``None``: eager); a value it cannot be is a VestisError."""
    if value is None or value is False:
        return None
    if value is True:
        return "default"
    text = str(value).strip().lower()
    if text in ("off", "false", "no", "0", "eager"):
        return None
    if text in ("on", "true", "yes", "1"):
        return "default"
    if text not in COMPILE_MODES:
        raise VestisError(f"train.compile: expected true, false or one of {list(COMPILE_MODES)}, got {value!r}")
    return text


def resolve(tc: Any, device: torch.device, *, check: bool = True) -> Accel:
    """The switches of ``tc`` (a :class:`~vestis.config.TrainConfig`) on ``device``.

    ``train.channels_last``: ``None`` (the default) means on for CUDA only, ``true``/``false`` apply on every
    device. With ``check`` and compile on, a tiny function is compiled first, so a missing C++ compiler (or a
    Python that torch.compile does not support) stops the run here with a clear message instead of at the first
    step with an inductor traceback.
    """
    channels_last = device.type == "cuda" if tc.channels_last is None else bool(tc.channels_last)
    mode = compile_mode(tc.compile)
    if mode is not None and check:
        _check_compiler(device.type)
    return Accel(channels_last=channels_last, compile=mode)


def unwrap(module: nn.Module) -> nn.Module:
    """The module under any ``torch.compile`` wrapper: the one whose state dict has clean keys."""
    while isinstance(module, torch._dynamo.eval_frame.OptimizedModule):
        module = module._orig_mod
    return module


@functools.cache
def _check_compiler(device_type: str) -> None:
    hint = "set train.compile=false to train eagerly"
    if not torch._dynamo.is_dynamo_supported():
        raise VestisError(f"train.compile: torch.compile does not support this Python or platform; {hint}")
    if device_type == "cpu" and not any(shutil.which(c) for c in ("g++", "clang++", "c++", "gcc")):
        raise VestisError(f"train.compile: no C++ compiler found (inductor needs g++ or clang++ on CPU); {hint}")
    try:
        fn = torch.compile(lambda x: (x * 2.0).sin() + 1.0, dynamic=False)
        fn(torch.ones(8, device=device_type))
    except Exception as e:  # anything the backend raises means it cannot build code here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VestisError(
            f"train.compile: torch.compile could not build code on {device_type} ({first}); {hint}"
        ) from e
