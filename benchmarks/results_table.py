"""Render `bench_model.py --json` files as Markdown table rows (appended to benchmarks/RESULTS.md by gpu_check.sh).

    python benchmarks/results_table.py benchmarks/results/*.json [--bandwidth-gbs 4800]

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


HEADER = (
    "| device | model | measurement | transformers-internvl | transformers' port | ratio | note | command |\n"
    "| --- | --- | --- | ---: | ---: | ---: | --- | --- |"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--bandwidth-gbs", type=float, help="peak memory bandwidth of the device (GB/s)")
    parser.add_argument("--header", action="store_true", help="print the table header first")
    args = parser.parse_args()
    if args.header:
        print(HEADER)
    for path in args.files:
        print("\n".join(rows(path, args.bandwidth_gbs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
