"""A decoding stage that runs out of shared memory (/dev/shm full, as under Docker's 64 MB default) stops with a
message saying what to change, not a DataLoader traceback; other worker errors are left as they are."""

from __future__ import annotations

import multiprocessing

import pytest
from typer.testing import CliRunner

import vestis.cli
import vestis.inference.items as items
from vestis.errors import VestisError
from vestis.inference.items import ImageItem, decoded_stacks

# what torch's allocator raises in a worker when the segment cannot be created (errno 28 is ENOSPC)
NO_SHM = "unable to allocate shared memory(shm) for file </torch_4242_1_0>: No space left on device (28)"
# what the DataLoader raises in the main process when a worker dies of SIGBUS writing into a full /dev/shm
BUS = (
    "DataLoader worker (pid 4242) is killed by signal: Bus error. It is possible that dataloader's workers are "
    "out of shared memory. Please try to raise your shared memory limit."
)


# the patched collate reaches the workers through fork
forked = pytest.mark.skipif(multiprocessing.get_start_method() != "fork", reason="workers are not forked here")


def _items(image_dir) -> list[ImageItem]:
    return [ImageItem(p.name, p) for p in sorted(q for q in image_dir.rglob("*") if q.is_file())]


def _collate_raising(message: str):
    def collate(batch):
        raise RuntimeError(message)

    return collate


@forked
def test_a_worker_out_of_shared_memory_is_a_message(image_dir, monkeypatch):
    monkeypatch.setattr(items, "default_collate", _collate_raising(NO_SHM))  # forked workers inherit it
    with pytest.raises(VestisError) as info:
        list(decoded_stacks(_items(image_dir), 32, 114, 10**7, 4, 1))
    msg = str(info.value)
    head = f"the decoding workers ran out of shared memory (/dev/shm): RuntimeError: {NO_SHM};"  # the worker's line
    assert msg.startswith(head), msg
    # 1 worker x 4 batches ready x 4 images x 3 x 32 x 32 bytes = 48 KiB: "about 0 MB"
    assert "1 worker(s) keep up to 4 batches of 4 images at 32 px ready, about 0 MB" in msg
    for advice in ("fewer --workers", "a smaller --batch-size", "--shm-size"):
        assert advice in msg
    assert "Traceback" not in msg
    with pytest.raises(RuntimeError, match="unable to allocate shared memory"):  # no workers: not a shm matter
        list(decoded_stacks(_items(image_dir), 32, 114, 10**7, 4, 0))


def test_a_worker_killed_by_a_bus_error_is_a_message(image_dir, monkeypatch):
    class Loader:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def __iter__(self):  # the DataLoader raises it from next(), when a batch of the dead worker is due
            raise RuntimeError(BUS)
            yield

    monkeypatch.setattr(items, "DataLoader", Loader)
    with pytest.raises(VestisError, match=r"shared memory \(/dev/shm\): DataLoader worker \(pid 4242\) is killed"):
        list(decoded_stacks(_items(image_dir), 224, 114, 10**7, 32, 2))
    with pytest.raises(
        VestisError, match=r"2 worker\(s\) keep up to 4 batches of 32 images at 224 px ready, about 37 MB"
    ):
        list(decoded_stacks(_items(image_dir), 224, 114, 10**7, 32, 2))  # 2 x 4 x 32 x 3 x 224 x 224 B = 36.75 MiB


@forked
@pytest.mark.parametrize("message", ["a decoder bug", "unable to open shared memory object: Too many open files (24)"])
def test_other_worker_errors_are_raised_as_they_are(image_dir, monkeypatch, message):
    monkeypatch.setattr(items, "default_collate", _collate_raising(message))
    with pytest.raises(RuntimeError, match=message.split(":")[0]):
        list(decoded_stacks(_items(image_dir), 32, 114, 10**7, 4, 1))


@forked
def test_predict_reports_it_without_a_traceback(ckpt, image_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(items, "default_collate", _collate_raising(NO_SHM))
    args = ["predict", str(ckpt), str(image_dir), "-o", str(tmp_path / "t.jsonl"), "-w", "1", "-t", "1", "--device",
            "cpu", "--no-progress"]  # fmt: skip
    res = CliRunner().invoke(vestis.cli.app, args)
    assert res.exit_code == 1, res.output
    assert "error: the decoding workers ran out of shared memory" in " ".join(res.stderr.split())
    assert "Traceback" not in res.output
