"""The synthetic mammography unit and the result writers, without a PACS."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pacs_fixtures import dciodvfy_errors, exam, needs_dicom_tools

from mammolens.io import read_image
from mammolens.pacs.synthetic import MG_FOR_PRESENTATION, mg_dataset
from mammolens.pacs.writers import (
    Finding,
    heatmap_capture,
    heatmap_map,
    structured_report,
)
from mammolens.utils.errors import ConfigError


def test_four_views_as_a_unit_writes_them(tmp_path):
    views = exam(0, encodings=("raw", "rle", "j2k"), lesion_side="R", view_position=False)
    assert len({v.StudyInstanceUID for v in views}) == 1 and len({v.SeriesInstanceUID for v in views}) == 4
    seen = set()
    for i, ds in enumerate(views):
        path = tmp_path / f"{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        back = pydicom.dcmread(path)
        assert (back.SOPClassUID, back.Modality, back.PresentationIntentType) == (MG_FOR_PRESENTATION, "MG", "FOR PRESENTATION")
        assert (back.BitsAllocated, back.BitsStored, back.HighBit) == (16, 12, 11) and int(back.pixel_array.max()) <= 4095
        assert back.ViewPosition == ""  # as in CMMD: the view only in ViewCodeSequence
        image = read_image(path)  # the project's reader finds side and view
        seen.add((image.meta.laterality, image.meta.view, back.file_meta.TransferSyntaxUID.name))
    assert {(s[0], s[1]) for s in seen} == {("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO")}
    assert len({s[2] for s in seen}) == 3
    with pytest.raises(ConfigError, match="unknown pixel encoding 'jpeg'"):
        mg_dataset(np.zeros((8, 8), np.uint16), None, "1.2", "1.3", "L", "CC", 1, encoding="jpeg")  # type: ignore[arg-type]


@needs_dicom_tools
def test_synthetic_images_pass_dciodvfy(tmp_path):
    for i, ds in enumerate(exam(1, encodings=("raw", "rle", "j2k"))[:3]):
        path = tmp_path / f"{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], ds.file_meta.TransferSyntaxUID.name


def _findings(views, classes=("a", "b", "c")) -> list[Finding]:
    out = []
    for i, v in enumerate(views):
        p = np.array([0.2, 0.3, 0.5]) if i % 2 else np.array([0.6, 0.3, 0.1])
        out.append(Finding("density", "f" * 64, "density", classes[int(p.argmax())], float(p.max()),
                           classes[int(p.argmax())], v.ImageLaterality, v.ViewPosition, v,
                           {c: float(q) for c, q in zip(classes, p) if c != classes[int(p.argmax())]}))  # fmt: skip
    out.append(Finding("density", "f" * 64, "density", "c", 0.5, "c"))
    return out


def test_sr_of_a_multiclass_bundle_reads_back_and_its_uids_are_fixed(tmp_path):
    views = exam(2)
    first = structured_report(views, _findings(views), bundles_key="density=x")
    again = structured_report(views, _findings(views), bundles_key="density=x")
    other = structured_report(views, _findings(views), bundles_key="density=y")
    assert first.SOPInstanceUID == again.SOPInstanceUID != other.SOPInstanceUID  # a rerun rewrites, a new bundle adds
    assert first.StudyInstanceUID == views[0].StudyInstanceUID and first.PatientID == views[0].PatientID
    assert first.VerificationFlag == "UNVERIFIED" and first.CompletionFlag == "COMPLETE"
    first.save_as(tmp_path / "sr.dcm")
    sr = hd.sr.srread(tmp_path / "sr.dcm")
    groups = sr.content.get_image_measurement_groups()
    assert len(groups) == 5
    view = next(g for g in groups if g.source_images)
    probs = {m.name.meaning: m.value for m in view.get_measurements()}
    assert probs == pytest.approx({"Probability of a": 0.6, "Probability of b": 0.3, "Probability of c": 0.1})
    assert view.get_qualitative_evaluations()[0].value.meaning == "a"


@needs_dicom_tools
def test_map_and_overlay_sit_on_the_source_grid(tmp_path):
    source = exam(3)[0]
    heat = np.random.default_rng(0).random((source.Rows, source.Columns)).astype(np.float32)
    pm = heatmap_map(source, heat, bundles_key="k", bundle_hash="h" * 16)
    np.testing.assert_array_equal(np.frombuffer(pm.FloatPixelData, "<f4").reshape(heat.shape), heat)
    assert pm.Laterality == source.ImageLaterality and "FrameOfReferenceUID" not in source  # the source untouched
    pixels = source.pixel_array / 4095.0
    small = heatmap_capture(source, pixels, heat, bundles_key="k", max_side=128)
    assert (small.Rows, small.Columns) == (-(-source.Rows // 3), -(-source.Columns // 3))  # 320 rows: step 3
    assert float(small.PixelSpacing[0]) == pytest.approx(3 * float(source.PixelSpacing[0]))
    for name, obj in (("pm", pm), ("sc", small)):
        obj.save_as(tmp_path / f"{name}.dcm")
        assert dciodvfy_errors(tmp_path / f"{name}.dcm") == [], name
