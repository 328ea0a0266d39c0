"""Which validation metric picks ``best.ckpt``: resolving ``train.selection_metric``, checking it before the first
epoch and on ``--resume``, and the record of the choice stored in the checkpoint (``metrics["selection"]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vestis.config import TrainConfig
from vestis.errors import VestisError
from vestis.train.tasks import Task

__all__ = [
    "SELECTION_KEYS",
    "check_resume_selection",
    "check_selection",
    "selection_key",
    "selection_metric",
    "selection_record",
]

# the settings that name the selection metric; a resume compares the metric they resolve to, not their spelling
SELECTION_KEYS = frozenset({"train.selection_metric", "train.early_stop_metric"})


def selection_metric(tc: TrainConfig, task: Task) -> str:
    """The summary key that picks ``best.ckpt``: ``train.early_stop_metric`` (the older name) when set, else
    ``train.selection_metric``, whose ``auto`` is the task's own (:attr:`~vestis.train.tasks.Task.default_metric`:
    ``mean_kind_score`` for classifiers, ``triplet_accuracy`` for embedding models)."""
    if tc.early_stop_metric:
        return tc.early_stop_metric
    return task.default_metric if tc.selection_metric == "auto" else tc.selection_metric


def selection_key(tc: TrainConfig) -> str:
    """The setting that named the selection metric, for messages."""
    return "train.early_stop_metric" if tc.early_stop_metric else "train.selection_metric"


def check_selection(tc: TrainConfig, metric: str, task: Task) -> None:
    """Refuse an unknown selection metric or mode, or a bad calibration minimum, before any epoch is spent.

    Raises:
        VestisError: naming the setting and what it accepts.
    """
    if tc.early_stop_mode not in ("max", "min"):
        raise VestisError(f"train.early_stop_mode: expected max or min, got {tc.early_stop_mode!r}")
    if tc.calibration_min_positives < 1:
        raise VestisError(
            f"train.calibration_min_positives: expected an integer >= 1, got {tc.calibration_min_positives}"
        )
    known = task.metric_names()
    if known is not None and metric not in known:
        raise VestisError(f"{selection_key(tc)}: {metric!r} is not one of {known}")


def check_resume_selection(saved: dict[str, Any], metric: str, task: Task, path: Path) -> None:
    """Refuse a resume whose ``best.ckpt`` would be chosen on another metric than the run's so far: the run's best
    value would be compared with numbers of a different kind.

    Args:
        saved: the loaded ``last.ckpt``.
        metric: the metric this configuration selects on (:func:`selection_metric`).
        task: the run's task; gives what ``auto`` meant for runs from before ``train.selection_metric``.
        path: ``last.ckpt``, for the message.

    Raises:
        VestisError: the metrics differ; the message names the setting that resumes the run.
    """
    # runs from before train.selection_metric recorded none: early_stop_metric or the task's default of that time
    before = saved["train_state"].get("selection_metric") or saved["config"].get("train", {}).get("early_stop_metric")
    before = before or task.legacy_metric
    if before != metric:
        raise VestisError(
            f"{path}: the run chose best.ckpt on {before}, this configuration on {metric}; "
            f"pass train.selection_metric={before} to resume it, or use a new --out"
        )


def selection_record(metric: str, value: float | None, epoch: int, mode: str) -> dict[str, Any]:
    """``best.ckpt``'s ``metrics["selection"]``.

    Args:
        metric: the summary key that chose the checkpoint.
        value: its validation value; ``None`` when there were no validation rows (the latest epoch is kept).
        epoch: the checkpoint's 1-based epoch.
        mode: ``max`` or ``min``: whether a larger value was better.
    """
    return {"metric": metric, "value": value, "epoch": epoch, "mode": mode}
