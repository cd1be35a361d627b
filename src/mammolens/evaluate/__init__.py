"""Evaluation: metrics with patient-bootstrap CIs, thresholds and calibration from validation
predictions, ensemble combiners (mean and stacking), scoring manifests, and the HTML report."""
