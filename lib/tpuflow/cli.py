"""What every tpuflow command shares with its user: errors as one line, grouped help, progress.

- Errors a person can act on (a bad flag, a missing or malformed file, a locked run dir, a full
  disk) print as one line naming the culprit: exit status 2 for usage errors (`UsageError`: a
  flag's value or combination), 1 for everything else the user can fix (data and I/O: ValueError,
  OSError). Anything else is a bug and keeps its traceback; `--debug` shows tracebacks always.
- `run.py --help` lists the experiment's own flags by group (`run_main`).
- `Progress` reports long loops: a redrawn line on a terminal, a few plain lines in a log.
- `quiet_native_logs` drops TensorFlow's C++ start-up logs (oneDNN, CUDA probing, CPU features).
"""
from __future__ import annotations

import atexit
import faulthandler
import os
import re
import sys
import threading
import time
from typing import Callable, Sequence

from absl import app, flags

flags.DEFINE_boolean("debug", False, "Show the full traceback of errors (default: one line naming the culprit)")

USAGE_EXIT, DATA_EXIT = 2, 1
PREEMPTED_EXIT = 75  # SIGTERM/SIGINT honoured, the work backed up: re-run the same command (EX_TEMPFAIL)
_TF_USER_ERRORS = {"DataLossError", "NotFoundError", "PermissionDeniedError", "ResourceExhaustedError",
                   "UnavailableError"}


class UsageError(ValueError):
    """A flag value or combination that cannot work; the message names the flag(s)."""


def user_message(err: BaseException) -> str | None:
    """The one-line message of an error the user can fix, or None for a bug (show a traceback).

    TensorFlow's file errors (a corrupt, missing or unreadable file; memory exhausted) count as
    user errors; its other errors (shapes, types) are bugs.
    """
    tf_user_error = (type(err).__module__.startswith("tensorflow")
                     and type(err).__name__ in _TF_USER_ERRORS)
    if isinstance(err, OSError) and err.filename and err.strerror:
        text = f"{err.filename}: {err.strerror}"  # e.g. a full disk: the path first
    elif isinstance(err, (ValueError, OSError)) or tf_user_error:
        text = str(err)
    else:
        return None
    return " ".join(text.split()) or type(err).__name__


def run_main(main: Callable[[list[str]], None], translate: Callable[[list[str]], list[str]] | None = None,
             help_groups: dict[str, Sequence[str]] | None = None) -> None:
    """`absl.app.run(main)`, with user errors printed as one line on stderr (see the module doc).
    `translate`: rewrites the command line before absl parses it (another tool's flag names); a
    UsageError there is one line too. `help_groups`: `--help` lists these flags by group (and
    --debug) with the script's doc, rather than absl's list."""
    if help_groups is not None and help_requested():
        script = sys.modules.get("__main__")
        names = [n for group in help_groups.values() for n in group] + ["debug"]
        print(f"usage: python {os.path.basename(sys.argv[0])} [--flag=value ...]\n")
        print(format_help(help_groups, names, getattr(script, "__doc__", None) or ""))
        sys.exit(0)
    if translate is not None:
        try:
            sys.argv = translate(sys.argv)
        except UsageError as err:
            _fail(str(err), usage=True)

    def checked(argv):
        try:
            return main(argv)  # absl exits with it
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # sorted into user errors and bugs below
            usage = isinstance(err, (UsageError, app.UsageError))
            message = str(err) if isinstance(err, app.UsageError) else user_message(err)
            if message is None or flags.FLAGS.debug:
                raise
            _fail(message, usage)

    app.run(checked)


def _fail(message: str, usage: bool) -> None:
    prog = os.path.basename(sys.argv[0])
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    if usage:
        print(f"{prog}: see --help for the flags", file=sys.stderr, flush=True)
    sys.exit(USAGE_EXIT if usage else DATA_EXIT)


# --------------------------------------------------------------------------------------------
# Help


def help_requested(argv: Sequence[str] | None = None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return any(a in ("--help", "-h", "-?", "--helpshort") for a in argv)


def format_help(groups: dict[str, Sequence[str]], names: Sequence[str], doc: str) -> str:
    """Flag help grouped: `groups` maps a title to flag names; flags in no group come last. The
    defaults shown are the flags' as set now (a run.py's included)."""
    fl = flags.FLAGS
    lines = [doc.strip(), ""] if doc else []
    for title, group in [*groups.items(), ("other", [n for n in names if not any(n in g for g in groups.values())])]:
        group = [n for n in group if n in names]
        if not group:
            continue
        lines.append(f"{title}:")
        for name in group:
            flag = fl[name]
            default = flag.default
            shown = "--" + name if flag.flag_type() != "bool" else f"--[no]{name}"
            lines.append(f"  {shown}  (default: {default!r})")
            lines.append(f"      {flag.help}")
        lines.append("")
    lines.append("--debug shows tracebacks; --helpfull lists every flag, TensorFlow's and absl's included.")
    return "\n".join(lines)


def script_relative(paths: dict, script_dir: str) -> dict:
    """The relative local paths of `paths` ({flag: default}; a URL is none), resolved against `script_dir`."""
    return {name: os.path.normpath(os.path.join(script_dir, value)) for name, value in paths.items()
            if isinstance(value, str) and value and "://" not in value and not os.path.isabs(value)}


# --------------------------------------------------------------------------------------------
# Progress


class Progress:
    """Progress of a loop of `total` steps: one redrawn line on a terminal; in a log, a plain line
    at most every `every_s` seconds and at the end."""

    def __init__(self, what: str, total: int, stream=None, every_s: float = 10.0):
        self.what, self.total, self.done = what, total, 0
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.every_s, self.start, self.last = every_s, time.monotonic(), -float("inf")

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        now = time.monotonic()
        finished = self.done >= self.total
        if not (self.tty or finished or now - self.last >= self.every_s):
            return
        self.last = now
        text = f"{self.what}: {self.done}/{self.total} ({now - self.start:.0f}s){' ' + note if note else ''}"
        if self.tty:
            width = 100
            bar = "#" * int(20 * self.done / max(self.total, 1))
            print(f"\r{self.what}: [{bar:20s}] {self.done}/{self.total} {note}"[:width].ljust(width),
                  end="\n" if finished else "", file=self.stream, flush=True)
        else:
            print(text, file=self.stream, flush=True)



# --------------------------------------------------------------------------------------------
# TensorFlow's native logs

# A line of absl/glog C++ logging ("I0000 00:00:17.0 123 port.cc:153] ..."), absl's note that it
# logs before initialisation, and the second line of TensorFlow's CPU-feature message.
_NATIVE_LOG = re.compile(rb"^(?:([IWE])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^\]]+\] |(WARNING): All log messages "
                         rb"before absl::InitializeLog|(I)?To enable the following instructions: .* rebuild TensorFlow)")
_LEVELS = {b"I": 0, b"W": 1, b"E": 2, b"WARNING": 1}
_installed = False


def native_log_dropped(line: bytes, min_level: int) -> bool:
    """True for a TensorFlow C++ log line below `min_level` (TF_CPP_MIN_LOG_LEVEL's scale)."""
    match = _NATIVE_LOG.match(line)
    if not match:
        return False
    level = next((g for g in match.groups() if g), b"I")
    return _LEVELS[level] < min_level


def quiet_native_logs() -> None:
    """Filters TensorFlow's C++ logs out of this process's stderr (file descriptor 2).

    TensorFlow 2.19+ logs through absl before absl is initialised, which ignores
    TF_CPP_MIN_LOG_LEVEL: every command printed ~10 lines (oneDNN, `cuInit` on a machine without
    a GPU, CPU features), some twice. Here fd 2 becomes a pipe read by a thread that forwards every
    other line; lines below TF_CPP_MIN_LOG_LEVEL (default 3: all but fatal) are dropped, so
    TF_CPP_MIN_LOG_LEVEL=0 shows everything again. Crash tracebacks (faulthandler) go straight
    to the real stderr. Call before importing TensorFlow; a no-op under pytest, whose output
    capture owns fd 2.
    """
    global _installed
    if _installed or "pytest" in sys.modules:
        return
    try:
        min_level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))
        sys.stderr.flush()
        real = os.dup(2)
        read, write = os.pipe()
    except (OSError, ValueError):
        return
    os.dup2(write, 2)
    os.close(write)
    _installed = True
    faulthandler.enable(file=os.fdopen(os.dup(real), "w"))

    def forward():
        with os.fdopen(read, "rb") as pipe:
            for line in pipe:
                if not native_log_dropped(line, min_level):
                    os.write(real, line)

    thread = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    thread.start()

    def restore():
        sys.stderr.flush()
        os.dup2(real, 2)  # closes the pipe's last writer: the thread drains it and ends
        thread.join(5)

    atexit.register(restore)
