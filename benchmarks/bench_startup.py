"""Start-up times: `transformers-internvl tiles`, `import transformers_internvl`, transformers' own model classes.

Each case runs in a fresh interpreter, the cases interleaved round by round (so load on a shared machine hits all
alike); prints min / median wall seconds per case and the ratio `import transformers_internvl` / transformers'
`from transformers import InternVLForConditionalGeneration, AutoProcessor` (the issue-13 goal: <= 1.1), and the
`tiles` start-up (goal: < 1 s), both as `python -c` code and, when it is on PATH, through the installed
`transformers-internvl` console script. `--json PATH` writes the figures.

    PYTHONPATH=src python benchmarks/bench_startup.py --repeats 10
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


def _commands(image: str) -> dict[str, list[str]]:
    """Each case's command line: the Python cases in this interpreter, and the installed `transformers-internvl`
    console script (its wrapper and any version-manager shim in front of it included) when it is on PATH."""
    commands = {name: [sys.executable, "-c", code, image] for name, code in CASES.items()}
    script = shutil.which("transformers-internvl")
    if script:
        commands["tiles console script"] = [script, "tiles", image, "--json"]
    return commands


def _run_once(command: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=_positive, default=10, help="runs per case (default: 10)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = parser.parse_args()

    from PIL import Image

    with tempfile.TemporaryDirectory() as folder:
        image = os.path.join(folder, "image.png")
        Image.new("RGB", (1280, 720), "gray").save(image)
        commands = _commands(image)
        for command in commands.values():  # warm the file-system cache
            _run_once(command)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, command in commands.items():
                times[name].append(_run_once(command))

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
    for name in ("tiles command", "tiles console script"):
        if name in results:
            print(f"{name}: {results[name]['median_s']:.2f} s median; goal < 1 s")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(
                {"results": results, "ratio": ratio, "python": sys.version, "cpus": os.cpu_count()}, file, indent=1
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
