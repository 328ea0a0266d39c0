"""Every importer keeps reads inside its source and writes inside ``out``: hostile ids, paths and symlinks."""

import json
import os
from pathlib import Path

import pytest

from tests.conftest import write_image
from tests.data.importers.test_clothing_attributes import _dataset as clothing_dataset
from tests.data.importers.test_coco import COCO
from tests.data.importers.test_coco import _dataset as coco_dataset
from tests.data.importers.test_deepfashion2 import ANNOS
from tests.data.importers.test_deepfashion2 import _dataset as df2_dataset
from tests.data.importers.test_fashion_product import LINES
from tests.data.importers.test_fashion_product import _dataset as fp_dataset
from tests.data.importers.test_folders import _catalog
from tests.data.importers.test_imaterialist import TRAIN
from tests.data.importers.test_imaterialist import _dataset as imat_dataset
from vestis.data.importers import import_dataset
from vestis.data.importers._context import ImportContext, ImportReport
from vestis.data.manifest import read_manifest
from vestis.data.paths import UnsafePath
from vestis.errors import VestisError


@pytest.fixture
def secret(tmp_path) -> Path:
    """A readable image outside every dataset folder: nothing may read it or write beside it."""
    return write_image(tmp_path / "secret" / "s.jpg", size=(8, 8))


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def _only_under(out: Path, before: set[Path], root: Path) -> None:
    """Every file created under ``root`` since ``before`` lies under ``out``."""
    new = _files(root) - before
    assert new and all(out in p.parents for p in new), sorted(map(str, new))


def _images(out: Path) -> list[str]:
    m = read_manifest(out / "manifest.csv")
    return sorted(r.image for r in m.records)


def test_fashion_product_ids_that_are_not_plain_names_are_skipped(tmp_path, secret):
    lines = [*LINES, "../../secret/s,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,traversal"]
    lines.append(f"{secret.with_suffix('')},Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,absolute")
    src = fp_dataset(tmp_path, lines)  # images/../../secret/s.jpg is the secret file
    out = tmp_path / "a" / "out"  # and out/images/../../secret/s.jpg would be a new file beside out
    before = _files(tmp_path)
    report = import_dataset("fashion-product", src, out, copy=True)
    assert report.skipped["unsafe path"] == 2
    assert report.examples["unsafe path"][0] == (
        "styles.csv:12: id '../../secret/s': expected a plain file name without '/' or '\\'"
    )
    assert report.rows_read == report.rows_written + report.rows_skipped
    assert {r.id for r in read_manifest(out / "manifest.csv").records} == {"1", "2", "3", "4", "7", "8", "9"}
    _only_under(out, before, tmp_path)
    assert not (tmp_path / "a" / "secret").exists()


def test_folders_copy_refuses_symlinks_leading_out_unless_asked(tmp_path, secret):
    src = _catalog(tmp_path)
    os.symlink(secret, src / "category" / "shirt" / "evil.jpg")
    os.symlink("/etc/passwd", src / "category" / "shirt" / "passwd.jpg")
    outside = tmp_path / "elsewhere"
    write_image(outside / "x.jpg", size=(8, 8))
    os.symlink(outside, src / "category" / "coat")  # a whole value folder leading out
    os.symlink(src / "category" / "shirt" / "a.jpg", src / "colour" / "red" / "alias.jpg")  # stays inside: kept
    out = tmp_path / "out"
    before = _files(tmp_path)
    report = import_dataset("folders", src, out, copy=True)
    assert report.skipped["outside the source"] == 3
    shown = " ".join(report.examples["outside the source"])
    assert "category/shirt/evil.jpg" in shown and "passwd" in shown and "category/coat/x.jpg" in shown
    copied = {p.relative_to(out / "images").as_posix() for p in (out / "images").rglob("*.jpg")}
    assert "category/shirt/evil.jpg" not in copied and "category/coat/x.jpg" not in copied
    assert "colour/red/alias.jpg" in copied
    assert all(not p.is_symlink() for p in (out / "images").rglob("*"))
    _only_under(out, before, tmp_path)

    report = import_dataset("folders", src, tmp_path / "out2", copy=True, follow_symlinks=True)
    assert "outside the source" not in report.skipped
    copied = tmp_path / "out2" / "images" / "category" / "coat" / "x.jpg"
    assert copied.is_file() and not copied.is_symlink()
    assert (tmp_path / "out2" / "images" / "category" / "shirt" / "evil.jpg").read_bytes() == secret.read_bytes()


def test_deepfashion_image_names_with_dots_or_a_root_are_skipped(tmp_path, secret):
    src = tmp_path / "df"
    (src / "Anno").mkdir(parents=True)
    (src / "Anno" / "list_category_cloth.txt").write_text("2\ncategory_name category_type\nBlouse 1\nJeans 2\n")
    names = ["img/A/1.jpg", "img/../../secret/s.jpg", str(secret), "img/A/link.jpg"]
    rows = "\n".join(f"{n} {i % 2 + 1}" for i, n in enumerate(names))
    (src / "Anno" / "list_category_img.txt").write_text(f"{len(names)}\nimage_name category_label\n{rows}\n")
    write_image(src / "img" / "A" / "1.jpg", size=(8, 8))
    os.symlink(secret, src / "img" / "A" / "link.jpg")
    report = import_dataset("deepfashion-attributes", src, tmp_path / "out", copy=True)
    assert report.skipped == {"unsafe path": 2, "outside the source": 1}
    assert _images(tmp_path / "out") == ["images/A/1.jpg"]


def test_deepfashion2_symlinked_annotations_and_images_are_skipped(tmp_path, secret):
    src = df2_dataset(tmp_path)
    (tmp_path / "secret" / "anno.json").write_text(json.dumps(ANNOS["train/000001"]))
    os.symlink(tmp_path / "secret" / "anno.json", src / "train" / "annos" / "000008.json")
    write_image(src / "train" / "image" / "000008.jpg", size=(40, 64))
    (src / "train" / "annos" / "000009.json").write_text(json.dumps(ANNOS["train/000001"]))
    os.symlink(secret, src / "train" / "image" / "000009.jpg")
    report = import_dataset("deepfashion2", src, tmp_path / "out", copy=True)
    assert report.skipped["outside the source"] == 2
    ids = {r.id for r in read_manifest(tmp_path / "out" / "manifest.csv").records}
    assert "train/000008" not in ids and "train/000009" not in ids and "train/000001" in ids


def test_fashionai_paths_leaving_the_dataset_are_skipped(tmp_path, secret):
    src = tmp_path / "deep" / "fai"
    (src / "Annotations").mkdir(parents=True)
    (src / "Annotations" / "label.csv").write_text(
        "Images/skirt_length_labels/a.jpg,skirt_length_labels,nnynnn\n"
        "../../secret/s.jpg,skirt_length_labels,nynnnn\n"
        "Images/../../../secret/s.jpg,skirt_length_labels,nnnynn\n"
        f"{secret},skirt_length_labels,ynnnnn\n"
    )
    write_image(src / "Images" / "skirt_length_labels" / "a.jpg", size=(8, 8))
    out = tmp_path / "deep" / "out"
    before = _files(tmp_path)
    report = import_dataset("fashionai", src, out, copy=True)
    assert report.skipped == {"unsafe path": 3}
    assert _images(out) == ["images/skirt_length_labels/a.jpg"]
    _only_under(out, before, tmp_path)


def test_imaterialist_file_names_and_annotation_ids_stay_inside(tmp_path, secret):
    data = json.loads(json.dumps(TRAIN))
    data["images"] += [
        {"id": 8, "file_name": "../../secret/s.jpg", "width": 8, "height": 8},
        {"id": 9, "file_name": str(secret), "width": 8, "height": 8},
    ]
    data["annotations"] += [
        {"id": 81, "image_id": 8, "category_id": 0, "bbox": [0, 0, 4, 4], "attribute_ids": []},
        {"id": 91, "image_id": 9, "category_id": 0, "bbox": [0, 0, 4, 4], "attribute_ids": []},
        # an annotation id is part of a crop's file name
        {"id": "/../../../../escape", "image_id": 1, "category_id": 0, "bbox": [0, 0, 9, 9], "attribute_ids": []},
    ]
    src = imat_dataset(tmp_path)
    (src / "instances_attributes_train2020.json").write_text(json.dumps(data))
    report = import_dataset("imaterialist-2021", src, tmp_path / "out", copy=True)
    assert report.skipped["unsafe path"] == 2
    assert "s.jpg" not in " ".join(_images(tmp_path / "out"))
    before = _files(tmp_path)
    report = import_dataset("imaterialist-2021", src, tmp_path / "crops", crop=True)
    assert report.skipped["unsafe path"] == 3
    assert any("escape" in e for e in report.examples["unsafe path"])
    _only_under(tmp_path / "crops", before, tmp_path)


def test_coco_file_names_symlinks_and_special_files(tmp_path, secret):
    coco = json.loads(json.dumps(COCO))
    coco["images"] += [
        {"id": 20, "file_name": "../../secret/s.jpg"},  # from annotations/: the secret file
        {"id": 21, "file_name": str(secret)},
        {"id": 22, "file_name": "link.jpg"},
        {"id": 23, "file_name": "fifo.jpg"},
    ]
    path = coco_dataset(tmp_path, coco)
    os.symlink(secret, path.parents[1] / "shop" / "link.jpg")
    os.mkfifo(path.parents[1] / "shop" / "fifo.jpg")  # copying it would wait for a writer forever
    out = tmp_path / "data" / "deep" / "out"
    before = _files(tmp_path)
    report = import_dataset("coco", path, out, copy=True)
    assert report.skipped["unsafe path"] == 2
    assert report.skipped["outside the source"] == 1
    assert report.skipped["not a regular file"] == 1
    assert _images(out) == ["images/x1.jpg", "images/x2.jpg", "images/x4.jpg"]
    _only_under(out, before, tmp_path)


def test_clothing_attributes_symlinked_image_is_skipped(tmp_path, secret):
    src = clothing_dataset(tmp_path)
    (src / "images" / "000001.jpg").unlink()
    os.symlink(secret, src / "images" / "000001.jpg")
    report = import_dataset("clothing-attributes", src, tmp_path / "out", copy=True)
    assert report.skipped["outside the source"] == 1
    assert "images/000001.jpg" not in _images(tmp_path / "out")


def test_context_writes_only_under_out_images(tmp_path):
    report = ImportReport("toy", str(tmp_path), str(tmp_path / "out"))
    ctx = ImportContext("toy", tmp_path, tmp_path / "out", copy=True, crop=False, report=report)
    img = write_image(tmp_path / "a.jpg", size=(8, 8))
    for dest in ("../a.jpg", "/tmp/a.jpg", "x/../../a.jpg", ""):
        with pytest.raises(UnsafePath):
            ctx.image(img, dest)
    (tmp_path / "out" / "images").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "out" / "images" / "sub")
    with pytest.raises(VestisError, match="refusing to write outside the output folder"):
        ctx.image(img, "sub/a.jpg")
    assert list((tmp_path / "elsewhere").iterdir()) == []
    assert ctx.image(img, "ok/a.jpg") == "images/ok/a.jpg"
