"""The ``vestis predict`` journal is on disk batch by batch: each appended batch is fsync-ed before the next."""

from __future__ import annotations

import os

import pytest

from tests.inference.conftest import make_checkpoint, make_images
from vestis.inference.predictor import Predictor
from vestis.inference.tagging import journal_path, tag_catalog


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_every_batch_is_fsynced_once_with_all_its_rows(tmp_path, monkeypatch, suffix):
    predictor = Predictor.from_path(make_checkpoint(tmp_path / "m.ckpt"), device="cpu")
    make_images(tmp_path / "imgs")  # five images: batches of 2, 2 and 1
    out = tmp_path / f"tags{suffix}"
    journal = journal_path(out)
    events: list[tuple[str, int, int]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        events.append(("fsync", st.st_ino, st.st_size))
        real_fsync(fd)

    def on_batch(n: int) -> None:
        st = journal.stat()
        events.append(("batch", st.st_ino, st.st_size))

    monkeypatch.setattr(os, "fsync", fsync)
    tag_catalog(predictor, [tmp_path / "imgs"], out, batch_size=2, workers=0, on_batch=on_batch)

    batches = [i for i, e in enumerate(events) if e[0] == "batch"]
    assert len(batches) == 3
    for start, end in zip([-1, *batches], batches, strict=False):
        _, ino, size = events[end]
        # (the empty journal is fsync-ed once too, when a torn last line would be cut off before the first batch)
        synced = [e for e in events[start + 1 : end] if e[0] == "fsync" and e[1] == ino and e[2] > 0]
        # one fsync of the journal per batch, after the batch's last byte was written
        assert synced == [("fsync", ino, size)], events
    # the journal at each fsync holds whole rows, those of the batches so far (2, 4, 5)
    if suffix == ".jsonl":
        text = out.read_bytes()
        ends = [i + 1 for i, b in enumerate(text) if b == ord("\n")]
        assert [events[i][2] for i in batches] == [ends[1], ends[3], ends[4]]
