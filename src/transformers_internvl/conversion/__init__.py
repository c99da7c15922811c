"""conversion sub-package of transformers_internvl."""
