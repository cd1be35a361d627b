"""The model zoo: ``create_model(name, num_classes, pretrained=..., **options)``.

Importing this package registers every model: the timm single backbones (under their timm
names), ``hybrid`` / ``hybrid-lite``, ``scratch-cnn`` and ``attention``.
"""

from mammolens.models import attention, classifier, hybrid, scratch  # noqa: F401 - registration
from mammolens.models.base import MammoModel
from mammolens.models.registry import MODELS, create_model, list_models

__all__ = ["MODELS", "MammoModel", "create_model", "list_models"]
