"""`transformers-internvl bench ...`: runs `benchmarks/bench_model.py` (source checkouts only).

Every argument after `bench` (`--help` too) belongs to the benchmark's own parser.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import PROG, CLIError


def _benchmark_module() -> Any:
    """`benchmarks/bench_model.py` of the source checkout this package runs from (not part of an installed wheel)."""
    import importlib.util

    folder = Path(__file__).resolve().parents[3] / "benchmarks"  # src/transformers_internvl/cli/bench.py
    path = folder / "bench_model.py"
    if not path.is_file():
        raise CLIError(f"the benchmark needs a source checkout of transformers-internvl: {path} not found")
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location("bench_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_bench(args: argparse.Namespace) -> int:
    from ..registration import register_all

    register_all()
    return _benchmark_module().main(args=args)


def add_bench_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark random-weight models at InternVL 2.5 shapes (source checkout only)",
        description="Run benchmarks/bench_model.py: vision, time to first token, decode, memory; see its --help.",
        add_help=False,
    )
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments of benchmarks/bench_model.py")
    parser.set_defaults(handler=bench_handler)


def bench_handler(args: argparse.Namespace) -> int:
    """Run the benchmark with `args.bench_args`, parsed by the benchmark's own parser."""
    return _run_bench(_parse_bench_arguments(args.bench_args))


def _parse_bench_arguments(arguments: Sequence[str]) -> argparse.Namespace:
    benchmark_parser = argparse.ArgumentParser(prog=f"{PROG} bench", description="InternVL 2.5 model benchmark.")
    return _benchmark_module().build_parser(benchmark_parser).parse_args(list(arguments))


__all__ = ["add_bench_command", "bench_handler"]
