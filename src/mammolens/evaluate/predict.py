"""Scoring every sample of a manifest with a bundle or an ensemble bundle, through the preprocessing cache.

Images are preprocessed exactly as each bundle's ``preprocess`` config says; ensemble members
that share a config share one cache build, so a five-fold ensemble preprocesses each film once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mammolens.data.manifest import Manifest


def leaf_bundles(bundle: Any) -> list[Any]:
    """The model bundles under ``bundle`` (itself, or an ensemble's members, recursively)."""
    members = getattr(bundle, "members", None)
    if members is None:
        return [bundle]
    return [leaf for member in members for leaf in leaf_bundles(member)]


def preprocess_key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True)


def bundle_cache(bundle: Any, cache_dir: str | Path):  # noqa: ANN201 - a PreprocessCache
    """The preprocessing cache of ``bundle`` (an ensemble: of its first member), for thumbnails."""
    from mammolens.preprocess import PreprocessCache

    return PreprocessCache(Path(cache_dir) / "preprocessed", leaf_bundles(bundle)[0].preprocess)


def predict_manifest(
    bundle: Any, manifest: Manifest, cache_dir: str | Path, workers: int | None = None, progress: bool = True,
    batch_size: int = 32,
) -> np.ndarray:
    """(N, C) class probabilities of every manifest row, in manifest order."""
    from mammolens.preprocess import PreprocessCache

    sample_ids = manifest.df["sample_id"].astype(str).tolist()
    leaves = leaf_bundles(bundle)
    by_config: dict[str, list[Any]] = {}
    for leaf in leaves:
        by_config.setdefault(preprocess_key(leaf.preprocess), []).append(leaf)
    outputs: dict[int, np.ndarray] = {}
    for members in by_config.values():
        cache = PreprocessCache(Path(cache_dir) / "preprocessed", members[0].preprocess)
        cache.build(manifest, workers=workers, progress=progress)
        chunks: dict[int, list[np.ndarray]] = {id(b): [] for b in members}
        paired = {id(b): pair_loader(b, manifest, cache.load) for b in members}
        for start in range(0, len(sample_ids), batch_size):
            ids = sample_ids[start:start + batch_size]
            batch = np.stack([cache.load(s) for s in ids])
            for b in members:  # a lesion-descriptor bundle also takes the descriptors its pipeline recorded
                extra = {"descriptors": np.stack([cache.load_descriptors(s) for s in ids])} \
                    if getattr(b, "descriptor_head", None) else {}
                load = paired[id(b)]
                chunks[id(b)].append(b.predict_proba(batch if load is None else np.stack([load(s) for s in ids]), **extra))
        for b in members:
            outputs[id(b)] = (np.concatenate(chunks[id(b)]) if chunks[id(b)]
                              else np.zeros((0, len(b.classes)), dtype=np.float32))
    return _combine(bundle, outputs)


def pair_loader(bundle: Any, manifest: Manifest, load: Any) -> Any:
    """For a bilateral bundle, ``sample_id -> (2, H, W)``: each film with its partner among the
    manifest's samples, paired and mirrored as its training did (``data.pairs``); None otherwise."""
    from mammolens.data.pairs import PairedLoader, bundle_pairing, find_partners

    pairing = bundle_pairing(bundle.model.config, getattr(bundle, "config", None), bundle.preprocess.get("steps") or [])
    if pairing is None:
        return None
    partners = find_partners(manifest, fallback=pairing["fallback"])
    return PairedLoader(load, partners.as_dict(), mirror=pairing["mirror"])


def _combine(bundle: Any, outputs: dict[int, np.ndarray]) -> np.ndarray:
    members = getattr(bundle, "members", None)
    if members is None:
        return outputs[id(bundle)]
    return bundle.combine([_combine(member, outputs) for member in members])
