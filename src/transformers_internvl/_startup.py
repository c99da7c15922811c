"""Quiet Ctrl-C while the `transformers-internvl` console script starts (imports torch and transformers for seconds).

Imported first by the package `__init__`. Only when this process *is* the console script (`transformers-internvl ...`
or `python -m transformers_internvl ...`) and nobody else has set a SIGINT handler, Ctrl-C during the imports exits
with status 130 and no traceback. `cli.main` restores Python's default handler (KeyboardInterrupt) as soon as it runs.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

_CLI_NAMES = ("transformers-internvl", "transformers-internvl.exe", "transformers-internvl-script.py")
_MODULE = "transformers_internvl"


def _is_console_script() -> bool:
    if sys.argv and os.path.basename(sys.argv[0]) in _CLI_NAMES:
        return True
    arguments = list(getattr(sys, "orig_argv", ()))
    for index, argument in enumerate(arguments):
        if argument == "-m" and index + 1 < len(arguments):
            return arguments[index + 1] == _MODULE
        if argument == f"-m{_MODULE}":
            return True
    return False


def _exit_quietly(signum: int, frame: object) -> None:
    sys.stderr.write("\n")
    raise SystemExit(130)


def quiet_interrupt_during_startup() -> None:
    """Install `_exit_quietly` for SIGINT if this process is the console script (see the module docstring)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler or not _is_console_script():
        return
    signal.signal(signal.SIGINT, _exit_quietly)
