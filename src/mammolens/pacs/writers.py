"""The node's answers as DICOM objects that viewers show beside the images (highdicom builds them).

- ``structured_report``: a Comprehensive 3D SR following TID 1500 (Measurement Report). One image
  library entry per source view, one TID 1501 group per view with the model's probability (a
  numeric measurement, unit "1") and its decision at the bundle's threshold (a coded evaluation),
  one group per breast and one for the exam (the exam room's aggregation). Every group names the
  algorithm as the IHE AI Results profile asks (name, version = bundle hash, manufacturer) and the
  document is UNVERIFIED: it is an aid, not a diagnosis on its own.
- ``heatmap_map``: a Parametric Map per view, float32 on the source image's pixel grid, the
  ClassActivation quantity of the explanation.
- ``heatmap_capture``: a Secondary Capture of the view with the heatmap blended in colour, for
  viewers that do not display parametric maps.

All objects go into the source study (its StudyInstanceUID, a new series each), copy the patient
and study attributes from the source images as they are, and get UIDs derived from the study, the
bundles and the view, so that a node restarted after a crash writes the same objects again (the
PACS keeps one copy) instead of a second set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

import mammolens

MANUFACTURER = "mammolens"
MODEL_NAME = "mammolens pacs node"
UNVERIFIED = "UNVERIFIED: computer-aided result, not for diagnosis on its own"
# Concepts: the probability is a numeric "Probability of cancer"-style measurement named by the
# bundle's task; decisions and laterality are SNOMED CT / DCM codes.
PROBABILITY = hd.sr.CodedConcept("mammolens-probability", "99MAMMOLENS", "Model probability")
DECISION = hd.sr.CodedConcept("mammolens-decision", "99MAMMOLENS", "Model decision at threshold")
UNIT_ONE = hd.sr.CodedConcept("1", "UCUM", "no units")
CLASS_ACTIVATION = hd.sr.CodedConcept("mammolens-class-activation", "99MAMMOLENS", "Class activation")
SIDES = {"L": hd.sr.CodedConcept("7771000", "SCT", "Left"), "R": hd.sr.CodedConcept("24028007", "SCT", "Right")}
BREAST = hd.sr.CodedConcept("76752008", "SCT", "Breast")
SERIES_NUMBERS = {"sr": 9001, "map": 9002, "capture": 9003}


@dataclass(frozen=True)
class Finding:
    """One bundle's answer for one unit: a view (its source image), a breast, or the exam."""

    bundle: str  # the bundle's name in the node's config
    bundle_hash: str  # its content hash: the algorithm version
    task: str
    cls: str  # the class whose probability this is (the positive class of a binary task)
    probability: float
    decision: str
    laterality: str = ""  # '' for the exam
    view: str = ""  # '' for a breast or the exam
    source: Dataset | None = None  # the view's source image header
    extra: Mapping[str, float] = field(default_factory=dict)  # other classes' probabilities (multi-class)


def result_uid(study_uid: str, key: str, *parts: str) -> str:
    """A UID fixed by the study, the object kind and what went into it (bundle hashes, source view)."""
    return generate_uid(entropy_srcs=["mammolens-pacs", study_uid, key, *parts])


def _code(text: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(text[:16], "99MAMMOLENS", text)


def _algorithm(finding: Finding) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name=f"mammolens {finding.bundle}", version=finding.bundle_hash[:64],
                                         manufacturer=MANUFACTURER)  # fmt: skip


def _group(finding: Finding, index: int) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    unit = "exam" if not finding.laterality else f"{finding.laterality} breast" if not finding.view else \
        f"{finding.laterality}-{finding.view}"  # fmt: skip
    algorithm = _algorithm(finding)
    sites = [hd.sr.FindingSite(BREAST, laterality=SIDES[finding.laterality])] if finding.laterality else None
    probabilities = {finding.cls: finding.probability, **finding.extra}
    measurements = [
        hd.sr.Measurement(name=hd.sr.CodedConcept(f"p-{cls}"[:16], "99MAMMOLENS", f"Probability of {cls}"),
                          value=float(p), unit=UNIT_ONE, algorithm_id=algorithm, finding_sites=sites)
        for cls, p in probabilities.items()
    ]
    sources = [hd.sr.SourceImageForMeasurementGroup.from_source_image(finding.source)] if finding.source else None
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(entropy_srcs=[unit, finding.bundle, str(index)]),
                                                     identifier=f"{finding.bundle} {unit}"),
        finding_type=_code(finding.task), algorithm_id=algorithm, finding_sites=sites, measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(DECISION, _code(finding.decision))],
        source_images=sources,
    )  # fmt: skip


def structured_report(sources: Sequence[Dataset], findings: Sequence[Finding], *, bundles_key: str) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report of one study: view, breast and exam findings of every bundle."""
    study = sources[0].StudyInstanceUID
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=result_uid(study, "device"), name=MODEL_NAME, manufacturer_name=MANUFACTURER,
            model_name=f"mammolens {mammolens.__version__}"),
    )  # fmt: skip
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=hd.sr.CodedConcept("24623002", "SCT", "Screening mammography"),
        imaging_measurements=[_group(f, i) for i, f in enumerate(findings)],
        referenced_images=list(sources),
    )  # fmt: skip
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(sources), content=report[0], series_instance_uid=result_uid(study, "sr-series", bundles_key),
        series_number=SERIES_NUMBERS["sr"], sop_instance_uid=result_uid(study, "sr", bundles_key), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, is_final=True, is_verified=False,
    )  # fmt: skip
    sr.SeriesDescription = "mammolens AI result (UNVERIFIED)"
    return sr


def heatmap_map(source: Dataset, heatmap: np.ndarray, *, bundles_key: str, bundle_hash: str) -> hd.pm.ParametricMap:
    """The view's heatmap as float pixels on its grid (ClassActivation, 0..1)."""
    study = source.StudyInstanceUID
    mapping = hd.pm.RealWorldValueMapping(lut_label="CAM", lut_explanation="class activation (0..1)",
                                          unit=UNIT_ONE, value_range=(0.0, 1.0), slope=1.0, intercept=0.0,
                                          quantity_definition=CLASS_ACTIVATION)  # fmt: skip
    pm = hd.pm.ParametricMap(
        source_images=[_with_plane(source)], pixel_array=np.asarray(heatmap, dtype=np.float32)[None],
        series_instance_uid=result_uid(study, "map-series", bundles_key), series_number=SERIES_NUMBERS["map"],
        sop_instance_uid=result_uid(study, "map", bundles_key, source.SOPInstanceUID),
        instance_number=int(source.get("InstanceNumber", 1) or 1) + 10 * _view_index(source),
        manufacturer=MANUFACTURER, manufacturer_model_name=MODEL_NAME, software_versions=mammolens.__version__,
        device_serial_number=bundle_hash[:16], contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
        content_label="HEATMAP", content_description=UNVERIFIED[:64],
    )  # fmt: skip
    if source.get("ImageLaterality"):  # General Series: required for a paired organ
        pm.Laterality = source.ImageLaterality
    pm.SeriesDescription = "mammolens heatmap (UNVERIFIED)"
    return pm


def _with_plane(source: Dataset) -> Dataset:
    """The source header with a frame of reference of its own 2-D pixel plane (derived from its UID).

    Projection mammograms have no patient frame of reference, and highdicom 0.28 cannot build a
    parametric map over a source without one (its frame index comes out empty). The map only needs
    its pixels on the source's grid, which this plane (origin at the first pixel, rows and columns
    along the image axes, the source's pixel spacing) states; the source image itself is unchanged.
    """
    if "FrameOfReferenceUID" in source:
        return source
    copy = Dataset()
    for element in source:
        if element.tag != 0x7FE00010:  # the pixel data stays out of the copy
            copy.add(element)
    copy.file_meta = source.file_meta
    copy.FrameOfReferenceUID = generate_uid(entropy_srcs=["mammolens-plane", source.SOPInstanceUID])
    copy.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    copy.ImagePositionPatient = [0, 0, 0]
    spacing = source.get("PixelSpacing") or source.get("ImagerPixelSpacing") or [1, 1]
    copy.PixelSpacing = list(spacing)
    copy.SliceThickness = 1
    return copy


def heatmap_capture(source: Dataset, pixels: np.ndarray, heatmap: np.ndarray, *, bundles_key: str,
                    max_side: int = 2048) -> hd.sc.SCImage:  # fmt: skip
    """The view in grey with the heatmap blended in (jet-like colour where it is high), 8-bit RGB,
    shrunk by a whole factor to at most ``max_side`` pixels a side: a picture for the eye, not
    for measuring (the parametric map keeps the full grid)."""
    study = source.StudyInstanceUID
    step = max(1, -(-max(pixels.shape) // max_side))
    grey = np.clip(pixels[::step, ::step], 0, 1)[..., None]
    h = np.clip(heatmap[::step, ::step], 0, 1)
    colour = np.stack([np.clip(1.5 - np.abs(4 * h - 3), 0, 1), np.clip(1.5 - np.abs(4 * h - 2), 0, 1),
                       np.clip(1.5 - np.abs(4 * h - 1), 0, 1)], axis=-1)  # fmt: skip
    alpha = (0.5 * h)[..., None]
    rgb = np.round(255 * ((1 - alpha) * grey + alpha * colour)).astype(np.uint8)
    spacing = source.get("PixelSpacing") or source.get("ImagerPixelSpacing")
    spacing = [float(v) * step for v in spacing] if spacing else None
    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=result_uid(study, "capture-series", bundles_key),
        series_number=SERIES_NUMBERS["capture"],
        sop_instance_uid=result_uid(study, "capture", bundles_key, source.SOPInstanceUID),
        instance_number=int(source.get("InstanceNumber", 1) or 1) + 10 * _view_index(source),
        manufacturer=MANUFACTURER, pixel_spacing=tuple(spacing) if spacing else None,
        laterality=source.get("ImageLaterality") or None,
        patient_orientation=tuple(source.PatientOrientation) if source.get("PatientOrientation") else None,
    )  # fmt: skip
    capture.SeriesDescription, capture.BurnedInAnnotation = "mammolens heatmap overlay (UNVERIFIED)", "NO"
    return capture


def _view_index(source: Dataset) -> int:
    return int(source.get("SeriesNumber", 0) or 0)
