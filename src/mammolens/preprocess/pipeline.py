"""A preprocessing config (a list of named steps) and the Pipeline that runs it.

The config is what a bundle stores, so training, evaluation and serving rebuild exactly the
same input. Its hash keys the on-disk cache together with a fingerprint of the code that turns a
file into those arrays (the steps, the sample reader, every image reader, and the versions of
the libraries they call), so an array made by other code is never served: no version number has
to be remembered and bumped by hand.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import json
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from mammolens.preprocess import breast as _breast  # noqa: F401 - registers breast_descriptors in STEPS
from mammolens.preprocess import lesion as _lesion  # noqa: F401 - registers the lesion steps in STEPS
from mammolens.preprocess.sample import Sample
from mammolens.preprocess.steps import STEPS
from mammolens.utils.configuration import from_dict, to_dict
from mammolens.utils.errors import ConfigError

# The code a preprocessed array depends on (a package stands for all its modules) ...
_CODE = ("mammolens.preprocess.steps", "mammolens.preprocess.sample", "mammolens.preprocess.pipeline",
         "mammolens.preprocess.lesion", "mammolens.preprocess.descriptors", "mammolens.preprocess.breast",
         "mammolens.io")
# ... and the libraries that code calls into.
_LIBRARIES = ("mammolens", "numpy", "opencv-python-headless", "pydicom", "pillow", "pylibjpeg", "pylibjpeg-libjpeg",
              "pylibjpeg-openjpeg", "scikit-image")


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of the preprocessing and image-reading source files and the library versions."""
    digest = hashlib.sha256()
    for name in _CODE:
        module = importlib.import_module(name)
        files = sorted(Path(module.__file__).parent.glob("*.py")) if name == "mammolens.io" else [Path(module.__file__)]
        for file in files:
            digest.update(file.name.encode())
            digest.update(file.read_bytes())
    for lib in _LIBRARIES:
        try:
            digest.update(f"{lib}=={metadata.version(lib)}".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{lib} absent".encode())
    return digest.hexdigest()[:16]


def default_steps(size: int = 224, roi: bool = False) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = [{"name": "orient"}, {"name": "crop_breast"}]
    if roi:
        steps.append({"name": "crop_roi"})
    steps += [{"name": "contrast_stretch"}, {"name": "clahe"}, {"name": "resize", "size": size}]
    return steps


@dataclass
class PreprocessConfig:
    """``steps``: ``[{"name": step, **params}, ...]``, applied in order."""

    steps: list[dict[str, Any]] = field(default_factory=default_steps)

    def __post_init__(self) -> None:
        for i, spec in enumerate(self.steps):
            build_step(spec, where=f"preprocess.steps[{i}]")


def default_config(size: int = 224, roi: bool = False) -> PreprocessConfig:
    """Orient, crop to the breast (then to the lesion when ``roi``), stretch, CLAHE, resize."""
    return PreprocessConfig(steps=default_steps(size, roi))


def build_step(spec: Any, where: str = "preprocess.steps") -> Any:
    """One step from ``{"name": ..., **params}``; every mistake is a ConfigError naming it."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"{where}: each step must be a mapping with a 'name', got {spec!r}")
    name = spec["name"]
    cls = STEPS.get(name)
    params = {k: v for k, v in spec.items() if k != "name"}
    known = [f.name for f in dataclasses.fields(cls)]
    for key in params:
        if key not in known:
            raise ConfigError(
                f"{where}: step {name!r} has no parameter {key!r}; its parameters: {', '.join(known) or '(none)'}"
            )
    return from_dict(cls, params, where=f"{where}({name})")


class Pipeline:
    """Runs the configured steps on a Sample."""

    def __init__(self, config: PreprocessConfig | dict[str, Any] | None = None) -> None:
        if config is None:
            config = default_config()
        elif isinstance(config, dict):
            config = from_dict(PreprocessConfig, config, where="preprocess")
        self.config = config
        self.steps = [build_step(spec, f"preprocess.steps[{i}]") for i, spec in enumerate(config.steps)]

    def __call__(self, sample: Sample) -> Sample:
        for step in self.steps:
            sample = step(sample)
        return sample

    def resolved(self) -> list[dict[str, Any]]:
        """Every step with all its parameters, defaults included: what the output depends on."""
        return [{"name": spec["name"], **dataclasses.asdict(step)} for spec, step in zip(self.config.steps, self.steps)]

    def config_hash(self) -> str:
        """Equal for configs that differ only in spelled-out defaults; changes with the code (see above)."""
        text = json.dumps({"code": code_fingerprint(), "steps": self.resolved()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self.config)

    def __repr__(self) -> str:
        return f"Pipeline({' -> '.join(spec['name'] for spec in self.config.steps)}, hash={self.config_hash()})"
