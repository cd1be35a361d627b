"""Each film's partner: the same woman's other breast, for models that read a film against it.

Radiologists compare the left and right breast of one woman: an asymmetry is a finding. A film's
partner is the film of the same ``source`` and ``patient_id`` with the opposite laterality (L <-> R)
and, where both films name a view, the same view (CC with CC, MLO with MLO). Among several
candidates the first by sample id is taken, so pairing is deterministic. A film whose woman is
unknown (``patient_id`` empty), whose laterality is unknown, or who has no such film among the
samples has no partner: with ``fallback`` it is paired with itself (the model then sees two
identical inputs, which it reads as "no partner": see ``models/bilateral.py``), without it that
is one error naming the film. A partner is never another woman's film.

Light (pandas only): configs and ``data`` commands can pair without importing torch.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mammolens.data.manifest import Manifest
from mammolens.utils.errors import DataError

OPPOSITE = {"L": "R", "R": "L"}


@dataclass(frozen=True)
class Pairs:
    """``partner[i]``: the sample id paired with row ``i`` (its own id where it has none)."""

    sample_ids: list[str]
    partner: list[str]

    @property
    def paired(self) -> list[bool]:
        """Whether row ``i`` has a real partner (not the fallback to itself)."""
        return [s != p for s, p in zip(self.sample_ids, self.partner)]

    def of(self, sample_id: str) -> str:
        return self.partner[self.sample_ids.index(sample_id)]

    def as_dict(self) -> dict[str, str]:
        return dict(zip(self.sample_ids, self.partner))


def find_partners(manifest: Manifest, *, fallback: bool = True) -> Pairs:
    """Every row's partner among the rows of ``manifest`` (see the module docstring)."""
    df = manifest.df
    ids = df["sample_id"].astype(str).tolist()
    paths = df["path"].astype(str).tolist()
    rows = list(zip(ids, df["source"].astype(str), df["patient_id"].astype(str),
                    df["laterality"].astype(str).str.upper(), df["view"].astype(str).str.upper()))
    by_side: dict[tuple[str, str, str], list[tuple[str, str]]] = defaultdict(list)
    for sid, source, patient, side, view in rows:
        if patient and side in OPPOSITE:
            by_side[(source, patient, side)].append((sid, view))
    partner = []
    for (sid, source, patient, side, view), path in zip(rows, paths):
        found = None
        if patient and side in OPPOSITE:
            candidates = sorted(other for other, other_view in by_side[(source, patient, OPPOSITE[side])]
                                if not view or not other_view or other_view == view)
            found = candidates[0] if candidates else None
        if found is None and not fallback:
            raise DataError(f"sample {sid!r} has no partner film ({_why_not(patient, side, view)}) and "
                            "data.pairs.fallback is off; turn it on to pair such films with themselves",
                            path=path)
        partner.append(found or sid)
    return Pairs(sample_ids=ids, partner=partner)


def _why_not(patient: str, side: str, view: str) -> str:
    if not patient:
        return "its patient_id is empty"
    if side not in OPPOSITE:
        return f"its laterality is {side or 'unknown'!r}, not L or R"
    seen = f" and view {view}" if view else ""
    return f"patient {patient!r} has no {OPPOSITE[side]} film{seen} among the samples"


class PairedLoader:
    """``load(sample_id)`` -> ``(2, H, W)``: the film, then its partner aligned to it.

    ``film_load`` gives one preprocessed ``(H, W)`` film. ``mirror`` flips the partner left-right: a
    source's left and right films are mirror images of each other's layout, so without an ``orient``
    step the partner must be flipped to lie over the film; after ``orient`` both chest walls are on
    one side already and nothing is flipped. A film paired with itself (no partner) is never flipped,
    so its two channels are identical. Picklable when ``film_load`` is (DataLoader workers).
    """

    def __init__(self, film_load: Callable[[str], np.ndarray], partners: Mapping[str, str], *,
                 film_keys: Mapping[str, str] | None = None, mirror: bool = False) -> None:
        self.film_load = film_load
        self.partner = dict(partners)
        self.film_keys = None if film_keys is None else dict(film_keys)
        self.mirror = mirror

    def partner_image(self, sample_id: str) -> np.ndarray:
        """The partner as the model sees it (flipped when ``mirror``); the film itself when unpaired."""
        other = self.partner[sample_id]
        image = np.asarray(self.film_load(other))
        return image[:, ::-1] if self.mirror and other != sample_id else image

    def __call__(self, sample_id: str) -> np.ndarray:
        return np.stack([np.asarray(self.film_load(sample_id)), self.partner_image(sample_id)])

    def keys(self, sample_ids: Sequence[str]) -> list[str] | None:
        """One content key per pair (from the films' keys), for caches of pair inputs."""
        if self.film_keys is None:
            return None
        return [hashlib.blake2b(f"{self.film_keys[s]}|{self.film_keys[self.partner[s]]}|{self.mirror}".encode(),
                                digest_size=16).hexdigest() for s in sample_ids]


def pair_channels(film: np.ndarray, other: np.ndarray | None, *, mirror: bool = False) -> np.ndarray:
    """``(2, H, W)`` model input from one preprocessed film and its partner (None: no partner, the
    film itself, as the pairing's fallback gives); what a predictor with an ``other=`` film builds."""
    film = np.asarray(film)
    if other is None:
        return np.stack([film, film])
    other = np.asarray(other)
    if other.shape != film.shape:
        raise DataError(f"the partner film is {other.shape} after preprocessing, the film {film.shape}")
    return np.stack([film, other[:, ::-1] if mirror else other])


def has_orient(steps: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a preprocessing config's steps orient every film (then partners need no flip)."""
    return any(step.get("name") == "orient" for step in steps)


def bundle_pairing(model_config: Mapping[str, Any], config: Mapping[str, Any] | None,
                   steps: Sequence[Mapping[str, Any]]) -> dict[str, bool] | None:  # fmt: skip
    """How a bundle reads a film with its partner, as its training did: ``{"fallback", "mirror"}``
    (from its experiment config's ``data.pairs`` and its pipeline), or None for a single-film bundle."""
    pairs = ((config or {}).get("data") or {}).get("pairs") or {}
    if int(model_config.get("in_chans", 1)) != 2 or not (pairs.get("enabled") or model_config.get("name") == "bilateral"):
        return None
    return {"fallback": bool(pairs.get("fallback", True)), "mirror": not has_orient(steps)}
