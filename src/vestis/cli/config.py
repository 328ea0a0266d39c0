"""``vestis config show``: the resolved configuration as YAML, each field with its comment."""

from __future__ import annotations

from typing import Annotated

import typer

from vestis.cli._app import command, echo, group

config_app = group("config", help="Inspect configurations: presets and YAML files with overrides.")


@command("show", parent=config_app)
def show_cmd(
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Config overrides on top of the preset: train.lr=1e-4 model.dropout=0.1")
    ] = None,
    config: Annotated[
        str,
        typer.Option("--config", "-c", help="Preset name (see `vestis config show --config tiny`) or a YAML file."),
    ] = "default",
) -> None:
    """Print the resolved configuration (presets merged, overrides applied, normalisation filled in) as YAML.

    The output loads back as a config file: `vestis train --config shown.yaml` trains with exactly these settings.
    """
    from vestis.config import load_config
    from vestis.config_doc import config_yaml

    cfg = load_config(config, overrides or [])
    shown = " ".join([f"--config {config}", *(overrides or [])])
    echo(config_yaml(cfg, header=f"vestis config show {shown}").rstrip("\n"))
