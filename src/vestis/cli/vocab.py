"""``vestis vocab``: the top title words of a manifest's training split, as weak multi-label targets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from vestis.cli._app import TaxonomyOpt, command, console, echo


@command("vocab")
def vocab_cmd(
    manifest: Annotated[Path, typer.Argument(help="Manifest (CSV, JSONL or Parquet) with a title column.")],
    top: Annotated[int, typer.Option("--top", min=1, help="How many words to keep (the paper: 500, 2000).")] = 500,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the vocabulary JSON.")] = Path("vocab.json"),
    exclude_label_words: Annotated[
        bool,
        typer.Option(
            "--exclude-label-words",
            help="Keep out words that restate an attribute value (baseColour 'Navy Blue': navy, blue); "
            "listed in the output. Default: off.",
        ),
    ] = False,
    stop_words: Annotated[
        Path | None,
        typer.Option("--stop-words", help="Extra stop words, one per line, # comments (default: the built-in list)."),
    ] = None,
    taxonomy: TaxonomyOpt = None,
    config: Annotated[
        str,
        typer.Option("--config", "-c", help="Preset or YAML whose data.val_fraction, test_fraction, split_seed split."),
    ] = "default",
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Config overrides of the split: data.split_seed=1 (default: none).")
    ] = None,
    attribute: Annotated[
        str, typer.Option("--attribute", help="Name of the multi-label attribute the words become.")
    ] = "title_words",
    show: Annotated[int, typer.Option("--show", min=0, help="Words to print (0: all).")] = 50,
) -> None:
    """Count title words over the TRAINING split of MANIFEST and keep the --top most frequent (ties alphabetical).

    Tokens are lower-cased letter runs without one-letter words, numbers and stop words; a word counts once per
    title. The split is the one `vestis train` computes with the same config.
    """
    from vestis.config import load_config
    from vestis.data.catalog import TAXONOMY_FILENAME
    from vestis.data.manifest import read_manifest
    from vestis.data.taxonomy import load_taxonomy
    from vestis.data.vocab import build_vocabulary, read_stop_words, save_vocabulary

    cfg = load_config(config, overrides or [])
    m = read_manifest(manifest)
    tax_path = taxonomy if taxonomy is not None else manifest.parent / TAXONOMY_FILENAME
    tax = load_taxonomy(tax_path) if taxonomy is not None or tax_path.is_file() else None
    extra = read_stop_words(stop_words) if stop_words is not None else frozenset()
    vocab = build_vocabulary(
        m, top, val_fraction=cfg.data.val_fraction, test_fraction=cfg.data.test_fraction, seed=cfg.data.split_seed,
        taxonomy=tax, exclude_label_words=exclude_label_words, extra_stop_words=extra, stop_words_file=stop_words,
        attribute=attribute,
    )  # fmt: skip
    if m.problems:
        echo(f"{len(m.problems)} unreadable row(s) left out (run `vestis validate {manifest}`)")
    shown = vocab.words if show == 0 else vocab.words[:show]
    table = Table(title=f"Top {len(vocab.words)} title words ({attribute})", box=box.SIMPLE, title_justify="left")
    table.add_column("rank", justify="right")
    table.add_column("word", no_wrap=True)
    table.add_column("titles", justify="right")
    table.add_column("share", justify="right")
    for i, w in enumerate(shown, start=1):
        c = vocab.counts[w]
        table.add_row(str(i), w, str(c), f"{c / max(1, vocab.titled_rows):.1%}")
    console.print(table)
    if len(shown) < len(vocab.words):
        echo(f"... {len(vocab.words) - len(shown)} more in {out}")
    if vocab.excluded:
        ex = Table(title="Excluded as label words (leakage)", box=box.SIMPLE, title_justify="left")
        ex.add_column("word", no_wrap=True)
        ex.add_column("titles", justify="right")
        ex.add_column("restates")
        for w, e in vocab.excluded.items():
            ex.add_row(w, str(e["count"]), escape("; ".join(e["why"])))
        console.print(ex)
    save_vocabulary(vocab, out)
    echo(
        f"{vocab.titled_rows} of {vocab.train_rows} training rows have a title; "
        f"{len(vocab.words)} words, {len(vocab.excluded)} excluded -> {out}"
    )
