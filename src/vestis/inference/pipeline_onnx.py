"""The ONNX Runtime side of the outfit pipeline: an exported folder's ``pipeline.json`` and its two sessions.

:func:`read_manifest` reads ``pipeline.json`` (written by :func:`vestis.inference.pipeline_export.export_pipeline_onnx`)
into the :class:`~vestis.inference.pipeline.PipelineSpec` and settings; :func:`load_onnx` opens ``detector.onnx`` and
``stage2.onnx`` and checks each against it (the ``vestis.*`` metadata, the input and output names, the output widths).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.inference.pipeline_format import MANIFEST_NAME, PipelineSettings, pipeline_fingerprint
from vestis.inference.pipeline_graphs import DETECTOR_INPUT, STAGE2_INPUTS, PipelineSpec, check_image_sizes

__all__ = [
    "DETECTOR_FILE",
    "ONNX_MANIFEST_FORMAT",
    "ONNX_MANIFEST_VERSION",
    "STAGE2_FILE",
    "load_onnx",
    "read_manifest",
]

DETECTOR_FILE, STAGE2_FILE = "detector.onnx", "stage2.onnx"
ONNX_MANIFEST_FORMAT = "vestis-pipeline-onnx"
ONNX_MANIFEST_VERSION = 1


class _OnnxRuntime:
    def __init__(self, detector: Any, stage2: Any) -> None:
        self.detector, self.stage2 = detector, stage2

    def run_detector(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(self.detector.run(None, {DETECTOR_INPUT: images}))

    def run_stage2(self, crops: np.ndarray, object_types: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(self.stage2.run(None, {STAGE2_INPUTS[0]: crops, STAGE2_INPUTS[1]: object_types}))


def load_onnx(folder: Path, device: str | None, threads: int | None) -> tuple[PipelineSpec, PipelineSettings, Any]:
    """The spec, settings and ONNX Runtime sessions of an exported pipeline folder."""
    from vestis.inference.runtime import onnx_providers

    manifest = folder / MANIFEST_NAME
    spec, settings = read_manifest(manifest)
    try:
        import onnxruntime as ort
    except ImportError:
        raise VestisError("ONNX models need onnxruntime: pip install 'vestis[onnx]'") from None
    providers = onnx_providers(device, ort.get_available_providers())
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        if threads < 1:
            raise VestisError(f"threads: expected a positive number of threads, got {threads}")
        options.intra_op_num_threads = threads
    sessions = []
    for name, part in ((DETECTOR_FILE, "detector"), (STAGE2_FILE, "stage2")):
        p = folder / name
        if not p.is_file():
            raise VestisError(f"{p}: missing (expected {DETECTOR_FILE} and {STAGE2_FILE} beside {MANIFEST_NAME})")
        try:
            sess = ort.InferenceSession(str(p), options, providers=providers)
        except Exception as e:  # onnxruntime's own exception types for bad files
            raise VestisError(f"{p}: not a loadable ONNX model ({str(e).strip()[:300]})") from None
        _check_graph(sess, part, p, spec, settings)
        sessions.append(sess)
    return spec, settings, _OnnxRuntime(*sessions)


def _check_graph(sess: Any, part: str, path: Path, spec: PipelineSpec, settings: PipelineSettings) -> None:
    """Refuse a graph that is not the ``part`` of the pipeline ``pipeline.json`` describes.

    Checked: the ``vestis.*`` metadata :func:`vestis.inference.pipeline_export.export_pipeline_onnx` writes (format,
    part, the part's and the pair's fingerprints), the input and output names, and the output widths: the heatmap's
    channels are the detector's classes, stage 2's outputs are the layout's ``C`` categories and ``A`` attribute
    values. A mismatch is a one-line error naming the file, not a shape error at the first image.
    """
    from vestis.inference.pipeline_graphs import DETECTOR_OUTPUTS, STAGE2_OUTPUTS

    try:
        meta = dict(sess.get_modelmeta().custom_metadata_map)
    except Exception:  # a runtime without metadata access: then the checks below refuse it
        meta = {}
    fp = spec.detector_fingerprint if part == "detector" else spec.stage2_fingerprint
    expected = {
        "vestis.format": ONNX_MANIFEST_FORMAT,
        "vestis.part": part,
        "vestis.fingerprint": fp,
        "vestis.pipeline": pipeline_fingerprint(spec.detector_fingerprint, spec.stage2_fingerprint, settings),
    }
    for key, want in expected.items():
        got = meta.get(key)
        if got != want:
            what = "fingerprint of" if "fingerprint" in key or key == "vestis.pipeline" else "value of"
            raise VestisError(
                f"{path}: metadata {key}: expected {want!r} ({what} {MANIFEST_NAME}'s {part}), got {got!r}; "
                f"the graph is not the {part} this {MANIFEST_NAME} describes (export again with `vestis export`)"
            )
    inputs = [i.name for i in sess.get_inputs()]
    outputs = sess.get_outputs()
    if part == "detector":
        want_in, want_out = [DETECTOR_INPUT], list(DETECTOR_OUTPUTS)
        widths = {"heatmap": len(spec.classes), "size": 2, "offset": 2}
    else:
        want_in, want_out = list(STAGE2_INPUTS), list(STAGE2_OUTPUTS)
        widths = {"category": len(spec.layout.categories), "attributes": len(spec.layout.attributes)}
    if inputs != want_in or [o.name for o in outputs] != want_out:
        raise VestisError(
            f"{path}: expected inputs {want_in} and outputs {want_out}, got {inputs} and {[o.name for o in outputs]}"
        )
    for o in outputs:
        shape = list(o.shape or [])
        width = shape[1] if len(shape) > 1 else None
        if width != widths[o.name]:
            what = "classes" if o.name == "heatmap" else "values of the layout"
            raise VestisError(
                f"{path}: output {o.name}: {width!r} channels, but {MANIFEST_NAME} gives {widths[o.name]} {what}"
            )


def _field(data: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    v = data.get(key) if isinstance(data, dict) else None
    if not isinstance(v, kind) or (isinstance(v, bool) and kind is not bool):
        raise VestisError(f"{where}: {key}: expected {getattr(kind, '__name__', kind)}, got {type(v).__name__}")
    return v


def read_manifest(path: Path) -> tuple[PipelineSpec, PipelineSettings]:
    """The spec and settings of an exported pipeline's ``pipeline.json`` (written by
    :func:`vestis.inference.pipeline_export.export_pipeline_onnx`).

    Raises:
        VestisError: unreadable JSON, another format, a missing or mistyped field (named).
    """
    from vestis.models.hierarchical import Stage2Layout

    src = str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise VestisError(f"{path}: not a readable pipeline description ({e})") from None
    if not isinstance(data, dict) or data.get("format") != ONNX_MANIFEST_FORMAT:
        raise VestisError(f"{path}: format: expected {ONNX_MANIFEST_FORMAT!r} (a folder from `vestis export`)")
    version = data.get("version")
    if not isinstance(version, int) or version > ONNX_MANIFEST_VERSION:
        raise VestisError(f"{path}: version: expected an integer <= {ONNX_MANIFEST_VERSION}, got {version!r}")
    settings = PipelineSettings.from_dict(data.get("settings"), source=src)
    det = _field(data, "detector", dict, src)
    st = _field(data, "stage2", dict, src)
    classes = _field(det, "classes", list, f"{src}: detector")
    if not classes or not all(isinstance(c, str) for c in classes):
        raise VestisError(f"{src}: detector: classes: expected a non-empty list of names")
    tax = Taxonomy.from_dict(_field(st, "taxonomy", dict, f"{src}: stage2"), source=f"{src}: stage2.taxonomy")
    types = _field(st, "object_types", list, f"{src}: stage2")
    layout = Stage2Layout.from_taxonomy(tax, [str(t) for t in types])
    thr = _field(st, "thresholds", list, f"{src}: stage2")
    try:
        thresholds = np.asarray(thr, dtype=np.float64)
    except (TypeError, ValueError):
        thresholds = np.zeros(0)
    if thresholds.shape != (len(layout.attributes),) or not np.isfinite(thresholds).all():
        raise VestisError(f"{src}: stage2: thresholds: expected {len(layout.attributes)} numbers, one per output")
    sizes = {}
    keys = (("detector", "image_size"), ("detector", "stride"), ("detector", "candidates"), ("detector", "pad_value"),
            ("stage2", "image_size"), ("stage2", "pad_value"))  # fmt: skip
    for part, key in keys:
        v = _field(data[part], key, int, f"{src}: {part}")
        if v < (0 if key == "pad_value" else 1):
            raise VestisError(f"{src}: {part}: {key}: expected a positive integer, got {v}")
        sizes[f"{part}.{key}"] = v
    check_image_sizes(sizes["detector.image_size"], sizes["stage2.image_size"], src)
    spec = PipelineSpec(
        classes=tuple(classes),
        detector_size=sizes["detector.image_size"],
        detector_pad=sizes["detector.pad_value"],
        stride=sizes["detector.stride"],
        candidates=sizes["detector.candidates"],
        stage2_size=sizes["stage2.image_size"],
        stage2_pad=sizes["stage2.pad_value"],
        layout=layout,
        thresholds=thresholds,
        detector_fingerprint=str(_field(det, "fingerprint", str, f"{src}: detector")),
        stage2_fingerprint=str(_field(st, "fingerprint", str, f"{src}: stage2")),
        stage2_taxonomy=tax,
    )
    expected = pipeline_fingerprint(spec.detector_fingerprint, spec.stage2_fingerprint, settings)
    if data.get("fingerprint") != expected:
        raise VestisError(
            f"{src}: fingerprint: expected {expected} (of the parts and settings), got {data.get('fingerprint')!r}"
        )
    return spec, settings
