"""Which task trains a model: :func:`make_task` maps ``cfg.model.name`` to its :class:`~vestis.train.tasks.Task`
(classification, embedding, detection or stage 2; see :func:`~vestis.train.tasks.model_task`)."""

from __future__ import annotations

from typing import Any

from vestis.config import Config
from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.train.detection_task import DetectionTask
from vestis.train.stage2_task import Stage2Task
from vestis.train.tasks import ClassifierTask, EmbeddingTask, Task, model_task

__all__ = ["make_task"]


def make_task(cfg: Config, taxonomy: Taxonomy, train_ds: Any, val_ds: Any, *, rank: int, world: int) -> Task:
    """The task of ``cfg.model.name`` (see :func:`model_task`)."""
    kind = model_task(cfg.model.name)
    tc = cfg.train
    if kind != "classification" and (tc.weight_column or tc.balanced_sampling):
        key = "train.weight_column" if tc.weight_column else "train.balanced_sampling"
        raise VestisError(f"{key}: applies to attribute classifiers only, not to model {cfg.model.name!r} ({kind})")
    if kind == "embedding":
        return EmbeddingTask(cfg, taxonomy, train_ds, val_ds, rank=rank, world_size=world)
    if kind == "detection":
        return DetectionTask(cfg, taxonomy, train_ds, val_ds)
    if kind == "stage2":
        return Stage2Task(cfg, taxonomy, train_ds, val_ds)
    return ClassifierTask(cfg, taxonomy, train_ds, val_ds)
