from __future__ import annotations

import re

from typer.testing import CliRunner

import vestis.cli


def _run(*args: str) -> str:
    result = CliRunner().invoke(vestis.cli.app, ["models", *args], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    return result.output


def _row(output: str, name: str) -> list[str]:
    line = next(ln for ln in output.splitlines() if re.match(rf"\s*{re.escape(name)}\s", ln))
    return line.split()


def test_models_lists_variants_and_backbones() -> None:
    out = _run()
    for variant in ("baseline", "a1", "a2", "a3", "a4"):
        assert _row(out, variant)[0] == variant
    assert "§5.2.4" in " ".join(_row(out, "a3"))
    assert _row(out, "efficientnetv2_m") == [
        "efficientnetv2_m",
        "52.86M",
        "block3e",
        "80,",
        "block5n",
        "176,",
        "block7e",
        "512",
        "top",
        "1280",
    ]
    assert _row(out, "resnet50") == [
        "resnet50",
        "23.51M",
        "layer2",
        "512,",
        "layer3",
        "1024,",
        "layer4",
        "2048",
        "layer4",
        "2048",
    ]
    # tiny variants are marked
    assert _row(out, "resnet18_tiny")[:2] == ["resnet18_tiny", "yes"]
    assert _row(out, "mobilenetv3_small")[1] == "0.93M"


def test_models_filters_tiny_and_full() -> None:
    tiny = _run("--tiny")
    assert "resnet18_tiny" in tiny and "efficientnetv2_m" not in tiny
    full = _run("--full")
    assert "mobilenetv3_small" in full and "_tiny" not in full
