"""The node against a real Orthanc: results appear in the study, checked by dicom3tools and dcmtk,
and the SR's probabilities are the Predictor's."""

from __future__ import annotations

import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pacs_fixtures import (  # noqa: F401 - fixtures
    bundle,
    dciodvfy_errors,
    exam,
    instance_file,
    needs_dicom_tools,
    needs_orthanc,
    orthanc,
    study_instances,
    wait_stable,
    write_config,
)

from mammolens.deploy.predictor import Predictor
from mammolens.pacs.client import Pacs
from mammolens.pacs.config import load_config
from mammolens.pacs.node import Node

pytestmark = [needs_orthanc, needs_dicom_tools]


def _node(tmp_path, orthanc, bundle, **extra) -> Node:
    node = Node(load_config(write_config(tmp_path, orthanc, bundle, **extra)))
    node.poll()  # the cursor starts at the feed's end: what is stored from here on is work
    return node


def _store(orthanc, datasets) -> str:
    Pacs(orthanc.url, orthanc.url + "/dicom-web", orthanc.auth).store(datasets)
    wait_stable(orthanc, datasets[0].StudyInstanceUID)
    return datasets[0].StudyInstanceUID


def test_four_view_study_gets_sr_maps_and_overlays_in_the_same_study(tmp_path, orthanc, bundle):
    node = _node(tmp_path, orthanc, bundle)
    sources = exam(1, encodings=("raw", "rle", "j2k"), lesion_side="L")
    study = _store(orthanc, sources)
    node.run(until_idle=True)
    assert [s.status for s in node.state.studies()] == ["done"]

    files = [instance_file(orthanc, i["ID"], tmp_path / f"{n}.dcm") for n, i in enumerate(study_instances(orthanc, study))]
    objects = [pydicom.dcmread(f) for f in files]
    assert all(o.preamble is not None for o in objects)  # Part 10 files, as the PACS keeps them
    kinds = sorted(str(o.SOPClassUID.name) for o in objects)
    assert kinds.count("Comprehensive 3D SR Storage") == 1
    assert kinds.count("Parametric Map Storage") == 4
    assert kinds.count("Secondary Capture Image Storage") == 4
    assert kinds.count("Digital Mammography X-Ray Image Storage - For Presentation") == 4
    patient = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyDate", "StudyID")
    for obj in objects:  # same study, the patient's attributes copied as they are
        assert obj.StudyInstanceUID == study
        assert [str(obj.get(k)) for k in patient] == [str(sources[0].get(k)) for k in patient]

    # someone else's tools: dciodvfy without errors, dsrdump prints the tree
    results = [f for f, o in zip(files, objects) if o.Modality != "MG"]
    for path in results:
        assert dciodvfy_errors(path) == [], path
    sr_file = next(f for f, o in zip(files, objects) if o.Modality == "SR")
    tree = subprocess.run(["dsrdump", str(sr_file)], capture_output=True, text=True, check=True).stdout
    assert "Imaging Measurement Report" in tree and "Probability of malignant" in tree

    # the SR's view probabilities are the Predictor's on the same files
    sr = hd.sr.srread(sr_file)
    predictor = Predictor.load(bundle)
    expected = {}
    for path, obj in zip(files, objects):
        if obj.Modality == "MG":
            expected[obj.SOPInstanceUID] = predictor.predict(path).probabilities["malignant"]
    objects_by_uid = {o.SOPInstanceUID: o for o in objects}
    got = {}
    for group in sr.content.get_image_measurement_groups():
        refs = group.source_images
        value = next(m.value for m in group.get_measurements() if m.name.meaning == "Probability of malignant")
        for ref in refs:
            got[ref.referenced_sop_instance_uid] = float(value)
    assert set(got) == set(expected)
    for uid, p in expected.items():
        assert got[uid] == pytest.approx(p, abs=1e-6)
    # breasts and exam: the exam room's max of the views, decided at the bundle's threshold
    units = {g.tracking_identifier: g for g in sr.content.get_image_measurement_groups()}
    by_side = {s: max(p for u, p in expected.items() if objects_by_uid[u].ImageLaterality == s) for s in "LR"}
    for side, p in by_side.items():
        group = units[f"abnormality {side} breast"]
        assert group.get_measurements()[0].value == pytest.approx(p, abs=1e-6)
    exam_group = units["abnormality exam"]
    assert exam_group.get_measurements()[0].value == pytest.approx(max(expected.values()), abs=1e-6)
    decision = exam_group.get_qualitative_evaluations()[0].value.meaning
    assert decision == ("malignant" if max(expected.values()) >= 0.5 else "benign")
    # the evidence names every source image
    evidence = {i.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}  # fmt: skip
    assert evidence == {s.SOPInstanceUID for s in sources}
    # the heatmaps: float pixels on the source grid, the explain API's map of that view
    maps = {m.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID: m
            for m in objects if m.SOPClassUID.name == "Parametric Map Storage"}  # fmt: skip
    assert set(maps) == set(expected)
    for path, obj in zip(files, objects):
        if obj.Modality == "MG":
            m = maps[obj.SOPInstanceUID]
            pixels = np.frombuffer(m.FloatPixelData, dtype="<f4").reshape(m.Rows, m.Columns)
            want = predictor.explain(predictor.read(path), laterality=obj.ImageLaterality)
            np.testing.assert_allclose(pixels, want, atol=1e-6)
