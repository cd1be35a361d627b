"""Preprocessing: composable steps, the pipeline that runs them, and an on-disk cache of results."""

from mammolens.preprocess.cache import BuildReport, PreprocessCache
from mammolens.preprocess.pipeline import Pipeline, PreprocessConfig, code_fingerprint, default_config
from mammolens.preprocess.sample import Sample, rois_from_mask, sample_from_row
from mammolens.preprocess.steps import STEPS, breast_mask

__all__ = [
    "STEPS",
    "BuildReport",
    "Pipeline",
    "PreprocessCache",
    "PreprocessConfig",
    "Sample",
    "breast_mask",
    "code_fingerprint",
    "default_config",
    "rois_from_mask",
    "sample_from_row",
]
