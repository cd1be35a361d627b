"""Pairing (issue 14, bilateral model): a film's partner is the same woman's other film, never another
woman's; films without one fall back to themselves, or stop with one line; partners are aligned."""

from __future__ import annotations

import numpy as np
import pytest
from bilateral_fixtures import paired_source

from mammolens.data.manifest import Manifest
from mammolens.data.pairs import PairedLoader, find_partners, has_orient, pair_channels
from mammolens.preprocess import PreprocessCache
from mammolens.preprocess.pipeline import default_steps
from mammolens.utils.errors import DataError


def _records(rows):
    return [{"sample_id": sid, "source": source, "path": f"/films/{sid}.png", "patient_id": patient,
             "group": patient or sid, "laterality": side, "view": view} for sid, source, patient, side, view in rows]


def test_the_partner_is_the_same_womans_opposite_film_of_the_same_view():
    rows = [
        ("a-l-mlo", "s", "ann", "L", "MLO"), ("a-r-mlo", "s", "ann", "R", "MLO"),
        ("a-l-cc", "s", "ann", "L", "CC"), ("a-r-cc", "s", "ann", "R", "CC"),
        ("b-l-mlo", "s", "bea", "L", "MLO"),                                   # her right film is missing
        ("c-r", "s", "cat", "R", ""), ("c-l-mlo", "s", "cat", "L", "MLO"),      # a view on one side only
        ("d-l", "s", "", "L", "MLO"), ("e-r", "s", "", "R", "MLO"),             # women unknown: never paired
        ("f-l", "s", "fay", "", "MLO"), ("f-r", "s", "fay", "R", "MLO"),         # laterality unknown
        ("x-r-mlo", "other", "bea", "R", "MLO"),                               # same id in another source
    ]
    pairs = find_partners(Manifest.from_records(_records(rows)))
    assert pairs.as_dict() == {
        "a-l-mlo": "a-r-mlo", "a-r-mlo": "a-l-mlo", "a-l-cc": "a-r-cc", "a-r-cc": "a-l-cc",
        "b-l-mlo": "b-l-mlo", "c-r": "c-l-mlo", "c-l-mlo": "c-r", "d-l": "d-l", "e-r": "e-r",
        "f-l": "f-l", "f-r": "f-r", "x-r-mlo": "x-r-mlo",
    }
    assert pairs.paired == [True] * 4 + [False, True, True] + [False] * 5


def test_on_many_random_women_a_partner_is_never_another_womans_film():
    rng = np.random.default_rng(3)
    rows = [(f"s{i}", "s", f"w{rng.integers(40)}", str(rng.choice(["L", "R", ""])), str(rng.choice(["CC", "MLO", ""])))
            for i in range(300)]
    manifest = Manifest.from_records(_records(rows))
    pairs = find_partners(manifest)
    info = {sid: (patient, side, view) for sid, _, patient, side, view in rows}
    for sid, other in pairs.as_dict().items():
        (patient, side, view), (o_patient, o_side, o_view) = info[sid], info[other]
        if other == sid:
            # Unpaired only when no film of hers qualifies.
            assert not any(info[s][0] == patient and {side, info[s][1]} == {"L", "R"}
                           and (not view or not info[s][2] or view == info[s][2]) for s in info)
            continue
        assert o_patient == patient and patient and {side, o_side} == {"L", "R"}
        assert not view or not o_view or view == o_view
    assert sum(pairs.paired) > 100  # the check above saw many real pairs


def test_without_fallback_a_film_without_partner_is_one_line_naming_it():
    rows = [("a-l", "s", "ann", "L", "MLO"), ("a-r", "s", "ann", "R", "MLO"), ("b-l", "s", "bea", "L", "MLO")]
    manifest = Manifest.from_records(_records(rows))
    with pytest.raises(DataError) as err:
        find_partners(manifest, fallback=False)
    message = str(err.value)
    assert "\n" not in message and message.startswith("/films/b-l.png: sample 'b-l' has no partner film")
    assert "patient 'bea' has no R film and view MLO" in message and "data.pairs.fallback is off" in message
    assert find_partners(manifest, fallback=True).of("b-l") == "b-l"


def test_the_loader_stacks_film_and_partner_and_an_unpaired_film_twice():
    films = {"a": np.tile(np.linspace(0, 1, 8, dtype=np.float32), (4, 1)), "b": np.full((4, 8), 0.25, np.float32)}
    films["c"] = films["a"] * 0.5
    loader = PairedLoader(films.__getitem__, {"a": "c", "c": "a", "b": "b"}, film_keys={"a": "1", "b": "2", "c": "3"},
                          mirror=True)
    pair = loader("a")
    assert pair.shape == (2, 4, 8)
    np.testing.assert_array_equal(pair[0], films["a"])
    np.testing.assert_array_equal(pair[1], films["c"][:, ::-1])  # mirrored onto the film
    np.testing.assert_array_equal(loader("b")[0], loader("b")[1])  # no partner: identical channels, not flipped
    keys = loader.keys(["a", "c", "b"])
    assert len(set(keys)) == 3 and keys == loader.keys(["a", "c", "b"])
    np.testing.assert_array_equal(pair_channels(films["a"], films["c"], mirror=True), pair)
    np.testing.assert_array_equal(pair_channels(films["b"], None), loader("b"))
    with pytest.raises(DataError, match=r"partner film is \(4, 4\)"):
        pair_channels(films["a"], films["a"][:, :4])


def _breast_side(image: np.ndarray) -> str:
    """Which half holds more of the breast (non-background) pixels."""
    half = image.shape[1] // 2
    return "left" if (image[:, :half] > 0.05).sum() > (image[:, -half:] > 0.05).sum() else "right"


def _pair_sides(manifest: Manifest, steps, root) -> list[tuple[str, str]]:
    cache = PreprocessCache(root, {"steps": steps})
    cache.build(manifest, workers=1, progress=False)
    ids = manifest.df["sample_id"].tolist()
    loader = PairedLoader(cache.load, find_partners(manifest).as_dict(), mirror=not has_orient(steps))
    return [(_breast_side(p[0]), _breast_side(p[1])) for p in map(loader, ids)]


def test_partners_are_aligned_with_and_without_orient(tmp_path):
    from mammolens.data.adapters.base import load_source

    manifest = load_source(paired_source(tmp_path / "src", women=3)).manifest
    oriented = _pair_sides(manifest, default_steps(48), tmp_path / "a")
    assert oriented == [("left", "left")] * 6  # orient put both chest walls on the left: nothing flipped
    stored = _pair_sides(manifest, [{"name": "resize", "size": 48}], tmp_path / "b")
    assert all(a == b for a, b in stored) and {a for a, _ in stored} == {"left", "right"}  # flipped onto the film


def test_mias_pairs_are_the_two_films_of_one_woman_and_orient_aligns_them(tmp_path):
    from realdata import shared_folder

    from mammolens.data.adapters.base import load_source

    manifest = load_source(shared_folder("mias")).manifest
    pairs = find_partners(manifest, fallback=False)  # every woman here has both films
    df = manifest.df.set_index("sample_id")
    for sid, other in pairs.as_dict().items():
        n, m = int(sid[-3:]), int(other[-3:])
        assert (n + 1) // 2 == (m + 1) // 2 and n != m  # mdb001 <-> mdb002, mdb003 <-> mdb004, ...
        assert df.at[sid, "patient_id"] == df.at[other, "patient_id"]
        assert {df.at[sid, "laterality"], df.at[other, "laterality"]} == {"L", "R"}
    few = manifest.subset(np.flatnonzero(manifest.df["sample_id"].isin(
        ["mias-mdb001", "mias-mdb002", "mias-mdb021", "mias-mdb022"])).tolist())
    assert _pair_sides(few, default_steps(64), tmp_path / "a") == [("left", "left")] * 4
    stored = _pair_sides(few, [{"name": "resize", "size": 64}], tmp_path / "b")
    assert all(a == b for a, b in stored) and {a for a, _ in stored} == {"left", "right"}
