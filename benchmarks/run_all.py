"""Run every benchmark with its defaults, writing JSON beside each table (benchmarks/results/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def main() -> int:
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    # deploy_load.py and deploy_int8_agreement.py need a bundle and films: run them by hand (RESULTS.md)
    for script in ("preprocess_bench.py", "models_bench.py", "channels_last_bench.py", "explain_bench.py", "deploy_bench.py",
                   "batch_journal_bench.py"):
        print(f"== {script}", flush=True)
        code = subprocess.call([sys.executable, str(HERE / script), "--out", str(out / f"{Path(script).stem}.json")])
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
