"""A pre-imported Python that forks a child per command line: the test suite's ``run_cli``.

Importing Lightning, torch and torchmetrics takes about 7 s of a 2-core machine; the suite runs
the real command line some 50 times. This process imports the entry points once, then for
each request (one JSON line on stdin: module, args, cwd, env, stdout and stderr files) forks a
child that becomes ``python -m <module> <args>``: it takes the request's working directory,
environment and output files, runs the module as ``__main__`` (``runpy``, as ``-m`` does),
runs the exit handlers and exits with the command's status. The child starts from a process
that has only imported modules (no Hydra run, no threads, no CUDA), so it computes what a fresh
interpreter computes. Replies on stdout: ``{"pid": N}`` when the child starts, ``{"pid": N,
"code": C}`` when it ends. ``XRAY_LOSS_TEST_SUBPROCESS=1`` makes ``run_cli`` use plain
subprocesses instead.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
import traceback

PRELOAD = ("xray_loss.train", "xray_loss.eval", "xray_loss.predict", "matplotlib.pyplot")


def become(request: dict) -> None:
    """In the child: turn into ``python -m module args`` and exit with its status."""
    code = 1
    try:
        os.setsid()  # its own process group, like a fresh subprocess
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path, flags in (
            (0, os.devnull, os.O_RDONLY),
            (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
            (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
        ):
            opened = os.open(path, flags, 0o644)
            os.dup2(opened, fd)
            os.close(opened)
        sys.stdout.reconfigure(line_buffering=True)
        sys.stderr.reconfigure(line_buffering=True)
        sys.argv = [request["module"], *request["args"]]
        try:
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exit_:
            if exit_.code is None or isinstance(exit_.code, int):
                code = exit_.code or 0
            else:
                print(exit_.code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()  # what an interpreter runs at exit (loggers, joblib, ...)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    for name in PRELOAD:
        __import__(name)
    reply = sys.stdout
    reply.write(json.dumps({"ready": True}) + "\n")
    reply.flush()
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            become(request)
        reply.write(json.dumps({"pid": pid}) + "\n")
        reply.flush()
        _, status = os.waitpid(pid, 0)
        reply.write(json.dumps({"pid": pid, "code": os.waitstatus_to_exitcode(status)}) + "\n")
        reply.flush()


if __name__ == "__main__":
    main()
