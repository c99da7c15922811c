"""Start-up times: `transformers-internvl tiles`, `import transformers_internvl`, transformers' own model classes.

Each case runs in a fresh interpreter, the cases interleaved round by round (so load on a shared machine hits all
alike); prints min / median wall seconds per case and the ratio `import transformers_internvl` / transformers'
`from transformers import InternVLForConditionalGeneration, AutoProcessor` (the issue-13 goal: <= 1.1), and the
`tiles` start-up (goal: < 1 s). `--json PATH` writes the figures.

    PYTHONPATH=src python benchmarks/bench_startup.py --repeats 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")

CASES = {
    "tiles command": (
        "import sys; sys.argv = ['transformers-internvl', 'tiles', sys.argv[1], '--json']\n"
        "from transformers_internvl.cli import main; raise SystemExit(main())"
    ),
    "import transformers_internvl": "import transformers_internvl",
    "transformers' own classes": "from transformers import InternVLForConditionalGeneration, AutoProcessor",
    "import torch": "import torch",
}


def _run_once(code: str, image: str) -> float:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, image], check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="runs per case (default: 10)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = parser.parse_args()

    from PIL import Image

    with tempfile.TemporaryDirectory() as folder:
        image = os.path.join(folder, "image.png")
        Image.new("RGB", (1280, 720), "gray").save(image)
        for code in CASES.values():  # warm the file-system cache
            _run_once(code, image)
        times: dict[str, list[float]] = {name: [] for name in CASES}
        for _ in range(args.repeats):
            for name, code in CASES.items():
                times[name].append(_run_once(code, image))

    results = {
        name: {"min_s": min(values), "median_s": statistics.median(values), "runs": values}
        for name, values in times.items()
    }
    ours, theirs = results["import transformers_internvl"], results["transformers' own classes"]
    ratio = {key: ours[key] / theirs[key] for key in ("min_s", "median_s")}
    print(f"{'case':32s} {'min s':>8s} {'median s':>9s}   ({args.repeats} runs each, interleaved)")
    for name, result in results.items():
        print(f"{name:32s} {result['min_s']:8.2f} {result['median_s']:9.2f}")
    print(
        f"ratio import transformers_internvl / transformers' classes: {ratio['min_s']:.2f} (min), "
        f"{ratio['median_s']:.2f} (median); goal <= 1.1"
    )
    print(f"tiles command: {results['tiles command']['median_s']:.2f} s median; goal < 1 s")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(
                {"results": results, "ratio": ratio, "python": sys.version, "cpus": os.cpu_count()}, file, indent=1
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
