"""``python -m <module> args...`` inside the test process: the entry point's own ``__main__`` block,
with the process state a command touches put back afterwards (tests/conftest.py:run_cli).

A command here runs as a fresh interpreter would run it, as far as the tests can tell:

- the module runs as ``__main__`` through ``runpy`` (what ``python -m`` does), with ``sys.argv``
  set, so its ``__main__`` block (``setup_process()``, quoting of path overrides) and Hydra's
  ``@hydra.main`` see the command line: ``-m``, the Hydra callbacks of conf/hydra/default.yaml,
  one-sentence config errors with exit status 1, ``SystemExit`` codes, tracebacks on stderr;
- it runs in ``cwd`` with exactly ``env`` as ``os.environ`` (and ``PYTHONPATH`` on ``sys.path``);
- its output is captured from the file descriptors 1 and 2 (a child process's, C libraries')
  and from ``sys.stdout``/``sys.stderr`` (where the logging handlers Hydra installs write);
  logging handlers that write to the process's stdout/stderr (Lightning's own, installed at
  import) write to the command's while it runs;
- warnings print to its stderr under a fresh interpreter's filters (pytest records them);
- ``xray_loss.config.setup_process`` runs again (a new process has not run it yet), and the exit
  handlers the package registers (``atexit.register`` from ``xray_loss.*``: directory locks) run
  when the command ends, as they would at a process's exit;
- afterwards everything is put back: cwd, os.environ, sys.argv, sys.path (and the modules
  imported from the command's own entries, its cwd and PYTHONPATH), sys.stdout/stderr,
  file descriptors 1 and 2, Hydra's GlobalHydra/HydraConfig/JobRuntime singletons, loggers
  (levels, handlers, filters, propagation; the command's handlers are closed), signal
  handlers, warning filters, torch threads, deterministic and matmul settings, default dtype,
  the RNG states of random, numpy and torch, matplotlib's rcParams, ``sys.modules[module]``.

What cannot be put back: modules the command imported from this process's sys.path stay
imported (a fresh process imports them again), and what has no undo and is the same for every
command (``setup_process``'s process-wide settings, a library's service started once).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import os
import random
import runpy
import signal
import subprocess
import sys
import tempfile
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

ENTRY_POINTS = ("xray_loss.train", "xray_loss.eval", "xray_loss.predict")

# The streams of this process as the modules imported below saw them (a logging handler made at
# import time keeps the stream it was given).
_IMPORT_STREAMS = {"stdout": sys.stdout, "stderr": sys.stderr}


def _fresh_warning_filters() -> list[tuple]:
    """A fresh interpreter's warning filters (no -W options: the documented defaults), plus the
    ones importing the entry points adds (Lightning, torch, numpy). Computed when this module
    is imported (by tests/conftest.py, before pytest collects): pytest drops filters that
    imports add during a test or collection."""
    with warnings.catch_warnings():
        warnings.resetwarnings()
        if not sys.warnoptions:
            warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning):
                warnings.simplefilter("ignore", category, append=True)
            warnings.simplefilter("ignore", ResourceWarning, append=True)
        for name in ("lightning", *ENTRY_POINTS):
            with contextlib.suppress(Exception):  # a broken import: the command reports it
                importlib.import_module(name)
        return list(warnings.filters)


# Imported here, when tests/conftest.py is loaded and before pytest's logging plugin puts its
# handlers on the root logger: Lightning sets up its loggers at import as in a fresh `python -m`
# (a handler of its own on stderr, not propagating to the root logger and Hydra's handlers).
_FRESH_FILTERS = _fresh_warning_filters()


def run_in_process(module: str, args: list[str], cwd: Path, env: dict[str, str]):
    """``python -m module args`` in ``cwd`` with environment ``env``, in this process; returns a
    ``subprocess.CompletedProcess`` (exit status, text stdout and stderr)."""
    command = [sys.executable, "-m", module, *args]
    with _output() as output, _process_state(module, cwd, env):
        sys.argv = [module, *args]  # runpy puts the module's file in sys.argv[0]
        code = _run_main(module)
    return subprocess.CompletedProcess(command, code, output["stdout"], output["stderr"])


def _run_main(module: str) -> int:
    """Run ``module`` as ``__main__`` and its exit handlers; the exit status of ``python -m``."""
    at_exit: list[tuple] = []
    register = atexit.register

    def register_here(func, *args, **kwargs):  # the package's: at the command's end
        if getattr(func, "__module__", "").startswith("xray_loss"):
            at_exit.append((func, args, kwargs))
            return func
        return register(func, *args, **kwargs)

    atexit.register = register_here
    try:
        code = _status(lambda: runpy.run_module(module, run_name="__main__", alter_sys=True))
    finally:
        atexit.register = register
    for func, args, kwargs in reversed(at_exit):
        try:
            func(*args, **kwargs)
        except Exception:  # an interpreter prints it and goes on
            traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def _status(main) -> int:
    try:
        main()
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            return exit_.code or 0
        print(exit_.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        raise  # Ctrl-C of the test session
    except BaseException:  # what an interpreter does with an uncaught exception
        traceback.print_exc()
        return 1
    return 0


@contextlib.contextmanager
def _output() -> Iterator[dict[str, str]]:
    """Capture file descriptors 1 and 2 and sys.stdout/stderr (one file each, in order); the
    text is in the yielded dict once the block ends."""
    found: dict[str, str] = {}
    saved_streams = sys.stdout, sys.stderr
    for stream in saved_streams:
        with contextlib.suppress(Exception):
            stream.flush()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        files = {"stdout": out, "stderr": err}
        saved_fds = {1: os.dup(1), 2: os.dup(2)}
        streams = {}
        try:
            for fd, name in ((1, "stdout"), (2, "stderr")):
                os.dup2(files[name].fileno(), fd)
                errors = "backslashreplace" if name == "stderr" else "strict"
                streams[name] = open(  # noqa: SIM115 - closed below
                    fd, "w", encoding="utf-8", errors=errors, buffering=1, closefd=False
                )
            sys.stdout, sys.stderr = streams["stdout"], streams["stderr"]
            with _handlers_writing_to(streams, saved_streams):
                yield found
        finally:
            for stream in streams.values():
                with contextlib.suppress(Exception):
                    stream.flush()
                    stream.close()
            sys.stdout, sys.stderr = saved_streams
            for fd, saved in saved_fds.items():
                os.dup2(saved, fd)
                os.close(saved)
            for name, file in files.items():
                file.seek(0)
                found[name] = file.read().decode("utf-8", errors="replace")


@contextlib.contextmanager
def _handlers_writing_to(streams: dict, current: tuple) -> Iterator[None]:
    """Point the logging handlers that write to this process's stdout or stderr at ``streams``
    while the block runs (a real process's handlers write to its own stdout/stderr)."""
    which = {
        id(current[0]): "stdout",
        id(current[1]): "stderr",
        id(sys.__stdout__): "stdout",
        id(sys.__stderr__): "stderr",
        id(_IMPORT_STREAMS["stdout"]): "stdout",
        id(_IMPORT_STREAMS["stderr"]): "stderr",
    }
    moved = []
    for logger in _loggers():
        for handler in logger.handlers:
            kind = type(handler) is logging.StreamHandler and which.get(id(handler.stream))
            if kind:
                moved.append((handler, handler.setStream(streams[kind])))
    try:
        yield
    finally:
        for handler, stream in moved:
            if handler.stream in streams.values():  # not replaced by the command itself
                handler.setStream(stream)


def _loggers() -> list[logging.Logger]:
    known = logging.Logger.manager.loggerDict.values()
    return [logging.root, *(lg for lg in known if isinstance(lg, logging.Logger))]


@contextlib.contextmanager
def _process_state(module: str, cwd: Path, env: dict[str, str]) -> Iterator[None]:
    """Give the command a fresh process's state, and put this process's back afterwards."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import JobRuntime

    saved_cwd = os.getcwd()
    saved_env = dict(os.environ)
    saved_argv, saved_path = list(sys.argv), list(sys.path)
    saved_module = sys.modules.pop(module, None)  # a fresh `python -m` has not imported it
    imported = set(sys.modules)
    added: list[str] = []  # the command's own entries of sys.path
    saved_hydra = (GlobalHydra.instance().hydra, HydraConfig.instance().cfg)
    saved_job = JobRuntime.instance().conf
    loggers = {
        lg: (lg.level, list(lg.handlers), lg.propagate, lg.disabled, list(lg.filters))
        for lg in _loggers()
    }
    disabled = logging.root.manager.disable
    handlers = {id(h) for _, hs, *_ in loggers.values() for h in hs}
    signals = _signal_handlers()
    torch_state = _torch_state()
    rng = _rng_state()
    rc = _rc_params()
    try:
        with warnings.catch_warnings():
            warnings.resetwarnings()  # and so every warning registry: shown again, as anew
            for action, message, category, mod, lineno in _FRESH_FILTERS:
                warnings.filterwarnings(
                    action,
                    getattr(message, "pattern", message or ""),
                    category,
                    getattr(mod, "pattern", mod or ""),
                    lineno,
                    append=True,
                )
            warnings.showwarning = _print_warning
            os.chdir(cwd)
            os.environ.clear()
            os.environ.update(env)
            # `python -m` puts the working directory first on sys.path, then PYTHONPATH
            pythonpath = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
            added = [os.getcwd(), *pythonpath]
            sys.path[:0] = added
            GlobalHydra.instance().clear()
            HydraConfig.instance().cfg = None
            _setup_process_again()
            yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv[:], sys.path[:] = saved_argv, saved_path
        if saved_module is not None:
            sys.modules[module] = saved_module
        _forget_modules_from(added, saved_path, imported)
        GlobalHydra.instance().hydra, HydraConfig.instance().cfg = saved_hydra
        JobRuntime.instance().conf = saved_job
        for logger in _loggers():
            if logger not in loggers:
                continue  # made by a module the command imported: as that import left it
            level, kept, propagate, off, filters = loggers[logger]
            for handler in logger.handlers:
                if id(handler) not in handlers:
                    handler.close()  # the command's (Hydra's console and <job>.log)
            logger.handlers = kept
            logger.setLevel(level)
            logger.propagate, logger.disabled, logger.filters = propagate, off, filters
        logging.disable(disabled)
        _restore_signals(signals)
        _restore_torch(torch_state)
        _restore_rng(rng)
        _restore_rc_params(rc)


def _forget_modules_from(entries: list[str], path: list[str], imported: set[str]) -> None:
    """Forget the modules the command imported from its working directory or PYTHONPATH (a
    README example's my_heads.py): the next command imports its own, as a new process does.
    Modules this process finds on its own sys.path (``path``), and submodules of packages
    imported before (xray_loss.*), stay."""
    roots = [Path(e).resolve() for e in entries]
    kept = [Path(p or ".").resolve() for p in path]  # "": where this process started
    for name in set(sys.modules) - imported:
        file = getattr(sys.modules[name], "__file__", None)
        if name.partition(".")[0] in imported or not file:
            continue
        file = Path(file).resolve()
        if any(file.is_relative_to(r) for r in roots) and not any(
            file.is_relative_to(k) for k in kept
        ):
            del sys.modules[name]


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as an interpreter prints it: on the (command's) stderr."""
    text = warnings.formatwarning(message, category, filename, lineno, line)
    with contextlib.suppress(OSError, ValueError):
        (file or sys.stderr).write(text)


def _setup_process_again() -> None:
    try:
        from xray_loss.config import setup_process
    except Exception:  # a broken import: the command reports it
        return
    setup_process.cache_clear()


def _signal_handlers() -> dict:
    found = {}
    for signum in signal.valid_signals():
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            found[signum] = signal.getsignal(signum)
    return found


def _restore_signals(saved: dict) -> None:
    for signum, handler in saved.items():
        if handler is not None and signal.getsignal(signum) is not handler:
            with contextlib.suppress(OSError, ValueError, RuntimeError):
                signal.signal(signum, handler)


def _torch_state():
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    return (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.get_float32_matmul_precision(),
        torch.get_default_dtype(),
    )


def _restore_torch(saved) -> None:
    if saved is None:
        return
    import torch

    threads, deterministic, warn_only, cudnn_deterministic, benchmark, precision, dtype = saved
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.backends.cudnn.deterministic = cudnn_deterministic
    torch.backends.cudnn.benchmark = benchmark
    torch.set_float32_matmul_precision(precision)
    torch.set_default_dtype(dtype)


def _rng_state():
    numpy, torch = sys.modules.get("numpy"), sys.modules.get("torch")
    return (
        random.getstate(),
        numpy.random.get_state() if numpy else None,
        torch.random.get_rng_state() if torch else None,
    )


def _restore_rng(saved) -> None:
    python, numpy_state, torch_state = saved
    random.setstate(python)
    if numpy_state is not None:
        sys.modules["numpy"].random.set_state(numpy_state)
    if torch_state is not None:
        sys.modules["torch"].random.set_rng_state(torch_state)


def _rc_params():
    matplotlib = sys.modules.get("matplotlib")
    return matplotlib.rcParams.copy() if matplotlib else None


def _restore_rc_params(saved) -> None:
    matplotlib = sys.modules.get("matplotlib")
    if matplotlib is None or saved is None:
        return  # imported by the command: as it left it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated keys in the copy
        matplotlib.rcParams.update(saved)
