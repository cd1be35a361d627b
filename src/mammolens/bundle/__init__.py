"""Bundles: what crosses from training to use. A model bundle (weights, preprocessing, threshold,
temperature, provenance) or an ensemble of bundles; ``load_bundle`` returns whichever a directory holds."""

from mammolens.bundle.ensemble import EnsembleBundle, load_bundle, save_ensemble, save_mean_ensemble
from mammolens.bundle.model import Bundle, load_model_bundle, save_bundle

__all__ = ["Bundle", "EnsembleBundle", "load_bundle", "load_model_bundle", "save_bundle", "save_ensemble",
           "save_mean_ensemble"]
