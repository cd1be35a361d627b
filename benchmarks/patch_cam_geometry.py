"""How far the old Grad-CAM of a patch classifier put each window on the original film.

pytorch-grad-cam stretches a target layer's map evenly over the input; a patch classifier's score
grid has windows at stride steps plus one flush with the far edge (patches/geometry.py), so a
stretched cell's centre lies away from its window's centre. For every film of a source under a
patch config's pipeline: the largest such distance, in original-film pixels (each film's own crop
and resize, through explain.geometry). The Grad-CAM family now lays the grid on the true windows
(explain/methods.py), so today's displacement is 0 by construction; this measures what it was.

    python benchmarks/patch_cam_geometry.py configs/mias-normal-abnormal-patches.yaml
"""

from __future__ import annotations

import argparse

import numpy as np


def stretched_vs_true(length: int, patch: int, stride: int) -> np.ndarray:
    """|stretched cell centre - true window centre| along one axis, per cell (input pixels)."""
    from mammolens.patches.geometry import axis_starts

    starts = np.asarray(axis_starts(length, patch, stride), dtype=np.float64)
    n = len(starts)
    stretched = (np.arange(n) + 0.5) * length / n - 0.5  # cv2.resize's cell centres, pixel centres at integers
    true = starts + (patch - 1) / 2
    return np.abs(stretched - true)


def main() -> None:
    from mammolens.data.adapters.base import load_source
    from mammolens.engine.config import load_config, preprocess_config
    from mammolens.explain.geometry import preprocess_with_geometry
    from mammolens.preprocess import Pipeline
    from mammolens.preprocess.sample import default_loader, sample_from_row

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--limit", type=int, default=0, help="films (0: all)")
    args = parser.parse_args()
    cfg = load_config(args.config)
    options = cfg.model.options
    patch, stride = int(options["patch_size"]), int(options["stride"])
    pipeline = Pipeline(preprocess_config(cfg))
    rows = load_source(cfg.data.source).manifest.df.drop_duplicates("path").to_dict("records")
    rows = rows[: args.limit] if args.limit else rows
    worst = []
    for row in rows:
        sample, _ = sample_from_row(row, default_loader)
        out, geometry = preprocess_with_geometry(pipeline, sample)
        h, w = out.pixels.shape[-2:]
        dy, dx = stretched_vs_true(h, patch, stride).max(), stretched_vs_true(w, patch, stride).max()
        worst.append(max(dy / abs(geometry.ay), dx / abs(geometry.ax)))  # input pixels -> original pixels
    worst = np.asarray(worst)
    print(f"{cfg.name}: patch {patch}, stride {stride}, {len(worst)} films; largest cell-centre displacement of the "
          f"stretched grid on the original film: median {np.median(worst):.1f} px, max {worst.max():.1f} px")


if __name__ == "__main__":
    main()
