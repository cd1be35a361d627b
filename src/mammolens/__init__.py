"""mammolens: mammogram classification with explanations, from a folder of images to the clinic."""

__version__ = "0.1.0"

from mammolens.utils.errors import MammolensError

__all__ = ["MammolensError", "__version__", "load_bundle"]


def load_bundle(path):  # noqa: ANN001, ANN201 - thin lazy re-export keeps `import mammolens` light
    """Restore a trained model, or an ensemble of them, from a bundle directory (see `mammolens.bundle`)."""
    from mammolens.bundle import load_bundle as _load

    return _load(path)
