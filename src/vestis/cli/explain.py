"""``vestis explain``: where an ``rnn_va`` stage-2 model looked, as attention overlays (PNG) and explain.json."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vestis.cli._app import TrustCheckpointOpt, command, echo


@command("explain")
def explain_cmd(
    model: Annotated[
        Path,
        typer.Argument(
            help="An rnn_va stage-2 checkpoint (IMAGE is one garment crop) or an outfit pipeline file from "
            "`vestis pipeline` built with one (every garment its detector finds in IMAGE)."
        ),
    ],
    image: Annotated[Path, typer.Argument(help="The image file.")],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Output folder: garment<k>_a1_category.png, garment<k>_a2_attributes.png, explain.json."
        ),
    ],
    object_type: Annotated[
        str | None,
        typer.Option(
            "--object-type",
            help="A stage-2 checkpoint: the crop's object type (upper-body, ...) fed to the model (default: unknown).",
        ),
    ] = None,
    alpha: Annotated[
        float, typer.Option("--alpha", min=0.0, max=1.0, help="Weight of the colour map in the overlay.")
    ] = 0.5,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu, cuda or cuda:N (default: CUDA if present).")
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Write into a non-empty --out, removing the files of an earlier run there (those its explain.json "
            "lists) (default: off: a non-empty --out is refused).",
        ),
    ] = False,
    trust_checkpoint: TrustCheckpointOpt = False,
) -> None:
    """Draw the attention maps a_1 (category step) and a_2 (attribute step) of an rnn_va model over each crop.

    One PNG per garment and step, each the size of the garment's crop, and OUT/explain.json with the garments
    (box, object type, category, attributes) and the file names. A model without attention (stl, stl_hls, a
    classifier, a detector) is refused.
    """
    from vestis.inference.explain import explain

    result = explain(
        model, image, out, device=device, object_type=object_type, alpha=alpha, trust_checkpoint=trust_checkpoint,
        overwrite=overwrite,
    )  # fmt: skip
    n = len(result.garments)
    found = f"{n} garment{'s' if n != 1 else ''}" if result.kind == "outfit" else "the crop"
    echo(f"explained {found} of {image}: {2 * n} overlays and explain.json in {out}")
