"""`python -m transformers_internvl`: the `transformers-internvl` console script."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
