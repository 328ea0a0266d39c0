"""Evaluation: pure metric functions, the per-taxonomy evaluator and reports.

``vestis.eval.metrics`` and ``vestis.eval.evaluator`` need only NumPy (scikit-learn for the
precision-recall curves); ``vestis.eval.report`` also imports matplotlib, so it is not imported here::

    from vestis.eval import evaluate_predictions, format_table
    from vestis.eval.report import write_report
"""

from __future__ import annotations

from vestis.eval.evaluator import TOP_KS, attribute_table, evaluate_predictions, format_table
from vestis.eval.metrics import (
    DEFAULT_THRESHOLD,
    PRF,
    PRCurve,
    accuracy,
    average_per_class_accuracy,
    calibrate_thresholds,
    macro_f1,
    micro_f1,
    micro_prf,
    one_hot,
    per_class_accuracy,
    per_value_prf,
    precision_recall_curve_data,
    recall_at_k,
    recall_at_k_mmfashion,
    topk_accuracy,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "PRF",
    "TOP_KS",
    "PRCurve",
    "accuracy",
    "attribute_table",
    "average_per_class_accuracy",
    "calibrate_thresholds",
    "evaluate_predictions",
    "format_table",
    "macro_f1",
    "micro_f1",
    "micro_prf",
    "one_hot",
    "per_class_accuracy",
    "per_value_prf",
    "precision_recall_curve_data",
    "recall_at_k",
    "recall_at_k_mmfashion",
    "topk_accuracy",
]
