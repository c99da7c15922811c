"""`python -m transformers_internvl.conversion SRC DST --to hf|original`: the `convert` subcommand."""

import sys

from ..cli import main

if __name__ == "__main__":
    raise SystemExit(main(["convert", *sys.argv[1:]]))
