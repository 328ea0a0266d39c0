"""``vestis evaluate``: metrics and a report for a checkpoint, an ONNX export or a combined per-attribute model on a
manifest split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vestis.cli._app import OutDirOpt, TaxonomyOpt, TrustCheckpointOpt, command, echo


@command("evaluate")
def evaluate_cmd(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            help="A checkpoint (best.ckpt / last.ckpt), an ONNX export (fp32 or int8), or the combined.json (or run "
            "folder) of `vestis train --per-attribute`."
        ),
    ],
    data: Annotated[Path, typer.Option("--data", "-d", help="Manifest to evaluate on.")],
    out: OutDirOpt,
    taxonomy: TaxonomyOpt = None,
    split: Annotated[str, typer.Option("--split", help="train, val, test or all.")] = "test",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per model call.")] = 64,
    workers: Annotated[int, typer.Option("--workers", min=0, help="Decoding processes.")] = 2,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Skip rows that fail validation.")] = False,
    device: Annotated[str | None, typer.Option("--device", help="cpu or cuda (default: cuda when present).")] = None,
    trust_checkpoint: TrustCheckpointOpt = False,
    compare: Annotated[
        Path | None,
        typer.Option(
            "--compare",
            help="A second manifest (e.g. production images): compare the model (a checkpoint or a combined.json) on "
            "--data and on it, writing compare.json, compare.md, compare.html and figures instead of the report "
            "(default: none).",
        ),
    ] = None,
    compare_split: Annotated[
        str | None,
        typer.Option(
            "--compare-split", help="Rows of --compare: train, val, test or all (default: the same as --split)."
        ),
    ] = None,
    compare_taxonomy: Annotated[
        Path | None,
        typer.Option(
            "--compare-taxonomy", help="Taxonomy of --compare (default: taxonomy.yaml beside it, when present)."
        ),
    ] = None,
) -> None:
    """Evaluate CHECKPOINT (or an ONNX file, or a combined.json): metrics.json, report.md, report.html and figures.

    The split is recomputed from the model's own data settings. The report holds the majority-value reference,
    bootstrap 95% intervals (under 2000 items), training curves (history.json beside the checkpoint),
    reliability diagrams, precision-recall curves, an error gallery and meta_ column breakdowns.

    A combined.json (from `vestis train --per-attribute`) is scored as `vestis predict` runs it: each attribute by
    its own member, with that member's calibrated thresholds.

    With --compare B.csv the same model is scored on --data (A) and on B: per attribute accuracy, per-class and
    average per-class accuracy on both, the drop A - B, the confusion-matrix difference and the value-distribution
    shift (total variation distance), in compare.json, compare.md and compare.html.
    """
    if compare is not None:
        from vestis.eval.compare import compare_checkpoint, format_comparison

        res = compare_checkpoint(
            checkpoint, data, compare, out, taxonomy=taxonomy, compare_taxonomy=compare_taxonomy, split=split,
            compare_split=compare_split, batch_size=batch_size, workers=workers, device=device,
            skip_invalid=skip_invalid, trust_checkpoint=trust_checkpoint,
        )  # fmt: skip
        echo(format_comparison(res.metrics))
        echo(f"\nA: {data}, B: {compare}; report: {res.files['compare.html']}")
        return
    from vestis.eval.evaluator import format_table
    from vestis.eval.run import evaluate_checkpoint, format_retrieval

    result = evaluate_checkpoint(
        checkpoint, data, out, taxonomy=taxonomy, split=split, batch_size=batch_size, workers=workers,
        device=device, skip_invalid=skip_invalid, trust_checkpoint=trust_checkpoint,
    )  # fmt: skip
    if result.kind == "embedding":  # the substitute-retrieval protocol
        echo(format_retrieval(result.metrics))
        echo(f"{result.num_items} items ({split}); report: {result.files['report.md']}")
        return
    if result.kind == "stage2":  # crops of the hierarchical pipeline: the paper's stage-2 metrics
        from vestis.eval.stage2_run import format_stage2

        echo(format_stage2(result.metrics))
        echo(f"\n{result.num_items} crops ({split}); report: {result.files['report.md']}")
        return
    echo(format_table(result.metrics))
    echo(f"\n{result.num_items} items ({split}); report: {result.files['report.html']}")
