"""The original checkpoint's remote code (`auto_map` in config.json and the `*.py` files it names) through a round
trip original -> `-hf` -> original.

OpenGVLab checkpoints ship their model, config and tokenizer code (`configuration_internvl_chat.py`,
`modeling_internvl_chat.py`, `tokenization_internlm2.py`, ...) and name it in `auto_map`; the original's
`AutoModel.from_pretrained(path, trust_remote_code=True)` and the serving tools that load the config through it need
both. `--to hf` keeps the files beside the `-hf` weights (transformers' port never reads them: the `-hf` config has no
`auto_map`) and records `auto_map`; `--to original` copies the files back and writes `auto_map` again when every file
it names came along.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers.utils import logging

from ..modeling.original_api import copy_remote_code_files
from .checkpoint_io import read_json, write_json

logger = logging.get_logger(__name__)

AUTO_MAP_RECORD = "auto_map"


def _module_files(auto_map: dict[str, Any]) -> set[str]:
    """The local `*.py` files `auto_map` names (`module.Class`; `repo--module.Class` refers to another repository)."""
    files = set()
    for value in auto_map.values():
        for reference in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(reference, str) and "--" not in reference and "." in reference:
                files.add(reference.rsplit(".", 1)[0] + ".py")
    return files


def record_auto_map(source_config: dict[str, Any], record: dict[str, Any]) -> None:
    """`--to hf`: keep the source config's `auto_map` in the `-hf` record (`hf_layout.ORIGINAL_RECORD_KEY`)."""
    if isinstance(source_config.get("auto_map"), dict):
        record[AUTO_MAP_RECORD] = source_config["auto_map"]


def carry_remote_code(source: Path, folder: Path) -> None:
    """`--to hf`: copy the remote-code files of `source` into the `-hf` `folder`."""
    copy_remote_code_files(source, folder)


def restore_remote_code(source: Path, folder: Path, record: dict[str, Any]) -> None:
    """`--to original`: copy the remote-code files of the `-hf` `source` into `folder` and write the recorded
    `auto_map` into its config.json when every file it names is there (else a warning: an `auto_map` naming missing
    files would break `trust_remote_code=True` loads)."""
    copy_remote_code_files(source, folder)
    auto_map = record.get(AUTO_MAP_RECORD)
    if not isinstance(auto_map, dict):
        return
    missing = sorted(name for name in _module_files(auto_map) if not (folder / name).is_file())
    if missing:
        logger.warning(
            f"{source} records the original auto_map but lacks its remote-code file(s) {', '.join(missing)}; the "
            "original-layout config.json gets no auto_map (copy the files and auto_map from the original checkpoint "
            "to load it with trust_remote_code=True)"
        )
        return
    config = read_json(folder / "config.json", "config")
    config["auto_map"] = auto_map
    write_json(folder / "config.json", config)


__all__ = ["AUTO_MAP_RECORD", "carry_remote_code", "record_auto_map", "restore_remote_code"]
