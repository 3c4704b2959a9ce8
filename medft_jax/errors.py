"""The toolkit's one base class for bad input, and how a command line reports it.

Every error the toolkit raises because of what a user gave it (a file, a
folder, a flag, a config key, an environment switch) derives from :class:`UserError`; its message
is one line that names the thing at fault and what was expected. The
command lines run under :func:`cli_main`, which prints such an error as
``error: <message>`` and exits 2, turns the operating system's refusals
(no space left, permission denied, a read-only filesystem, a file where a
folder was expected) into one line naming the path, and lets anything else,
a real bug, show its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

EXIT_BAD_INPUT = 2
"""Exit status for bad input (argparse uses 2 for bad flags too)."""
EXIT_FAILED = 1
"""Exit status for a run that could not finish for another reason (disk full, diverged)."""
EXIT_BUSY = 75
"""Exit status for a run skipped because another process holds it (``EX_TEMPFAIL`` of
sysexits.h, "try again later"): a script ``run && report`` must not go on without the
result, yet can tell this from a failure and retry."""

UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST)
"""Errors of a folder that cannot be written, which pointing the tool elsewhere mends (a
read-only HOME; a file in the way: ENOTDIR above the folder, EEXIST where the folder itself
is a file); not a full disk."""

_OS_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only filesystem",
    errno.ENOTDIR: "a path component is a file, not a folder",
    errno.EISDIR: "is a folder, expected a file",
    errno.EEXIST: "already exists",
    errno.ENOENT: "no such file or folder",
    errno.ENAMETOOLONG: "file name too long",
    errno.ELOOP: "a symbolic link that loops (or too many links in a row)",
    errno.EFBIG: "file too large (over the filesystem's or the process's file size limit)",
    errno.EIO: "input/output error (a failing disk, or a network filesystem's fault)",
    errno.ESTALE: "stale file handle (a network filesystem's file changed under it)",
}
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.ESTALE)
"""Refusals of a write whose input was fine: exit 1, not 2 (the same command may succeed
with more room, or elsewhere, or once the disk or network filesystem is mended)."""


class UserError(ValueError):
    """Bad input: a file, folder, flag or setting that cannot be used as given."""


class BusyError(UserError):
    """Another process holds what a command needs (a run it trains now): the input is
    fine and the same command may succeed later. :func:`cli_main` prints it as one
    ``error:`` line and exits :data:`EXIT_BUSY`, as ``experiments.run`` does for a busy run."""


def json_loads(text: str | bytes, **kw: Any) -> Any:
    """``json.loads``, with JSON nested too deeply for Python's parser (a damaged or
    hostile file: ``[[[[...``) a ``json.JSONDecodeError`` like any other file that is not
    JSON: it was a ``RecursionError`` traceback where every reader names the file."""
    try:
        return json.loads(text, **kw)
    except RecursionError:
        doc = text if isinstance(text, str) else text.decode("utf-8", "replace")
        raise json.JSONDecodeError("nested too deeply", doc, 0) from None


def whole_number(value: object) -> bool:
    """An integer (numpy's too), not a bool or a float: a library argument of 2.5 or True
    read by ``int()`` as 2 or 1 without a word."""
    import numbers

    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) as one space."""
    return " ".join(str(text).split())


def os_error_line(err: OSError) -> str | None:
    """One line for an operating-system refusal we know how to explain, else None."""
    if err.errno not in _OS_REASONS:
        return None
    where = err.filename if err.filename is not None else "?"
    if err.filename2 is not None:
        where = f"{where} -> {err.filename2}"
    return f"{where}: {_OS_REASONS[err.errno]}"


def find_os_error(err: BaseException) -> OSError | None:
    """The first explainable OSError in ``err`` or its causes (orbax wraps them)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _OS_REASONS:
            return err
        err = err.__cause__ or err.__context__
    return None


SWITCHES: dict[str, bool] = {
    "MEDFT_DISTRIBUTED": False,  # jax.distributed.initialize() (BUILD.md, multi-host runs)
    "MEDFT_JAX_XLA_CACHE": True,  # the persistent compilation cache (runtime)
    "MEDFT_JAX_TUNE_CPU_HOST": True,  # the CPU host settings (runtime.tune_cpu_host)
    "MEDFT_JAX_NO_LOCKS": False,  # runs and caches unlocked (medft_jax.locks)
}
"""The toolkit's on/off environment variables and their defaults."""


def env_switch(name: str) -> bool:
    """The switch ``name`` of :data:`SWITCHES`: ``1`` on, ``0`` off, unset (or empty) its default.

    Anything else is refused in one line rather than read as "off": a
    ``MEDFT_DISTRIBUTED=true`` taken for off would run every host of a pod
    as its own single-host job, each writing the same records.
    """
    value = os.environ.get(name, "")
    if value == "":
        return SWITCHES[name]
    if value not in ("0", "1"):
        raise UserError(f"environment variable {name} must be 0 or 1, got {value!r}")
    return value == "1"


DURATIONS: dict[str, float] = {
    "MEDFT_JAX_CHECKPOINT_SECONDS": 60.0,  # between resume checkpoints (fit.checkpoint_seconds)
}
"""The toolkit's environment variables that take seconds, and their defaults."""


COUNTS: dict[str, tuple[int, int]] = {
    "MEDFT_JAX_DECODE_THREADS": (1, 256),  # images a cache build decodes at once (data.images)
}
"""The toolkit's environment variables that take a whole number, and its bounds."""


_PROCESS_INDEX = 0
"""This process's index in a multi-host job (:func:`set_process_index`; 0 alone)."""


def set_process_index(index: int) -> None:
    """Record this process's index in its job (called once it joined it), so that
    :func:`note` says a note once per job."""
    global _PROCESS_INDEX
    _PROCESS_INDEX = int(index)


def note(line: str) -> None:
    """Print one ``note:``/``WARNING:`` line on stderr, on process 0 of a multi-host job
    only: every host loads the same data and weights, and each said the same note (no
    JAX here: data modules say notes where JAX is never imported)."""
    if _PROCESS_INDEX == 0:
        print(line, file=sys.stderr, flush=True)


def bars_hidden(progress: bool) -> bool:
    """Whether progress bars stay off: asked off, on a host other than process 0, or
    stderr not a terminal nor a notebook (a log file, a SLURM job's output, a pipe took
    every redraw of every bar, ``\\r``-joined). A notebook's stderr is no terminal, yet
    shows bars."""
    if not progress or _PROCESS_INDEX != 0:
        return True
    shown = getattr(sys.stderr, "isatty", lambda: False)() or "ipykernel" in sys.modules
    return not shown


def env_count(name: str) -> int | None:
    """The whole number ``name`` of :data:`COUNTS` holds, or None when unset (or empty);
    anything else (``two``, ``²``, out of bounds) is refused in one line."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    low, high = COUNTS[name]
    if not re.fullmatch(r"[0-9]{1,9}", value) or not low <= int(value) <= high:
        raise UserError(f"{name}={value!r}: expected a whole number from {low} to {high}")
    return int(value)


def env_seconds(name: str) -> float:
    """The duration ``name`` of :data:`DURATIONS`: seconds >= 0, unset (or empty) its
    default; anything else refused in one line."""
    value = os.environ.get(name, "").strip()
    if not value:
        return DURATIONS[name]
    try:
        seconds = float(value) if plain_number(value) else float("nan")  # 1_0 is not 10
    except ValueError:
        seconds = float("nan")
    if not (seconds >= 0 and seconds != float("inf")):
        raise UserError(f"environment variable {name} must be seconds >= 0, got {value!r}")
    return seconds


EXIT_BROKEN_PIPE = 141
"""Exit status when the reader of stdout went away (128 + SIGPIPE, as a shell reports it)."""


def exit_as_child(returncode: int) -> None:
    """Ends this process with a failed child's status (a signal's as ``128 + signal``):
    the child said why on stderr (one ``error:`` line), so no traceback follows it. A
    returncode of 0 returns."""
    if returncode != 0:
        raise SystemExit(returncode if returncode > 0 else 128 - returncode)


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C of a run (:func:`medft_jax.fit.run_one`): its message names the run folder
    and says what rerunning the same command does (resume from the last checkpoint)."""


class Terminated(KeyboardInterrupt):
    """A SIGTERM, raised in the main thread by :func:`cli_main`'s handler.

    A ``KeyboardInterrupt`` so that what a Ctrl-C cleans up, a SIGTERM does too: the
    checkpoint being written is waited for, a cache build's temporaries and the run's
    lock go, the run is named with what rerunning does. A cluster's time limit (Slurm),
    ``timeout`` and ``docker stop`` end a job with SIGTERM, whose default action killed
    the process on the spot and left all of that behind."""


EXIT_TERMINATED = 128 + signal.SIGTERM
"""Exit status after a SIGTERM (143, as a shell reports a process it killed)."""

_received: list[int] = []
"""The signals (SIGINT, SIGTERM) :func:`_on_signal` took during this command: a
``KeyboardInterrupt`` caught with SIGTERM among them was a SIGTERM, even one a run re-raised
as :class:`Interrupted`; and one whose exception was lost is raised again
(:func:`raise_if_stopped`)."""

_DEFAULTS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
"""The handlers :func:`_stopping_signals` replaces: Python's own, nothing a program chose."""


_deferring = False
"""Inside :func:`deferred_stops`: a first signal is recorded, not raised."""


def _on_signal(signum: int, frame: object) -> None:
    """Raises a Ctrl-C's ``KeyboardInterrupt``, or :class:`Terminated` for a SIGTERM; a
    second SIGTERM (the cleanup too slow for its sender) ends the process at once, as the
    default action does. Inside :func:`deferred_stops` the first is only recorded."""
    if signum == signal.SIGTERM:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    first = not _received
    _received.append(signum)
    if first and (_deferring or _in_gc_callback(frame)):
        return  # in a gc callback the exception is printed and dropped: recorded, raised later
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


EXIT_INTERRUPTED = 128 + signal.SIGINT
"""Exit status after a Ctrl-C (130, as a shell reports it)."""


def exit_statuses(**own: str) -> str:
    """A command's ``--help`` epilog: its exit statuses, its own (``s0="done"``,
    ``s75=...``) over the ones every command shares (bad input, a full disk or memory,
    Ctrl-C, SIGTERM); why: a script (``sweep && report``, a SLURM requeue) branches on them,
    and they were listed by ``run`` alone."""
    shared = {
        EXIT_FAILED: "out of memory or disk",
        EXIT_BAD_INPUT: "bad input (one line naming it, nothing written)",
        EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
        EXIT_TERMINATED: "terminated (SIGTERM)",
    }
    statuses = {**shared, **{int(key.removeprefix("s")): text for key, text in own.items()}}
    return "exit status: " + "; ".join(f"{n} {statuses[n]}" for n in sorted(statuses))


def _stop_said() -> tuple[str, int]:
    """How a command stopped by this command's signals ends: ``terminated (SIGTERM)`` and
    143 with a SIGTERM among them, else ``interrupted`` and 130 (a Ctrl-C)."""
    if signal.SIGTERM in _received:
        return "terminated (SIGTERM)", EXIT_TERMINATED
    return "interrupted", EXIT_INTERRUPTED


def _wraps_a_stop(error: BaseException) -> bool:
    """Whether ``error`` was raised from a Ctrl-C or SIGTERM's exception (its cause or
    context): a library that caught it and raised its own. Another error after a stop
    (the resume checkpoint's save on a full disk) is that error, and said as such."""
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        if isinstance(link, KeyboardInterrupt):
            return True
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return False


def _in_gc_callback(frame: Any) -> bool:
    """Whether ``frame`` runs inside one of ``gc.callbacks`` (JAX's, while it compiles):
    an exception raised there is printed as "Exception ignored" with a traceback, and lost."""
    import gc

    codes = {getattr(cb, "__code__", None) for cb in gc.callbacks}
    for _ in range(32):
        if frame is None:
            return False
        if frame.f_code in codes:
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def deferred_stops() -> Iterator[None]:
    """Within: the first Ctrl-C or SIGTERM is recorded, not raised, for the caller to stop
    where it can save its state (a training loop, between steps: :func:`stop_requested`),
    then raise it (:func:`raise_if_stopped`). A second one raises at once (a second
    SIGTERM ends the process). For one process only: a multi-host job's save is
    collective, and the other processes did not see this one's signal."""
    global _deferring
    before, _deferring = _deferring, True
    try:
        yield
    finally:
        _deferring = before


@contextlib.contextmanager
def stops_held() -> Iterator[None]:
    """Within: a Ctrl-C or SIGTERM waits (:func:`deferred_stops`), and is raised on leaving.

    For importing JAX: raised inside its C++ start-up, a Ctrl-C in a command's first
    second aborted the process (``terminate called``, exit 134) instead of exit 130."""
    with deferred_stops():
        yield
    raise_if_stopped()


def stop_requested() -> bool:
    """Whether a Ctrl-C or SIGTERM reached this command (deferred, or raised and lost)."""
    return bool(_received)


def raise_if_stopped() -> None:
    """Raises again the Ctrl-C or SIGTERM of this command whose exception was lost.

    A handler raises in whatever Python code the main thread runs at that moment; in a gc
    callback (JAX registers one, and collects often while it compiles) the exception is
    printed as "Exception ignored" and dropped, and the command went on as if never
    stopped. The loops that take long (training steps, image reads) call this between
    items; outside :func:`cli_main` nothing is received, so it does nothing."""
    if signal.SIGTERM in _received:
        raise Terminated
    if _received:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _stopping_signals() -> Iterator[None]:
    """Installs :func:`_on_signal` for SIGINT and SIGTERM during the command, and puts
    Python's own handlers back.

    Left alone: a handler the embedding program installed (it chose what the signal does),
    a command in another thread than the main one (Python runs handlers there only) and
    SIGTERM in a multi-host job (``MEDFT_DISTRIBUTED``: JAX's preemption handler takes it
    there, BUILD.md)."""
    _received.clear()
    mine = []
    if threading.current_thread() is threading.main_thread():
        distributed = env_switch("MEDFT_DISTRIBUTED")
        for signum, default in _DEFAULTS.items():
            if signal.getsignal(signum) is default and not (
                distributed and signum == signal.SIGTERM
            ):
                signal.signal(signum, _on_signal)
                mine.append(signum)
    try:
        yield
    finally:
        for signum in mine:
            signal.signal(signum, _DEFAULTS[signum])


def cli_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Runs a command line's ``main`` and maps the errors a user can cause to one line.

    :class:`UserError` -> ``error: <message>``, exit 2 (a :class:`BusyError`: 75). An
    OSError (or one wrapped in another exception) with a known errno -> ``error: <path>:
    <reason>``, exit 1 for a full disk or a file over its size limit (the input was fine)
    and 2 otherwise.
    ``KeyboardInterrupt`` -> exit 130 without a traceback (``interrupted``, or, for a run's
    :class:`Interrupted`, ``interrupted: <run>: <what rerunning does>``); a SIGTERM is
    raised as one (:class:`Terminated`), so cleans up as a Ctrl-C does, and says
    ``terminated (SIGTERM)`` instead, exit 143; a closed output
    pipe (``| head``) -> exit 141, silently, as a Unix tool ends on SIGPIPE. Anything else
    propagates: a real bug keeps its traceback.
    Every switch of :data:`SWITCHES` (and :data:`DURATIONS`, :data:`COUNTS`) is checked
    first, so a malformed one stops a command before it writes anything; a command that
    fails removes the folders :func:`writable_dir` created for it if they are still empty.
    """
    _created.clear()
    status: int | None = None
    try:
        for name in SWITCHES:
            env_switch(name)
        for name in DURATIONS:
            env_seconds(name)
        for name in COUNTS:
            env_count(name)
        with _stopping_signals():
            status = main(argv)
            if _received:  # lost where no loop raised it again: not 0, and a failure kept
                word, stopped = _stop_said()
                done = ": its work is done and written" if status == 0 else ""
                print(f"{word} as it finished{done}", file=sys.stderr)
                status = status or stopped
        if sys.stdout is not None:  # None under `>&-`: prints went nowhere, and said nothing
            with naming_os_errors("stdout"):  # a full disk under `> file` names what filled it
                sys.stdout.flush()  # a closed pipe is found here, not as a traceback at exit
        return status
    except BrokenPipeError:  # `... --dry-run | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = EXIT_BROKEN_PIPE
        return status
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        status = EXIT_BUSY if isinstance(e, BusyError) else EXIT_BAD_INPUT
        return status
    except KeyboardInterrupt as e:  # an Interrupted run says which, and how to go on
        word, status = _stop_said()
        print(f"{word}: {e}" if isinstance(e, Interrupted) else word, file=sys.stderr)
        return status
    except MemoryError as e:  # the host's memory, not the device's (XLA's is a RuntimeError)
        what = f" ({one_line(e)})" if str(e) else ""
        print(
            f"error: out of host memory{what}; a file larger than this machine can hold, "
            "or too many decoding threads (MEDFT_JAX_DECODE_THREADS)",
            file=sys.stderr,
        )
        status = EXIT_FAILED
        return status
    except Exception as e:
        if _received and _wraps_a_stop(e):  # a library wrapped it (orbax, tensorstore)
            word, status = _stop_said()
            print(word, file=sys.stderr)
            return status
        os_err = find_os_error(e)
        if os_err is None:
            code = os_errno_in(e)  # tensorstore and torch name the errno only in their text
            if code is None:
                raise
            os_err = OSError(code, os.strerror(code))
        if os_err.filename is None and _stdout_fails():  # a print's flush into `> /dev/full`
            os_err = OSError(os_err.errno, os_err.strerror, "stdout")
        print(f"error: {os_error_line(os_err)}", file=sys.stderr)
        return EXIT_FAILED if os_err.errno in _FULL else EXIT_BAD_INPUT
    finally:
        _received.clear()  # a library call after the command is not stopped by its signal
        if status != 0:
            _remove_created_if_empty()


def _stdout_fails() -> bool:
    """Whether stdout cannot take what it holds (an error without a file name, from a
    print's flush, read "?: no space left"); if so it is pointed at /dev/null, so that the
    exit's own flush adds no "Exception ignored" lines."""
    if sys.stdout is None:
        return False
    try:
        sys.stdout.flush()
    except OSError:
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return True
    return False


def exit_command(status: int) -> NoReturn:
    """A command line's exit (``exit_command(main())`` under ``__main__``) with ``status``.

    Stopped by Ctrl-C or SIGTERM (its work saved and its line said), the process ends at
    once, without the interpreter's shutdown: that shutdown, after a Ctrl-C that arrived
    while XLA compiled, crashed in XLA's threads (a segmentation fault, exit 139, not 130)
    in most first runs. A caller of ``main([...])`` gets the status back as before."""
    if status in (EXIT_INTERRUPTED, EXIT_TERMINATED):
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(status)
    sys.exit(status)


_created: list[Path] = []
"""The folders :func:`writable_dir` created in this command, parents first."""


def _remove_created_if_empty() -> None:
    """Removes again the folders this command created and left empty, deepest first.

    ``--out`` is created while the flags are checked, before the work that can
    still refuse the input (a damaged ``--weights`` checkpoint, a dataset that
    is not prepared); a failed command leaves nothing behind, not even an empty
    folder. ``rmdir`` removes only an empty folder, so nothing anyone wrote
    there (another shard of the sweep, say) is touched.
    """
    for folder in reversed(_created):
        with contextlib.suppress(OSError):
            folder.rmdir()
    _created.clear()


def path_flag(expected: str, *, output: bool = False) -> Callable[[str], str]:
    """An argparse ``type=`` for a path flag: ``''`` is refused (it meant the current folder:
    ``run --out ''`` wrote its runs there), as is, for an ``output`` path, a control character
    (a newline split the closing ``record: ...`` line in two). One line naming the flag, e.g.
    ``argument --out: an empty path; expected a folder``; the value is kept as given."""

    def check(value: str) -> str:
        if value == "":
            raise argparse.ArgumentTypeError(f"an empty path; expected {expected}")
        if not utf8_name(value):  # orbax and the caches failed on it after the work
            raise argparse.ArgumentTypeError(
                f"{value!a} is not UTF-8 text (as the file system gives it); expected "
                f"{expected} whose name reads as UTF-8"
            )
        if output and any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise argparse.ArgumentTypeError(
                f"{value!r} holds a control character (a newline, a tab, ...); expected "
                f"{expected} whose name has printable characters only"
            )
        return value

    check.__name__ = expected
    return check


def utf8_name(path: str) -> bool:
    """Whether ``path`` (as :func:`os.fsdecode` gives it: undecodable bytes as surrogates)
    is UTF-8 text."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _refuse_empty(path: str | os.PathLike[str], flag: str) -> None:
    if os.fspath(path) == "":
        raise UserError(f"{flag}: an empty path; expected a folder")


def no_file_in_the_way(path: str | os.PathLike[str], flag: str) -> list[Path]:
    """Refuses, naming ``flag``, a folder path that is, or lies under, a file; returns the
    folders still missing on the way (absolute, deepest first). Creates nothing."""
    _refuse_empty(path, flag)
    p = Path(path).expanduser()
    missing = []
    for parent in (p, *p.parents):
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{flag} {path}: {parent} is a file, expected a folder")
            break
        missing.append(parent.absolute())
    return missing


def writable_dir(path: str | os.PathLike[str], flag: str) -> None:
    """Refuses, naming ``flag``, a folder path that is a file or cannot be written.

    Creates the folder when missing (what every caller would do next); under
    :func:`cli_main`, a folder created here is removed again if the command
    fails and leaves it empty.
    """
    p = Path(path).expanduser()
    missing = no_file_in_the_way(path, flag)
    try:
        p.mkdir(parents=True, exist_ok=True)
        _created.extend(reversed(missing))  # removed again if the command fails
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot create the folder ({e.strerror})") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: the folder is not writable")


def check_data_dir(path: str | os.PathLike[str], flag: str = "--data-dir") -> None:
    """Checks a ``--data-dir`` that a command reads and may write.

    An existing folder need only be readable: prepared data shared read-only
    (a lab's drive) is only read, and a write it cannot make (an unprepared
    dataset, the optional feature cache) names the path then. A missing one
    is created, as :func:`writable_dir` does.
    """
    _refuse_empty(path, flag)
    p = Path(path).expanduser()
    if p.is_dir():
        if not os.access(p, os.R_OK | os.X_OK):
            raise UserError(f"{flag} {path}: the folder cannot be read")
        return
    writable_dir(path, flag)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, unless it has none to show.

    argparse would print "(default: None)" for an option whose default is
    decided later (from the grid, the environment, the dataset), and a second
    default after a help text that already says what it is.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def spelling(name: str) -> str:
    """``name`` without its case and ``-``/``_`` slips (``G-LF`` is ``g_lf``): what
    :func:`did_you_mean` and the paper CSV's reading compare."""
    return name.lower().replace("-", "_")


def did_you_mean(value: object, choices: Iterable[str]) -> str:
    """``"; did you mean g_lf?"`` for a value near one of ``choices`` (``g-lf``), else ``""``.

    Case and ``-``/``_`` slips are matched first (``G_LF``, ``BACH``): difflib's ratio of
    ``G_LF`` to ``g_lf`` is 0.5, below any useful cutoff."""
    import difflib

    choices = list(choices)
    fold = {spelling(c): c for c in choices}
    same = fold.get(spelling(str(value)))
    if same is not None and same != value:
        return f"; did you mean {same}?"
    near = difflib.get_close_matches(str(value).lower(), list(fold), n=1, cutoff=0.6)
    return f"; did you mean {fold[near[0]]}?" if near else ""


def plain_number(text: str) -> bool:
    """Whether ``text`` is a number as a user writes one, for ``int()``/``float()`` to read:
    ASCII, no ``_`` and no padding. Python reads ``1_0`` as 10, ``８``/``١`` as 8/1 and
    ``" 3"`` as 3: ``--lr 1_0e-4`` trained at 1e-3 without a word."""
    return text.isascii() and "_" not in text and text == text.strip()


_ONLY = "filter with --only {}=..."
_SETTING = "a grid's settings are in its file (settings={{...}})"
ELSEWHERE: dict[str, dict[str, str]] = {
    "python -m experiments.run": {
        "--seed": "the training seeds are --seeds, the split's --data-seed (prepare's --seed)",
        "--config": "a grid file is experiments.sweep's (and select's) --config",
        "--only": "--only filters a grid: experiments.sweep --config ... --only ...",
        "--dry-run": "experiments.sweep --dry-run lists a grid's runs and their cost",
        "--progress": "run shows progress bars by default (--no-progress hides them)",
    },
    "python -m experiments.prepare": {
        "--data-seed": "prepare's split seed is --seed (run's --data-seed)",
        "--seeds": "prepare trains nothing: its --seed is the split's (run's --data-seed)",
        "--progress": "prepare shows progress bars by default (--no-progress hides them)",
    },
    "python -m experiments.sweep": {
        **{f"--{k}": _ONLY.format(k) for k in ("strategy", "arch", "dataset", "lr")},
        "--seed": _ONLY.format("seed"),
        "--seeds": _ONLY.format("seed"),
        "--strategies": _ONLY.format("strategy"),
        **{f"--{k}": _SETTING for k in ("epochs", "batch-size", "image-size", "weights")},
        "--no-progress": "the sweep's progress bars are off by default (--progress shows them)",
    },
    "python -m experiments.select": {
        "--dry-run": "experiments.sweep --dry-run lists a grid's runs and their cost",
        "--seeds": "select trains one seed: --seed",
        "--no-progress": "select shows no progress bars",
        "--progress": "select shows no progress bars",
    },
    "python -m experiments.report": {
        **{f"--{k}": _ONLY.format(k) for k in ("strategy", "arch", "dataset", "lr", "seed")},
        "--seeds": _ONLY.format("seed"),
        "--config-file": "the grid file is --config",
    },
    "python -m weights_port": {
        "--checkpoint": "--checkpoint is export's: python -m weights_port export --checkpoint "
        "... --out ...",
    },
}
"""Flags of another command, or of another meaning there, given to a command (by its
``prog``): where they belong. The nearest spelling pointed ``prepare --data-seed`` at
``--dataset``, ``run --seed`` at ``--seeds`` (a training seed where ``prepare``'s
``--seed`` is the split's) and ``sweep --no-progress`` at ``--progress`` (bars on)."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line too.

    argparse prints the whole usage block before its message; for a typo in
    a flag value (``--batch-size x``) one line naming the flag, and where to
    look, is what the user needs.

    Flags are spelled out in full (``allow_abbrev=False``): argparse took ``--seed 1``
    as ``run``'s ``--seeds 1`` (a training seed where ``prepare``'s ``--seed`` is the
    split's) and ``--strat ft --strategy lp`` as two spellings, the last winning.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        for key in ("description", "epilog"):  # a module docstring's reST ``literal``
            if isinstance(kwargs.get(key), str):
                kwargs[key] = kwargs[key].replace("``", "")
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        # argparse names a missing required flag before an unknown one: "--strategy is
        # required" of `--stratgy g_lf`, "--arch is required" of weights_port's export flags
        # given without `export`. The unknown flag is the slip: named first.
        unknown = self._unknown_flags()
        required = ("the following arguments are required", "one of the arguments")
        if message.startswith(required) and unknown:
            message = f"unrecognized arguments: {' '.join(unknown)}"
        message = one_line(message) + self._spelled_out(message)
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see {self.prog} --help)\n")

    def _spelled_out(self, message: str) -> str:
        """For an unrecognized flag that begins a known one's name, or is a known one
        misspelt (``--stratgy``), which it may mean; for a flag value that is not one of
        its choices but near one (``g-lf``), that one."""
        choice = re.search(r"invalid choice: '(.*?)' \(choose from (.*)\)", message)
        if choice:
            choices = [c.strip().strip("'\"") for c in choice[2].split(",")]
            return did_you_mean(choice[1], choices)
        if not message.startswith("unrecognized arguments:"):
            return ""
        elsewhere = ELSEWHERE.get(self.prog, {})
        for token in message.split(":", 1)[1].split():
            flag = token.split("=", 1)[0]
            if not flag.startswith("--"):
                continue
            if flag in elsewhere:
                return f"; {elsewhere[flag]}"
            known = sorted(o for o in self._option_string_actions if o.startswith(flag))
            if known:
                return f"; flags are spelled out in full: {flag} may be {' or '.join(known[:4])}"
            if did_you_mean(flag, self._option_string_actions):
                return did_you_mean(flag, self._option_string_actions)
        return ""

    def _get_value(self, action: argparse.Action, arg_string: str) -> Any:
        """Every ``type=int``/``type=float`` flag reads plain numbers (:func:`plain_number`)."""
        if action.type in (int, float) and not plain_number(arg_string):
            raise argparse.ArgumentError(
                action,
                f"invalid {action.type.__name__} value: {arg_string!r}; expected a number in plain "
                "ASCII digits (no _ separators, no spaces)",
            )
        return super()._get_value(action, arg_string)

    def _unknown_flags(self) -> list[str]:
        """The ``--flags`` of the command line being parsed that this parser does not take."""
        flags = []
        for token in getattr(self, "_argv", []):
            if token == "--":
                break
            flag = token.split("=", 1)[0]
            # (" ": a value argparse took as one, "--my runs", is no flag)
            if (
                flag.startswith("--")
                and flag not in self._option_string_actions
                and " " not in flag
            ):
                flags.append(flag)
        return flags

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        argv = self._negative_values_joined(sys.argv[1:] if args is None else list(args))
        self._argv = argv
        self._refuse_repeated(argv)
        return super().parse_known_args(argv, namespace)

    _NEGATIVE = re.compile(r"-\.?\d")
    """A value that begins as a negative number does: ``-600,1500``, ``-1e-3``, ``-.5``."""

    def _negative_values_joined(self, argv: list[str]) -> list[str]:
        """``--flag -600,1500`` as ``--flag=-600,1500``, for a flag that takes one value.

        argparse takes a token that begins with ``-`` for a flag unless it is one plain
        negative number: a lung window (``--dicom-window -600,1500``) was refused as
        "expected one argument", which the value was."""
        out: list[str] = []
        for token in argv:
            action = self._option_string_actions.get(out[-1]) if out else None
            if (
                action is not None
                and out[-1].startswith("--")
                and action.nargs is None  # one value: not a switch (nargs 0), not a list
                and self._NEGATIVE.match(token)
                and "--" not in out
            ):
                out[-1] = f"{out[-1]}={token}"
            else:
                out.append(token)
        return out

    def _refuse_repeated(self, argv: list[str]) -> None:
        """Refuses a one-value flag given twice (``--lr 1e-4 ... --lr 1e-3``): argparse keeps
        the last without a word, and a run at another setting than the user read would follow.
        So too a switch said both ways (``--multilabel --no-multilabel``, or two flags setting
        one setting to different values): the last won, a port as softmax the user had also
        called multilabel. A ``--x/--no-x`` switch may not repeat either; an on-only switch
        (``--force``) may. Flags that collect (``--only``) may repeat; so may anything
        after ``--``."""
        seen: dict[str, str] = {}
        switched: dict[str, tuple[str, object]] = {}
        for token in argv:
            if token == "--":
                break
            option = token.split("=", 1)[0]
            action = self._option_string_actions.get(option) if token.startswith("--") else None
            if isinstance(action, argparse.BooleanOptionalAction | argparse._StoreConstAction):
                both_ways = isinstance(action, argparse.BooleanOptionalAction)
                value = not option.startswith("--no-") if both_ways else action.const
                if action.dest in switched:
                    first, before = switched[action.dest]
                    if before != value:
                        self.error(f"{first} and {option} contradict each other; give one")
                    if both_ways:
                        self.error(f"{option} given twice; expected it once")
                switched[action.dest] = (option, value)
                continue
            if not isinstance(action, argparse._StoreAction):
                continue
            if action.dest in seen:
                again = "" if seen[action.dest] == option else f" (as {seen[action.dest]})"
                self.error(f"{option} given twice{again}; expected it once")
            seen[action.dest] = option


@contextlib.contextmanager
def quiet_logger(name: str, level: int = logging.CRITICAL) -> Iterator[None]:
    """Holds back a library's log records below ``level`` (pydicom's tracebacks of failing
    plugins, TFDS's absl warnings) where the toolkit's own one line says what matters."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


_QUIET_LOCK = threading.Lock()
_quiet_depth = 0
_quiet_saved: tuple[Any, int] | None = None


@contextlib.contextmanager
def quiet_decoding() -> Iterator[None]:
    """Holds back the decoders' own noise while an image is opened: pydicom's warnings and
    log records (a damaged file printed screenfuls of its bytes; the toolkit's one line
    says what matters), Pillow's DecompressionBombWarning (an image over the size
    limit is refused in one line anyway) and its warning that a palette's transparency
    is dropped in RGB (as the rules drop every alpha).

    Safe across the threads that decode a folder at once: warning filters and a
    logger's level are the whole process's, and ``warnings.catch_warnings`` in each
    thread, interleaved, restored another thread's filters and left them in place for
    good. Here the first thread in enters one ``catch_warnings`` and the last one out
    leaves it.
    """
    global _quiet_depth, _quiet_saved
    import warnings

    from PIL import Image

    logger = logging.getLogger("pydicom")
    with _QUIET_LOCK:
        if _quiet_depth == 0:
            caught = warnings.catch_warnings()
            caught.__enter__()
            warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # A palette's transparency, dropped with the alpha by the documented rule.
            warnings.filterwarnings("ignore", "Palette images with Transparency", UserWarning)
            _quiet_saved = (caught, logger.level)
            logger.setLevel(logging.CRITICAL)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _quiet_depth -= 1
            if _quiet_depth == 0 and _quiet_saved is not None:
                caught, level = _quiet_saved
                logger.setLevel(level)
                caught.__exit__(None, None, None)
                _quiet_saved = None


@contextlib.contextmanager
def naming_os_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """Re-raises a failed write (disk full, ...) as one ``OSError`` naming ``path``.

    Finds the operating system's error in orbax's exception chain, or the
    errno in tensorstore's message; any other error propagates unchanged.
    """
    try:
        yield
    except Exception as e:
        code = os_errno_in(e)
        if code is None:
            raise
        raise OSError(code, os.strerror(code), str(path)) from e


_TENSORSTORE_ERRNO = re.compile(r"os_error_code='?(\d+)'?")


def os_errno_in(err: BaseException) -> int | None:
    """The errno of an explainable OS error in ``err``'s chain (or tensorstore's text)."""
    found = find_os_error(err)
    if found is not None:
        return found.errno
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        for match in _TENSORSTORE_ERRNO.finditer(str(e)):
            code = int(match.group(1))
            if os_error_line(OSError(code, "")) is not None:
                return code
        if "No space left on device" in str(e):
            return errno.ENOSPC
        e = e.__cause__ or e.__context__
    return None
