"""processing sub-package of transformers_internvl."""
