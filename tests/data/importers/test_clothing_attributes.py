from pathlib import Path

import numpy as np
import pytest
import scipy.io

from tests.conftest import require_shared, write_image
from vestis.data.importers import import_dataset
from vestis.data.importers.clothing_attributes import COLOURS, PATTERNS, SINGLE
from vestis.data.manifest import read_manifest
from vestis.data.taxonomy import load_taxonomy
from vestis.errors import VestisError

N = np.nan
# one column per label file, rows = images 1..6 (image 5 has no file)
SINGLE_GT = {
    "category": [5, 7, N, 1, 3, 9],  # 9 is not a README code
    "sleevelength": [3, 1, 2, N, 3, 2],
    "neckline": [1, 2, 3, 1, N, 2],
    "gender": [1, 2, 2, 1, 1, N],
    "collar": [2, 1, N, 2, 1, 1],
    "placket": [2, 1, 1, 2, 1, 1],
    "necktie": [2, 1, 1, 1, 1, 1],
    "scarf": [1, 2, 1, 1, 1, 1],
    "skin_exposure": [1, 2, 1, 1, 2, 1],
}
# flags set to 2 per image; "nan" = every flag of the group unknown; a set of stems = those flags NaN
COLOUR_YES = {1: {"black"}, 2: {"red", "white"}, 3: "nan", 4: set(), 5: {"red"}, 6: {"blue", "many_colors"}}
PATTERN_YES = {1: {"pattern_solid"}, 2: {"pattern_floral"}, 3: {"pattern_plaid", "pattern_stripe"}, 4: "nan"}
PATTERN_YES |= {5: {"pattern_solid"}, 6: {"pattern_spot"}}
PATTERN_NAN = {2: {"pattern_stripe"}}  # image 2: floral known yes, stripe unknown


def _group(stems, yes, nan=None) -> dict[str, list[float]]:
    cols = {s: [] for s in stems}
    for i in range(1, 7):
        for s in stems:
            if yes[i] == "nan" or s in (nan or {}).get(i, set()):
                cols[s].append(N)
            else:
                cols[s].append(2.0 if s in yes[i] else 1.0)
    return cols


def _dataset(root: Path, gt: dict[str, list[float]] | None = None) -> Path:
    src = root / "ca"
    (src / "labels").mkdir(parents=True)
    cols = dict(SINGLE_GT)
    cols |= _group(COLOURS.values(), COLOUR_YES)
    cols |= _group(PATTERNS.values(), PATTERN_YES, PATTERN_NAN)
    cols |= gt or {}
    for stem, values in cols.items():
        scipy.io.savemat(src / "labels" / f"{stem}_GT.mat", {"GT": np.array(values, dtype=float).reshape(-1, 1)})
    for i in (1, 2, 3, 4, 6):
        write_image(src / "images" / f"{i:06d}.jpg", size=(8, 10))
    return src


HEADER = (
    "id,image,group,split,title,category,sleeve_length,neckline,gender,collar,placket,necktie,scarf,"
    "skin_exposure,colour,pattern"
)
ROWS = [
    "000001,../ca/images/000001.jpg,,,,suit,long sleeves,v-shape,male,has collar,has placket,has necktie,no scarf,"
    "low exposure,black,solid",
    "000002,../ca/images/000002.jpg,,,,dress,no sleeves,round,female,no collar,no placket,no necktie,has scarf,"
    "high exposure,red|white,",
    "000003,../ca/images/000003.jpg,,,,,short sleeves,other shapes,female,,no placket,no necktie,no scarf,"
    "low exposure,,plaid|striped",
    "000004,../ca/images/000004.jpg,,,,shirt,,v-shape,male,has collar,has placket,no necktie,no scarf,low exposure,,",
    "000006,../ca/images/000006.jpg,,,,,short sleeves,round,,no collar,no placket,no necktie,no scarf,"
    "low exposure,blue|many colors,spotted",
]


def test_manifest_report_and_taxonomy(tmp_path):
    src = _dataset(tmp_path)
    out = tmp_path / "out"
    report = import_dataset("clothing-attributes", src, out)
    assert (out / "manifest.csv").read_text() == "\n".join([HEADER, *ROWS]) + "\n"
    assert (report.rows_read, report.rows_written) == (6, 5)
    assert report.skipped == {"no image": 1}
    assert report.details["missing_images"] == {"count": 1, "numbers": [5]}
    assert report.labels_dropped == {
        "category: code 9 not in 1..7": 1,
        "pattern: some flags unknown (NaN)": 1,
        "colour: no flag set (an empty set cannot be written)": 1,
    }
    tax = load_taxonomy(out / "taxonomy.yaml")
    assert tax.category_attribute == "category"
    assert tax["category"].values == ("shirt", "sweater", "t-shirt", "outerwear", "suit", "tank top", "dress")
    assert tax["sleeve_length"].values == ("no sleeves", "short sleeves", "long sleeves")
    assert tax["neckline"].values == ("v-shape", "round", "other shapes")
    assert tax["gender"].values == ("male", "female")
    assert tax["colour"].kind == "multi" and len(tax["colour"].values) == 11
    assert tax["pattern"].values == ("solid", "floral", "spotted", "graphics", "plaid", "striped")
    assert dict(tax.hierarchy) == {
        "upper-body": ("shirt", "sweater", "t-shirt", "outerwear", "suit", "tank top"),
        "full-body": ("dress",),
    }
    assert {a.name for a in tax if a.roi == "small"} == {
        "sleeve_length",
        "neckline",
        "collar",
        "placket",
        "necktie",
        "scarf",
    }
    assert tax["colour"].roi == tax["pattern"].roi == "large"


def test_partial_groups_positives_writes_the_known_flags(tmp_path):
    src = _dataset(tmp_path)
    report = import_dataset("clothing-attributes", src, tmp_path / "out", partial_groups="positives")
    rows = (tmp_path / "out" / "manifest.csv").read_text().splitlines()
    assert rows[2].endswith("high exposure,red|white,floral")
    assert "pattern: some flags unknown (NaN)" not in report.labels_dropped
    with pytest.raises(VestisError, match="partial_groups: expected 'missing' or 'positives'"):
        import_dataset("clothing-attributes", src, tmp_path / "out", partial_groups="all")


def test_inconsistent_or_missing_label_files_are_errors(tmp_path):
    src = _dataset(tmp_path / "a", {"gender": [1, 2, 1]})
    with pytest.raises(VestisError, match="disagree on the image count"):
        import_dataset("clothing-attributes", src, tmp_path / "out")
    src = _dataset(tmp_path / "b")
    (src / "labels" / "scarf_GT.mat").unlink()
    with pytest.raises(VestisError, match=r"scarf_GT\.mat: label file not found"):
        import_dataset("clothing-attributes", src, tmp_path / "out")


@pytest.mark.realdata
def test_real_clothing_attributes(tmp_path):
    from vestis.data.validate import validate_file

    src = require_shared("clothing-attributes")
    out = tmp_path / "ca"
    report = import_dataset("clothing-attributes", src, out)
    assert report.rows_read == 1_856
    assert report.rows_written == 1_485
    assert report.skipped == {"no image": 371}
    present = sorted(int(p.stem) for p in (src / "images").glob("*.jpg"))
    missing = sorted(set(range(1, 1_857)) - set(present))
    assert report.details["missing_images"] == {"count": 371, "numbers": missing}

    manifest = read_manifest(out / "manifest.csv")
    assert [int(r.id) for r in manifest] == present
    rows = np.array(present) - 1
    for attr, (stem, values, _) in SINGLE.items():
        gt = scipy.io.loadmat(src / "labels" / f"{stem}_GT.mat")["GT"][:, 0][rows]
        assert sum(attr not in r.labels for r in manifest) == int(np.isnan(gt).sum()), attr
        # and the labelled rows carry the README name of their code
        for r, code in zip(manifest, gt, strict=True):
            if not np.isnan(code):
                assert r.labels[attr] == (values[int(code) - 1],)
    black = scipy.io.loadmat(src / "labels" / "black_GT.mat")["GT"][:, 0][rows]
    assert sum("black" in r.labels.get("colour", ()) for r in manifest) == int((black == 2).sum())

    _, taxonomy, problems = validate_file(out / "manifest.csv", check_images=False)
    assert problems == []
    assert taxonomy.category_attribute == "category"
