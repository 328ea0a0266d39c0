"""Weak labels from product titles: a vocabulary of the most frequent title words (the Softlines base-model paper).

Every product has a title even where no human tagged its attributes. The paper's "Softlines Base CNN" is trained
on the ``N`` most frequent title words as multi-label targets (Top500, Top2000), and then refined per attribute.

Tokens: the title lower-cased, split on every character that is not a letter (Unicode letters count, so digits,
punctuation and spaces separate words and numbers vanish), then one-letter tokens and stop words are dropped
(scikit-learn's English list, plus an optional file of extra words). A word counts once per title (document
frequency), over the **training split only**, the split ``vestis train`` computes with the same fractions and
seed, so no validation or test title shapes the labels. Ties in count are broken alphabetically, so the same
manifest always gives the same vocabulary.

Leakage: a title word may merely restate a labelled attribute ("navy" in "Navy Blue Shirt" when ``baseColour`` is
``Navy Blue``). With ``exclude_label_words`` every token of every attribute value (of the taxonomy and of the
manifest's labels) is kept out of the vocabulary and listed with its reason, so a benchmark can say what it left
out.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vestis.data.manifest import Manifest, Record
from vestis.data.splits import split_manifest
from vestis.data.taxonomy import Taxonomy
from vestis.data.textio import read_text
from vestis.errors import VestisError
from vestis.io import atomic_write_text

__all__ = [
    "VOCAB_FORMAT",
    "Vocabulary",
    "build_vocabulary",
    "builtin_stop_words",
    "file_sha256",
    "label_words",
    "load_vocabulary",
    "read_stop_words",
    "save_vocabulary",
    "title_labels",
    "tokenize",
]

VOCAB_FORMAT = "vestis.vocab"
VOCAB_VERSION = 1
_WORD = re.compile(r"[^\W\d_]+")  # a run of letters: \w minus digits and underscore


def builtin_stop_words() -> frozenset[str]:
    """scikit-learn's English stop-word list (318 words)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def read_stop_words(path: str | os.PathLike[str]) -> frozenset[str]:
    """Extra stop words: one or more per line (split like titles), ``#`` starts a comment; UTF-8.

    Raises:
        VestisError: the file is missing or not UTF-8.
    """
    path = Path(path)
    if not path.is_file():
        raise VestisError(f"{path}: stop-word file not found; expected a text file with one word per line")
    words: set[str] = set()
    for line in read_text(path, "stop-word list").splitlines():
        words.update(m.lower() for m in _WORD.findall(line.split("#", 1)[0]))
    return frozenset(words)


def tokenize(title: str | None, stop_words: Iterable[str] = ()) -> list[str]:
    """The words of ``title``: lower-cased letter runs, without one-letter tokens and ``stop_words``, in order.

    Args:
        title: the text (``None``: no words).
        stop_words: lower-case words to drop.

    Returns:
        The tokens in title order, repeats kept.
    """
    if not title:
        return []
    stop = stop_words if isinstance(stop_words, set | frozenset) else set(stop_words)
    return [w for w in (m.lower() for m in _WORD.findall(title)) if len(w) > 1 and w not in stop]


def label_words(
    manifest: Manifest, taxonomy: Taxonomy | None = None, stop_words: Iterable[str] = ()
) -> dict[str, list[str]]:
    """Word -> the attribute values it restates (``"baseColour: Navy Blue"``), from the taxonomy and the labels.

    A value's tokens are found the way titles are tokenised (so "Navy Blue" gives ``navy`` and ``blue``).
    """
    values: dict[str, set[str]] = {}
    for attr in taxonomy or ():
        values.setdefault(attr.name, set()).update(attr.values)
    for r in manifest.records:
        for name, vals in r.labels.items():
            values.setdefault(name, set()).update(vals)
    out: dict[str, set[str]] = {}
    for name, vals in values.items():
        for v in vals:
            for w in tokenize(v, stop_words):
                out.setdefault(w, set()).add(f"{name}: {v}")
    return {w: sorted(why) for w, why in sorted(out.items())}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """``sha256:`` + hex digest of the file's bytes (names the manifest a vocabulary was counted on)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


@dataclass
class Vocabulary:
    """The top title words of a manifest's training split.

    Attributes:
        words: the kept words, most frequent first (ties alphabetical).
        counts: word -> number of training titles holding it, for the kept words.
        top: the requested ``N`` (``len(words)`` is smaller when fewer distinct words exist).
        excluded: word -> ``{"count": titles holding it, "why": [the attribute values it restates]}``.
        split: ``val_fraction``, ``test_fraction``, ``seed`` of the split counted on.
        manifest: ``path`` and ``sha256`` of the manifest file (``None`` for one built in memory).
        train_rows: rows in the training split; ``titled_rows``: those with a title.
        stop_words: what was dropped: ``builtin`` (count), ``extra_file`` (path or ``None``), ``extra`` (count).
        attribute: the name of the multi-label attribute the words become.
    """

    words: list[str]
    counts: dict[str, int]
    top: int
    excluded: dict[str, dict[str, Any]] = field(default_factory=dict)
    split: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] | None = None
    train_rows: int = 0
    titled_rows: int = 0
    stop_words: dict[str, Any] = field(default_factory=dict)
    attribute: str = "title_words"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": VOCAB_FORMAT,
            "version": VOCAB_VERSION,
            "attribute": self.attribute,
            "top": self.top,
            "words": list(self.words),
            "counts": {w: self.counts[w] for w in self.words},
            "tie_break": "count descending, then the word alphabetically",
            "excluded": self.excluded,
            "split": self.split,
            "manifest": self.manifest,
            "train_rows": self.train_rows,
            "titled_rows": self.titled_rows,
            "stop_words": self.stop_words,
        }


def build_vocabulary(
    manifest: Manifest,
    top: int,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    taxonomy: Taxonomy | None = None,
    exclude_label_words: bool = False,
    extra_stop_words: Iterable[str] = (),
    stop_words_file: str | os.PathLike[str] | None = None,
    attribute: str = "title_words",
) -> Vocabulary:
    """Count title words over the training split of ``manifest`` and keep the ``top`` most frequent.

    Args:
        manifest: the catalog; its split is :func:`~vestis.data.splits.split_manifest` with the given settings.
        top: ``N``, how many words to keep (>= 1).
        val_fraction, test_fraction, seed: the split settings (``data.val_fraction`` etc. of the training config).
        taxonomy: its attribute values also count as label words for ``exclude_label_words``.
        exclude_label_words: keep out every token of an attribute value, listing it in ``excluded``.
        extra_stop_words: more words to drop besides the built-in English list.
        stop_words_file: where ``extra_stop_words`` came from (recorded only).
        attribute: the name the multi-label attribute will have.

    Returns:
        The :class:`Vocabulary`.

    Raises:
        VestisError: ``top`` < 1, or no training title holds a word.
    """
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise VestisError(f"--top {top!r}: expected a number of words >= 1")
    builtin = builtin_stop_words()
    extra = frozenset(w.lower() for w in extra_stop_words)
    stop = builtin | extra
    train = split_manifest(manifest, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)["train"]
    counts: Counter[str] = Counter()
    titled = 0
    for r in train.records:
        if r.title:
            titled += 1
            counts.update(set(tokenize(r.title, stop)))
    leak = label_words(manifest, taxonomy, stop) if exclude_label_words else {}
    excluded = {w: {"count": counts[w], "why": leak[w]} for w in sorted(leak) if counts[w]}
    ranked = sorted((w for w in counts if w not in leak), key=lambda w: (-counts[w], w))
    words = ranked[:top]
    if not words:
        raise VestisError(
            f"{manifest.source}: no title word in the {len(train)} training rows ({titled} with a title); "
            "expected a title column with words other than stop words"
        )
    return Vocabulary(
        words=words,
        counts={w: counts[w] for w in words},
        top=top,
        excluded=excluded,
        split={"val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed},
        manifest={"path": str(manifest.path), "sha256": file_sha256(manifest.path)} if manifest.path else None,
        train_rows=len(train),
        titled_rows=titled,
        stop_words={
            "builtin": f"scikit-learn ENGLISH_STOP_WORDS ({len(builtin)} words)",
            "extra_file": str(stop_words_file) if stop_words_file is not None else None,
            "extra": sorted(extra),
        },
        attribute=attribute,
    )


def save_vocabulary(vocab: Vocabulary, path: str | os.PathLike[str]) -> Path:
    """Write ``vocab`` as JSON, atomically."""
    return atomic_write_text(Path(path), json.dumps(vocab.to_dict(), indent=2, ensure_ascii=False) + "\n")


def load_vocabulary(path: str | os.PathLike[str]) -> Vocabulary:
    """Read a vocabulary written by :func:`save_vocabulary` (``vestis vocab``).

    Raises:
        VestisError: the file is missing, not JSON, or not a vocabulary (each field checked).
    """
    path = Path(path)
    if not path.is_file():
        raise VestisError(f"{path}: vocabulary not found; expected the vocab.json of `vestis vocab`")
    try:
        data = json.loads(read_text(path, "vocabulary"))
    except ValueError as e:
        raise VestisError(f"{path}: not JSON ({e}); expected the vocab.json of `vestis vocab`") from None
    if not isinstance(data, Mapping) or data.get("format") != VOCAB_FORMAT:
        raise VestisError(f"{path}: format: expected {VOCAB_FORMAT!r} (a vocab.json of `vestis vocab`)")
    words = data.get("words")
    if not isinstance(words, list) or not words or not all(isinstance(w, str) and _is_word(w) for w in words):
        raise VestisError(f"{path}: words: expected a non-empty list of lower-case words (letters only)")
    if len(set(words)) != len(words):
        raise VestisError(f"{path}: words: a word is listed twice")
    counts = data.get("counts")
    if not isinstance(counts, Mapping) or any(not isinstance(counts.get(w), int) for w in words):
        raise VestisError(f"{path}: counts: expected an integer count for every word")
    split = data.get("split")
    if not isinstance(split, Mapping) or not {"val_fraction", "test_fraction", "seed"} <= set(split):
        raise VestisError(f"{path}: split: expected val_fraction, test_fraction and seed")
    attribute = data.get("attribute", "title_words")
    if not isinstance(attribute, str) or not attribute.strip():
        raise VestisError(f"{path}: attribute: expected a non-empty attribute name")
    top = data.get("top", len(words))
    excluded = data.get("excluded") or {}
    manifest = data.get("manifest")
    return Vocabulary(
        words=list(words),
        counts={w: int(counts[w]) for w in words},
        top=top if isinstance(top, int) else len(words),
        excluded=dict(excluded) if isinstance(excluded, Mapping) else {},
        split=dict(split),
        manifest=dict(manifest) if isinstance(manifest, Mapping) else None,
        train_rows=int(data.get("train_rows") or 0),
        titled_rows=int(data.get("titled_rows") or 0),
        stop_words=dict(data.get("stop_words") or {}),
        attribute=attribute,
    )


def _is_word(w: str) -> bool:
    return len(w) > 1 and _WORD.fullmatch(w) is not None and w == w.lower()


def title_labels(record: Record, vocab: Vocabulary) -> tuple[str, ...]:
    """The vocabulary words in ``record``'s title, in vocabulary order (empty: no title or no vocabulary word)."""
    present = set(tokenize(record.title))
    return tuple(w for w in vocab.words if w in present)
