"""The node against a real Orthanc: results appear in the study, checked by dicom3tools and dcmtk,
and the SR's probabilities are the Predictor's."""

from __future__ import annotations

import subprocess

import highdicom as hd
import numpy as np
import pacs_fixtures
import pydicom
import pytest
from pacs_fixtures import (
    dciodvfy_errors,
    exam,
    instance_file,
    needs_dicom_tools,
    needs_orthanc,
    study_instances,
    wait_stable,
    write_config,
)

from mammolens.deploy.predictor import Predictor
from mammolens.pacs.client import Pacs
from mammolens.pacs.config import load_config
from mammolens.pacs.node import Node

bundle, orthanc = pacs_fixtures.bundle, pacs_fixtures.orthanc  # this module's fixtures
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
    got = {}
    for group in sr.content.get_image_measurement_groups():
        refs = group.source_images
        value = next(m.value for m in group.get_measurements() if m.name.meaning == "Probability of malignant")
        for ref in refs:
            got[ref.referenced_sop_instance_uid] = float(value)
    assert set(got) == set(expected)
    for uid, p in expected.items():
        assert got[uid] == pytest.approx(p, abs=1e-6)
    # breasts and exam: what Predictor.predict_exam (the exam room, the bundle's aggregator) says
    mg = [(path, obj) for path, obj in zip(files, objects) if obj.Modality == "MG"]
    reference = predictor.predict_exam([p for p, _ in mg], views=[o.ViewPosition for _, o in mg])
    units = {g.tracking_identifier: g for g in sr.content.get_image_measurement_groups()}
    for side, breast in reference.breasts.items():
        group = units[f"abnormality {side} breast"]
        assert group.get_measurements()[0].value == pytest.approx(breast.probabilities["malignant"], abs=1e-6)
        assert group.get_qualitative_evaluations()[0].value.meaning == breast.decision
    group = units["abnormality exam"]
    assert group.get_measurements()[0].value == pytest.approx(reference.exam.probabilities["malignant"], abs=1e-6)
    assert group.get_qualitative_evaluations()[0].value.meaning == reference.exam.decision
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


def test_two_bundles_one_multiclass_each_in_the_sr(tmp_path, orthanc, bundle):
    """An abnormality and a density-like (three classes) bundle: both in one SR, the density exam the
    denser breast's call (the exam room's max), its view probabilities the Predictor's."""
    import torch
    import yaml

    from mammolens.bundle import save_bundle
    from mammolens.models import create_model
    from mammolens.preprocess.pipeline import default_steps

    torch.manual_seed(3)
    density = save_bundle(tmp_path / "density", create_model("scratch-cnn", 3, depth=2, width=4, hidden=0).eval(),
                          classes=["a", "b", "c"], task="density", preprocess={"steps": default_steps(32)},
                          normalisation={"mean": 0.45, "std": 0.25}, metrics={}, provenance={}, config={})  # fmt: skip
    path = write_config(tmp_path, orthanc, bundle)
    config = yaml.safe_load(path.read_text())
    config["bundles"].append({"name": "density", "path": str(density)})
    path.write_text(yaml.safe_dump(config))
    node = Node(load_config(path))
    node.poll()
    sources = exam(2)
    study = _store(orthanc, sources)
    node.run(until_idle=True)
    sr_object = next(o for o in (pydicom.dcmread(instance_file(orthanc, i["ID"], tmp_path / f"{n}.dcm"))
                                 for n, i in enumerate(study_instances(orthanc, study))) if o.Modality == "SR")  # fmt: skip
    sr = hd.sr.Comprehensive3DSR.from_dataset(sr_object)
    units = {g.tracking_identifier: g for g in sr.content.get_image_measurement_groups()}
    assert {n.split()[0] for n in units} == {"abnormality", "density"} and len(units) == 2 * (4 + 2 + 1)
    predictor = Predictor.load(density)
    paths = []
    for ds in sources:
        ds.save_as(tmp_path / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        paths.append(tmp_path / f"{ds.SOPInstanceUID}.dcm")
    reference = predictor.predict_exam(paths, views=[ds.ViewPosition for ds in sources])

    def probabilities(group) -> dict[str, float]:
        return {m.name.meaning.removeprefix("Probability of "): m.value for m in group.get_measurements()}

    for ds, view in zip(sources, reference.views):
        got = probabilities(units[f"density {ds.ImageLaterality}-{ds.ViewPosition}"])
        assert got == pytest.approx(view.probabilities, abs=1e-6)
    assert probabilities(units["density exam"]) == pytest.approx(reference.exam.probabilities, abs=1e-6)
    assert units["density exam"].get_qualitative_evaluations()[0].value.meaning == reference.exam.decision
