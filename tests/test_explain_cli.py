"""`mammolens explain` / `explain-eval` end to end on a tiny bundle, their one-line errors, and the scores."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from mammolens.bundle.model import save_bundle
from mammolens.cli import main
from mammolens.data.synthetic import generate
from mammolens.explain.localisation import centre_prior, finding_mask, scores
from mammolens.models import create_model


def _bundle(path: Path, steps: list[dict], classes=("benign", "malignant")) -> Path:
    model = create_model("scratch-cnn", len(classes), depth=2, width=4, hidden=0, dropout=0.0)
    return save_bundle(
        path, model, classes=classes, task="benign-malignant", preprocess={"steps": steps},
        normalisation=None, metrics={}, provenance={}, config={},
    )  # fmt: skip


@pytest.fixture(scope="module")
def films(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("films")
    generate(root, n_per_class=2, size=64, seed=3, classes=("benign", "malignant"))
    return root


def _png(path: Path, size=(80, 60)) -> Path:
    image = np.zeros(size[::-1], np.uint8)
    cv2.circle(image, (size[0] // 2, size[1] // 2), 20, 180, -1)
    cv2.imwrite(str(path), image)
    return path


def test_explain_writes_overlay_panel_and_summary(tmp_path: Path, capsys) -> None:
    bundle = _bundle(tmp_path / "b", [{"name": "resize", "size": 32}])
    a, b = _png(tmp_path / "a.png"), _png(tmp_path / "b.png", (50, 70))
    out = tmp_path / "out"
    assert main(["explain", str(bundle), str(a), str(b), "--out", str(out), "--method", "gradcam++"]) == 0
    for stem, shape in (("a", (60, 80)), ("b", (70, 50))):
        overlay = cv2.imread(str(out / f"{stem}_overlay.png"))
        assert overlay.shape[:2] == shape  # at the ORIGINAL image's size
        assert cv2.imread(str(out / f"{stem}_panel.png")) is not None
    assert "P(malignant)=" in capsys.readouterr().out
    assert (out / "explanations.json").read_text().count('"gradcam++"') == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "gradkam"], "unknown CAM method 'gradkam'; known: attention, eigencam, gradcam"),
        (["--layer", "features.norm5"], "layer 'features.norm5' does not exist in model 'scratch-cnn'; valid layers include: encoder.0, encoder.1"),
        (["--target", "2"], "target class index 2 is out of range: this bundle has 2 classes (0..1: benign, malignant)"),
    ],
)
def test_explain_bad_options_are_one_line_and_write_nothing(tmp_path: Path, capsys, args, message) -> None:
    bundle = _bundle(tmp_path / "b", [{"name": "resize", "size": 32}])
    image, out = _png(tmp_path / "a.png"), tmp_path / "out"
    assert main(["explain", str(bundle), str(image), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not out.exists()


def test_explain_an_image_the_bundle_cannot_preprocess(tmp_path: Path, capsys) -> None:
    lesion = _bundle(tmp_path / "b", [{"name": "crop_roi"}, {"name": "resize", "size": 32}])
    good, broken = _png(tmp_path / "a.png"), tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    # a lesion bundle crops around the ROI: an image without one cannot be preprocessed
    assert main(["explain", str(lesion), str(good), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "a.png: crop_roi: sample has no ROI" in err and "\n" not in err
    # the first image is fine, the second is not an image: nothing is written for either
    rois = tmp_path / "rois.csv"
    rois.write_text(f"file,x,y,r\n{good},40,30,10\n{broken},40,30,10\n")
    assert main(["explain", str(lesion), "--rois", str(rois), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "broken.png" in err and "\n" not in err
    assert not out.exists()
    rois.write_text(f"file,x,y,r\n{good},40,30,10\n")
    assert main(["explain", str(lesion), "--rois", str(rois), "--out", str(out)]) == 0


def test_explain_eval_table_page_and_baselines(tmp_path: Path, films: Path, capsys) -> None:
    bundle = _bundle(tmp_path / "b", [{"name": "crop_breast"}, {"name": "resize", "size": 32}])
    out = tmp_path / "eval"
    args = ["explain-eval", str(bundle), str(films), "--out", str(out), "--method", "gradcam,occlusion", "--name", "tiny"]
    assert main(args) == 0
    with open(out / "localisation.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [r["method"] for r in table] == ["gradcam", "occlusion", "breast-mask", "centre-prior"]
    for row in table:
        for metric in ("pointing", "energy_inside", "iou_top5"):
            assert 0.0 <= float(row[f"{metric}_lo"]) <= float(row[metric]) <= float(row[f"{metric}_hi"]) <= 1.0
    assert int(table[0]["images"]) == 4  # every benign and malignant synthetic film has a lesion circle
    page = (out / "localisation.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "http" not in page  # self-contained
    assert (out / "gallery.png").is_file() and (out / "localisation_per_image.csv").is_file()
    assert main(["explain-eval", str(bundle), str(films), "--out", str(tmp_path / "e2"), "--method", "nope"]) == 2
    assert "unknown CAM method 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "e2").exists()


def test_scores_on_maps_with_known_answers() -> None:
    shape = (50, 60)
    fov = np.ones(shape, bool)
    finding = finding_mask(shape, [(40, 20, 5)])
    perfect = scores(finding.astype(np.float32), finding, fov, top_percent=100 * finding.mean())
    assert perfect == {"pointing": 1.0, "energy_inside": 1.0, f"iou_top{100 * finding.mean():g}": 1.0}
    wrong = np.zeros(shape, np.float32)
    wrong[5, 5] = 1.0
    assert scores(wrong, finding, fov) == {"pointing": 0.0, "energy_inside": 0.0, "iou_top5": 0.0}
    uniform = scores(np.ones(shape, np.float32), finding, fov)
    assert uniform["pointing"] == pytest.approx(finding.mean())  # ties: the expected hit
    assert uniform["energy_inside"] == pytest.approx(finding.mean())
    prior = centre_prior(fov)
    assert np.unravel_index(np.argmax(prior), shape) in ((24, 29), (24, 30), (25, 29), (25, 30))
    # outside the field of view nothing counts
    half = np.zeros(shape, bool)
    half[:, :30] = True
    assert scores(finding.astype(np.float32), finding, half)["energy_inside"] == 0.0
