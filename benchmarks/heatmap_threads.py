"""How many heatmaps of film A differ from its single-threaded map while other threads score film B.

The same threaded scenario as tests/test_deploy_heatmap_threads.py, counted: ``--shared`` explains on
the scoring model itself (what the Predictor did before explanations got a model copy of their own),
the default on the Predictor's own copy.

    python benchmarks/heatmap_threads.py [--shared] [--maps 150] [--threads 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    from deploy_fixtures import film, make_bundle

    from mammolens.deploy.predictor import Predictor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", action="store_true", help="explain on the scoring model (the old behaviour)")
    parser.add_argument("--maps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        predictor = Predictor.load(make_bundle(Path(tmp) / "bundle"))
        if args.shared:
            predictor._explainer = predictor._bundle  # noqa: SLF001 - reproduces the old sharing on purpose
        a, b = film(1), film(7)[::-1].copy()
        alone = predictor.explain(a)
        stop = threading.Event()

        def score_b() -> None:
            while not stop.is_set():
                predictor.predict(b)

        others = [threading.Thread(target=score_b) for _ in range(args.threads)]
        for t in others:
            t.start()
        try:
            maps = [predictor.explain(a) for _ in range(args.maps)]
        finally:
            stop.set()
            for t in others:
                t.join()
    differ = sum(not np.allclose(m, alone, atol=1e-5) for m in maps)
    print(f"{'shared scoring model' if args.shared else 'own model copy'}: {differ} of {len(maps)} heatmaps of film A "
          f"differ from its single-threaded map ({args.threads} threads scoring film B)")


if __name__ == "__main__":
    main()
