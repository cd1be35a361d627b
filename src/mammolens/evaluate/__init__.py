"""Evaluation: metrics with patient-bootstrap CIs, thresholds and calibration from validation
predictions, ensembles (mean and stacking), scoring manifests, the HTML report, and the
``evaluate`` / ``ensemble`` verbs."""

from mammolens.evaluate.load import load_any_bundle

__all__ = ["load_any_bundle"]
