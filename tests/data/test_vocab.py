"""Title vocabularies on hand-made titles: tokens, stop words, train-split counts, tie order, label-word exclusion,
the JSON file and `vestis vocab`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import vestis.cli
from vestis.data.manifest import Manifest, Record, write_manifest
from vestis.data.splits import split_manifest
from vestis.data.taxonomy import Attribute, Taxonomy
from vestis.data.vocab import (
    build_vocabulary,
    builtin_stop_words,
    load_vocabulary,
    read_stop_words,
    save_vocabulary,
    title_labels,
    tokenize,
)
from vestis.errors import VestisError


def _rec(i: int, title: str | None, split: str | None = "train", **labels: str) -> Record:
    return Record(f"r{i}", f"{i}.jpg", {k: (v,) for k, v in labels.items()}, split=split, title=title)


def test_tokenize_lowercases_splits_on_non_letters_and_drops_stop_numbers_single_letters() -> None:
    stop = builtin_stop_words()
    assert tokenize("Men's Slim-Fit T-Shirt, 100% Cotton (2 pack)", stop) == [
        "men",
        "slim",
        "fit",
        "shirt",
        "cotton",
        "pack",
    ]
    # "the", "and", "with" are English stop words; digits split words ("xl2xl" -> "xl", "xl")
    assert tokenize("The Navy and White Dress with Pockets xl2xl", stop) == [
        "navy",
        "white",
        "dress",
        "pockets",
        "xl",
        "xl",
    ]
    assert tokenize("Robe d'été Größe", stop) == ["robe", "été", "größe"]  # Unicode letters; "d" is one letter
    assert tokenize(None) == [] and tokenize("") == [] and tokenize("12 34 - !") == []
    assert tokenize("The dress", ()) == ["the", "dress"]  # without a stop list, only short tokens go


def test_extra_stop_word_file(tmp_path: Path) -> None:
    f = tmp_path / "stop.txt"
    f.write_text("# brand names\nAcme  # a comment\n\nzed\n", encoding="utf-8")
    assert read_stop_words(f) == {"acme", "zed"}
    m = Manifest([_rec(0, "Acme Zed Dress"), _rec(1, "Acme Dress")], path=None)
    v = build_vocabulary(m, 5, extra_stop_words=read_stop_words(f), stop_words_file=f)
    assert v.words == ["dress"] and v.stop_words["extra"] == ["acme", "zed"]
    with pytest.raises(VestisError, match="stop-word file not found"):
        read_stop_words(tmp_path / "missing.txt")


def test_counts_over_the_training_split_only_with_alphabetical_ties() -> None:
    m = Manifest(
        [
            _rec(0, "Red Dress Floral"),
            _rec(1, "red dress, red maxi"),  # a word counts once per title
            _rec(2, "Blue Floral Shirt"),
            _rec(3, "Zebra Shirt"),
            _rec(4, None),
            _rec(5, "Sequin Sequin Gown", split="test"),  # test-only words are absent
            _rec(6, "Velvet Gown Dress", split="val"),
        ]
    )
    v = build_vocabulary(m, 10)
    expected = {"dress": 2, "floral": 2, "red": 2, "shirt": 2, "blue": 1, "maxi": 1, "zebra": 1}
    assert v.counts == expected
    # count descending, then alphabetical: a fixed order for equal counts
    assert v.words == ["dress", "floral", "red", "shirt", "blue", "maxi", "zebra"]
    assert "sequin" not in v.counts and "gown" not in v.counts and "velvet" not in v.counts
    assert (v.train_rows, v.titled_rows) == (5, 4)
    top3 = build_vocabulary(m, 3)
    assert top3.words == ["dress", "floral", "red"] and top3.top == 3
    # the same order whatever the row order
    assert build_vocabulary(Manifest(list(reversed(m.records))), 10).words == v.words
    assert title_labels(m.records[5], v) == () and title_labels(m.records[6], v) == ("dress",)


def test_free_rows_use_the_training_split_of_split_manifest() -> None:
    recs = [_rec(i, f"common word{chr(97 + i % 26)} unique{chr(97 + i // 26)}{chr(97 + i % 26)}", split=None)
            for i in range(40)]  # fmt: skip
    m = Manifest(recs)
    v = build_vocabulary(m, 1000, val_fraction=0.2, test_fraction=0.2, seed=3)
    train = split_manifest(m, val_fraction=0.2, test_fraction=0.2, seed=3)["train"]
    expected: dict[str, int] = {}
    for r in train.records:
        for w in set(tokenize(r.title, builtin_stop_words())):
            expected[w] = expected.get(w, 0) + 1
    assert v.counts == expected and v.train_rows == len(train) == 24
    held_out = {w for r in m.records if r not in train.records for w in tokenize(r.title) if w.startswith("unique")}
    assert held_out and not held_out & set(v.counts)


def test_label_word_exclusion_is_listed_with_its_reason() -> None:
    tax = Taxonomy((Attribute("baseColour", "single", ("Navy Blue", "Red")), Attribute("usage", "multi", ("Sports",))))
    m = Manifest(
        [
            _rec(0, "Navy Blue Sports Tee", baseColour="Navy Blue"),
            _rec(1, "Red Cotton Tee", baseColour="Red", pattern="Cotton Blend"),  # a column not in the taxonomy
            _rec(2, "Red Slim Tee"),
        ]
    )
    plain = build_vocabulary(m, 10)
    assert set(plain.words) == {"tee", "red", "navy", "blue", "sports", "cotton", "slim"} and not plain.excluded
    v = build_vocabulary(m, 10, taxonomy=tax, exclude_label_words=True)
    assert v.words == ["tee", "slim"]
    assert v.excluded == {
        "blue": {"count": 1, "why": ["baseColour: Navy Blue"]},
        "cotton": {"count": 1, "why": ["pattern: Cotton Blend"]},
        "navy": {"count": 1, "why": ["baseColour: Navy Blue"]},
        "red": {"count": 2, "why": ["baseColour: Red"]},
        "sports": {"count": 1, "why": ["usage: Sports"]},
    }


def test_round_trip_and_bad_files(tmp_path: Path) -> None:
    m = Manifest([_rec(0, "Red Dress"), _rec(1, "Red Shirt")])
    v = build_vocabulary(m, 2)
    p = save_vocabulary(v, tmp_path / "v.json")
    back = load_vocabulary(p)
    assert (back.words, back.counts, back.split) == (["red", "dress"], {"red": 2, "dress": 1}, v.split)
    with pytest.raises(VestisError, match="expected a number of words >= 1"):
        build_vocabulary(m, 0)
    with pytest.raises(VestisError, match="no title word"):
        build_vocabulary(Manifest([_rec(0, "the and 42")]), 5)
    bad = tmp_path / "bad.json"
    for text, msg in [
        ("{", "not JSON"),
        ('{"format": "other"}', "format"),
        ('{"format": "vestis.vocab", "words": ["Red|x"]}', "words"),
        ('{"format": "vestis.vocab", "words": ["red"], "counts": {}}', "counts"),
        ('{"format": "vestis.vocab", "words": ["red"], "counts": {"red": 1}}', "split"),
    ]:
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(VestisError, match=msg):
            load_vocabulary(bad)


def test_cli_prints_the_table_and_writes_the_file(tmp_path: Path) -> None:
    m = Manifest([_rec(0, "Navy Blue Shirt", colour="Navy Blue"), _rec(1, "Navy Shirt"), _rec(2, "Linen Shirt")],
                 attributes=["colour"])  # fmt: skip
    path = write_manifest(m, tmp_path / "m.csv")
    out = tmp_path / "out" / "vocab.json"
    (tmp_path / "out").mkdir()
    res = CliRunner().invoke(
        vestis.cli.app, ["vocab", str(path), "--top", "2", "--out", str(out), "--exclude-label-words"]
    )
    assert res.exit_code == 0, res.output
    assert "shirt" in res.output and "linen" in res.output and "colour: Navy Blue" in res.output
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["words"] == ["shirt", "linen"] and data["counts"] == {"shirt": 3, "linen": 1}
    assert sorted(data["excluded"]) == ["blue", "navy"] and data["manifest"]["sha256"].startswith("sha256:")
    assert data["split"] == {"val_fraction": 0.1, "test_fraction": 0.1, "seed": 0}
    res = CliRunner().invoke(vestis.cli.app, ["vocab", str(tmp_path / "none.csv"), "--out", str(out)])
    assert res.exit_code == 1 and "manifest not found" in res.output
