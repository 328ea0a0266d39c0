"""The Typer app, the shared options and the one place where user errors become exit code 1."""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from vestis.errors import VestisError


def _no_flag_placeholder(params: list[Any]) -> list[Any]:
    """Flags take no value: an empty metavar keeps Typer's rich help from showing ``<bool>`` beside them."""
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
    return params


class _Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _no_flag_placeholder(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _no_flag_placeholder(super().get_params(ctx))


app = typer.Typer(
    cls=_Group,
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

# The options of a training run, shared by `vestis train` and `vestis pretrain`.
BackboneOpt = Annotated[
    str | None, typer.Option("--backbone", help="Backbone name (see `vestis models`; default: from the preset).")
]
EpochsOpt = Annotated[int | None, typer.Option("--epochs", min=1, help="Training epochs (default: from the preset).")]
ImageSizeOpt = Annotated[
    int | None, typer.Option("--image-size", min=16, help="Input side in pixels (default: from the preset).")
]
BatchSizeOpt = Annotated[
    int | None, typer.Option("--batch-size", min=1, help="Images per batch (default: from the preset).")
]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the run in --out exactly.")]
SkipInvalidOpt = Annotated[bool, typer.Option("--skip-invalid", help="Skip rows that fail validation.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu or cuda (default: cuda when present).")]
ProgressOpt = Annotated[
    bool,
    typer.Option(
        "--progress/--no-progress",
        help="Show progress on stderr: a bar on a terminal, else a line every 10 batches.",
    ),
]
TrustCheckpointOpt = Annotated[
    bool,
    typer.Option(
        "--trust-checkpoint",
        help="Also load an old pickle checkpoint. Unpickling runs any code the file holds: only for files you trust.",
    ),
]


def _print_version(value: bool) -> None:
    if value:
        from vestis import __version__

        echo(f"vestis {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True),
    ] = False,
) -> None:
    del version  # handled by its callback, before any command runs
    _state["debug"] = debug


def group(name: str, help: str) -> typer.Typer:
    """A command group (``vestis NAME SUBCOMMAND``) registered on :data:`app`; add commands with ``command``."""
    sub = typer.Typer(
        cls=_Group, name=name, help=help, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False
    )
    app.add_typer(sub, name=name)
    return sub


def command(name: str, *, parent: typer.Typer | None = None, **kwargs: Any) -> Callable[[F], F]:
    """Register a command (on ``parent``, a :func:`group`, when given); a :class:`VestisError` inside it prints
    ``error: ...`` and exits 1."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            try:
                return fn(*args, **kw)
            except (VestisError, OSError) as e:
                # an OSError naming a file is the user's path (an --out that is a folder, a read-only place)
                if _state["debug"] or (isinstance(e, OSError) and not e.filename):
                    raise
                msg = str(e) if isinstance(e, VestisError) else _os_error_message(e)
                err_console.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None
            except KeyboardInterrupt:
                err_console.print("interrupted")
                raise typer.Exit(130) from None

        (parent or app).command(name, **{"cls": _Command, **kwargs})(wrapper)
        return fn

    return deco


_EXPECTED = {
    errno.EISDIR: "expected a file, not a folder",
    errno.ENOTDIR: "a part of the path is a file; expected folders up to the last part",
    errno.EEXIST: "expected a new path or a folder",
    errno.EACCES: "permission denied; expected a path this user may use",
    errno.EPERM: "not permitted; expected a path this user may use",
    errno.EROFS: "read-only file system; expected a writable place",
    errno.ENOSPC: "no space left on the device",
    errno.ENAMETOOLONG: "expected a shorter name",
}


def _os_error_message(e: OSError) -> str:
    """``path: what was expected`` for an OSError; a rename names its target (``filename2``)."""
    path = e.filename2 if e.filename2 is not None else e.filename
    what = _EXPECTED.get(e.errno or 0, "")
    return f"{path}: {e.strerror or e}" + (f" ({what})" if what else "")


def echo(msg: str = "", *, markup: bool = False) -> None:
    """Print a line; text is literal (``[red]`` stays) unless ``markup=True``."""
    console.print(msg, highlight=False, soft_wrap=True, markup=markup)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``vestis`` script."""
    from vestis import cli  # noqa: F401  (imports every command module)

    app(args=argv if argv is not None else sys.argv[1:], prog_name="vestis")
