"""Render `bench_model.py --json` files as Markdown table rows (appended to benchmarks/RESULTS.md by gpu_check.sh).

    python benchmarks/results_table.py benchmarks/results/*.json [--bandwidth-gbs 4800]
    python benchmarks/results_table.py --ratios --header benchmarks/results/cpu_*.json   # CPU ratio summary

Each file gives one row per measurement: this package, transformers' port, the ratio (>1: this package faster or
smaller), plus for static-cache decode at batch 1 the fraction of the HBM roofline (LLM weight bytes per token /
`--bandwidth-gbs`) when a bandwidth is known for the device.
"""

from __future__ import annotations

import argparse
import json

# Peak HBM bandwidth, GB/s (vendor figures).
BANDWIDTH_GBS = {"H200": 4800.0, "H100 80GB HBM3": 3350.0, "H100 PCIe": 2000.0, "H100 NVL": 3900.0}


def _bandwidth(device: str, override: float | None) -> float | None:
    if override:
        return override
    for name, value in BANDWIDTH_GBS.items():
        if name in device:
            return value
    return None


def rows(path: str, bandwidth: float | None) -> list[str]:
    with open(path) as file:
        result = json.load(file)
    config = result["config"]
    label = f"{config['shape']} ({config['layers'] or 'all'} layers) {config['dtype']} {config['attn']}"
    device = result["device_name"]
    peak = _bandwidth(device, bandwidth)
    lines = []
    for name, values in result["rows"].items():
        if "total (ms)" in name or "prefill (ms)" in name:
            continue  # intermediate timings behind the tokens/s rows
        ours, upstream = values.get("ours"), values.get("upstream")
        ratio = result.get("ratios", {}).get(name)
        note = ""
        if peak and "b1 static (tokens/s)" in name:
            roofline = peak * 1e9 / result["llm_parameter_bytes"]
            note = f"{ours / roofline:.0%} of HBM roofline ({roofline:.0f} tok/s)"
        cells = [
            device,
            label,
            name,
            f"{ours:.1f}",
            f"{upstream:.1f}" if upstream is not None else "-",
            f"{ratio:.2f}" if ratio is not None else "-",
            note,
            f"`{result.get('command', '')}`",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def ratio_rows(path: str) -> list[str]:
    """One row per measurement with minima and medians of both sides, the two ratios and the per-round (paired)
    ratio's median and range (`bench_model.paired_ratios`); the control's paired median when the run had one."""
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_model import paired_ratios

    with open(path) as file:
        result = json.load(file)
    config = result["config"]
    label = f"{config['dtype']} {config['attn']}"
    medians = result.get("rows_median", {})
    paired = paired_ratios(result) if "times" in result else {}
    control = paired_ratios(result, "control") if any("control" in v for v in result.get("times", {}).values()) else {}
    lines = []
    for name, values in result["rows"].items():
        if "total (ms)" in name or "prefill (ms)" in name or "upstream" not in values:
            continue
        median = medians.get(name, values)
        pair = paired.get(name)
        cells = [
            label,
            name,
            f"{values['ours']:.1f} / {median['ours']:.1f}",
            f"{values['upstream']:.1f} / {median['upstream']:.1f}",
            f"{result['ratios'][name]:.2f}",
            f"{result.get('ratios_median', {}).get(name, float('nan')):.2f}",
            f"{pair['median']:.2f} [{pair['min']:.2f}, {pair['max']:.2f}]" if pair else "-",
        ]
        cells.append(f"{control[name]['median']:.2f}" if name in control else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


RATIO_HEADER = (
    "| run | measurement | ours min / median | port min / median | ratio of minima | ratio of medians "
    "| per-round ratio: median [min, max] | noise floor: our model / its copy, per-round median |\n"
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
)

HEADER = (
    "| device | model | measurement | transformers-internvl | transformers' port | ratio | note | command |\n"
    "| --- | --- | --- | ---: | ---: | ---: | --- | --- |"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--bandwidth-gbs", type=float, help="peak memory bandwidth of the device (GB/s)")
    parser.add_argument("--header", action="store_true", help="print the table header first")
    parser.add_argument(
        "--ratios", action="store_true", help="CPU summary: minima, medians, both ratios and the per-round ratios"
    )
    args = parser.parse_args()
    if args.header:
        print(RATIO_HEADER if args.ratios else HEADER)
    for path in args.files:
        print("\n".join(ratio_rows(path) if args.ratios else rows(path, args.bandwidth_gbs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
