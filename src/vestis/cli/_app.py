"""The Typer app, the shared options and the one place where user errors become exit code 1."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from vestis.errors import VestisError

app = typer.Typer(
    name="vestis",
    help="Fashion product images to catalog attributes, and attribute-aware substitutes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)
_state = {"debug": False}

F = TypeVar("F", bound=Callable[..., Any])

# Options shared by several commands, declared once.
TaxonomyOpt = Annotated[
    Path | None,
    typer.Option("--taxonomy", "-t", help="Taxonomy YAML (default: taxonomy.yaml beside the manifest)."),
]
OutDirOpt = Annotated[Path, typer.Option("--out", "-o", help="Output directory.")]
TrustCheckpointOpt = Annotated[
    bool,
    typer.Option(
        "--trust-checkpoint",
        help="Also load an old pickle checkpoint. Unpickling runs any code the file holds: only for files you trust.",
    ),
]


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    _state["debug"] = debug


def command(name: str, **kwargs: Any) -> Callable[[F], F]:
    """Register a command; a :class:`VestisError` inside it prints ``error: ...`` and exits 1."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            try:
                return fn(*args, **kw)
            except VestisError as e:
                if _state["debug"]:
                    raise
                err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None
            except KeyboardInterrupt:
                err_console.print("interrupted")
                raise typer.Exit(130) from None

        app.command(name, **kwargs)(wrapper)
        return fn

    return deco


def echo(msg: str = "", *, markup: bool = False) -> None:
    """Print a line; text is literal (``[red]`` stays) unless ``markup=True``."""
    console.print(msg, highlight=False, soft_wrap=True, markup=markup)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``vestis`` script."""
    from vestis import cli  # noqa: F401  (imports every command module)

    app(args=argv if argv is not None else sys.argv[1:], prog_name="vestis")
