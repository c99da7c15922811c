"""`python -m transformers_internvl.conversion SRC DST --to hf|original`: the `convert` command (see `command.main`).

It uses the conversion package's own parser: the conversion layer does not import `cli`, which sits above it."""

from .command import main

if __name__ == "__main__":
    raise SystemExit(main())
