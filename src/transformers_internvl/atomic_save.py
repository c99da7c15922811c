"""Atomic checkpoint folders (issue 12): `save_pretrained` writes the whole checkpoint into a temporary folder beside
the target and swaps it in, so that a reader (or a process killed mid-save) sees the old checkpoint or the new one,
never a mix of the new `config.json` with the old weights.

Policy:

* The new folder is complete before anything is swapped: the files of this save, plus the files of the old folder
  this save does not write (tokenizer and processor files, README, remote code, the user's own files), hard-linked
  (copied where links are impossible). Old *weight* files (`model*.safetensors`, `pytorch_model*.bin` and their
  `.index.json`) are not carried over by a model save: the new save's weights replace them all (the original's
  `save_pretrained` overwrites in place and can leave stale shards behind; this never does). A processor save carries
  everything over.
* The swap is one `renameat2(RENAME_EXCHANGE)` on Linux (atomic: the target path always names a complete folder);
  elsewhere two renames (old folder aside, new one in), with a moment in which the path is absent. The old folder is
  then deleted; a save killed between the swap and that deletion leaves it beside the target as `.<name>.tmp-*`
  (as does a save killed before the swap, with the incomplete new folder): such folders can be deleted. A process
  whose working directory is the target (`save_pretrained(".")`) or inside it is moved back to that path, which now
  names the new folder.
* The folder gets the old folder's permissions, or `0o777 & ~umask` for a new one; the files this save writes get
  `0o666 & ~umask`, as a plain `open()` would (transformers' own writer leaves `model.safetensors` 0600); files kept
  from the old folder keep theirs.
* Only the main process (`is_main_process=True`) swaps; other processes write into the target directly, as
  transformers does.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["atomic_save_directory", "is_weight_file", "save_folder_atomically", "swap_in"]

_WEIGHT_FILE = re.compile(
    r"(?:model|pytorch_model|tf_model|flax_model)(?:-\d{5}-of-\d{5})?\.(?:safetensors|bin|h5|msgpack)(?:\.index\.json)?"
)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def is_weight_file(name: str) -> bool:
    """Whether `name` (a file name in a checkpoint folder) is a weight file or shard index transformers writes."""
    return _WEIGHT_FILE.fullmatch(name) is not None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _link_or_copy(source: str, destination: str) -> str:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)
    return destination


def _apply_umask(folder: Path) -> None:
    """Give the files written into `folder` the mode a plain `open()` would (`0o666 & ~umask`): writers that go
    through `tempfile.mkstemp` and a rename (transformers' safetensors writer) leave them 0600. Files with an
    executable bit are left as they are."""
    mode = 0o666 & ~_umask()
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            if not os.path.islink(path) and not stat.S_IMODE(os.stat(path).st_mode) & 0o111:
                os.chmod(path, mode)


def _carry_over(old: Path, new: Path, keep: Callable[[str], bool]) -> None:
    """Hard-link (or copy) into `new` the entries of `old` that `new` lacks and `keep` accepts."""
    for entry in os.scandir(old):
        destination = new / entry.name
        if destination.exists() or destination.is_symlink() or not keep(entry.name):
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), destination)
        elif entry.is_dir():
            shutil.copytree(entry.path, destination, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry.path, str(destination))


def _exchange(first: Path, second: Path) -> bool:
    """Atomically swap two paths with Linux `renameat2(RENAME_EXCHANGE)`; False where that is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, f"Cannot swap {first} and {second}: {os.strerror(code)}")


def swap_in(staging: Path, target: Path) -> None:
    """Put the folder `staging` at `target`; the old folder (if any) ends up at `staging` and is deleted. One atomic
    exchange on Linux (`target` always names a complete folder); elsewhere two renames, the old folder put back if
    the second fails. Used by `save_pretrained` and by the converter (`conversion.checkpoint_io`)."""
    if not target.exists():
        os.rename(staging, target)
        return
    if not _exchange(staging, target):
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        os.rmdir(aside)
        os.rename(target, aside)
        try:
            os.rename(staging, target)
        except BaseException:
            os.rename(aside, target)  # put the old folder back
            raise
        staging = aside
    if staging.is_dir() and not staging.is_symlink():
        shutil.rmtree(staging, ignore_errors=True)
    else:  # a file or link the caller chose to replace (`convert --force`)
        with contextlib.suppress(OSError):
            os.remove(staging)


@contextlib.contextmanager
def _following_the_working_directory(target: Path) -> Iterator[None]:
    """Keep the process's working directory at its path when the swap replaces it: `save_pretrained(".")` (or a
    save into a folder the process works in) would otherwise leave the process in the deleted old folder, where
    `os.getcwd()` fails and relative paths name nothing."""
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = None
    real = os.path.realpath(target)  # getcwd() names the folder without symbolic links
    inside = cwd is not None and (cwd == real or cwd.startswith(real + os.sep))
    try:
        yield
    finally:
        if inside:
            with contextlib.suppress(OSError):
                os.chdir(cwd if os.path.isdir(cwd) else real)


@contextlib.contextmanager
def atomic_save_directory(
    save_directory: str | os.PathLike, keep_old_weights: bool = False, enabled: bool = True
) -> Iterator[str]:
    """Context manager yielding the folder to save into; on success it becomes `save_directory` atomically.

    Args:
        save_directory: The checkpoint folder (created if absent; a symbolic link to a folder: the folder it names
            is replaced).
        keep_old_weights: Carry the old folder's weight files over too (processor saves); model saves replace them.
        enabled: False yields `save_directory` itself (non-main processes of a distributed save).

    Raises:
        OSError: `save_directory` exists and is not a folder, or the swap fails (the target is left untouched).
    On an exception inside the block the temporary folder is deleted and the target is left untouched.
    """
    if not enabled:
        yield os.fspath(save_directory)
        return
    target = Path(os.path.abspath(save_directory))  # "." and "ckpt/" name the folder itself
    if target.is_symlink():
        target = target.resolve()
    if target.exists() and not target.is_dir():
        raise OSError(f"Cannot save to {save_directory}: it exists and is not a folder.")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else 0o777 & ~_umask()
        os.chmod(staging, mode)
        yield str(staging)
        _apply_umask(staging)
        if target.exists():
            _carry_over(target, staging, lambda name: keep_old_weights or not is_weight_file(name))
        with _following_the_working_directory(target):
            swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def save_folder_atomically(
    save: Callable[..., Any], save_directory: str | os.PathLike, *args: Any, **kwargs: Any
) -> Any:
    """Run `save(staging, *args, **kwargs)` (a bound `save_pretrained` that writes a whole folder) inside
    `atomic_save_directory(save_directory, keep_old_weights=True)`: the folder's other files are kept and a failed or
    interrupted save (disk full, Ctrl-C) leaves the old folder as it was. Used by the processor's and this package's
    tokenizers' `save_pretrained`. With `push_to_hub=True` the repository name defaults to the folder's name (not the
    temporary folder's). Returns what `save` returns, with paths under the temporary folder mapped to
    `save_directory`.

    Raises:
        OSError: as `atomic_save_directory` (`save_directory` is a file, the disk is full, ...).
    """
    if kwargs.get("push_to_hub"):
        kwargs.setdefault("repo_id", os.path.basename(os.path.normpath(save_directory)))
    with atomic_save_directory(save_directory, keep_old_weights=True) as staging:
        result = save(staging, *args, **kwargs)

    def moved(path: Any) -> Any:
        if not isinstance(path, str) or not os.path.abspath(path).startswith(staging + os.sep):
            return path
        return os.path.join(os.fspath(save_directory), os.path.relpath(path, staging))

    return type(result)(moved(path) for path in result) if isinstance(result, (list, tuple)) else result
