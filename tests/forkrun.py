"""Run `python SCRIPT ARGS`, `python -m MODULE ARGS` and `python -c CODE` as a fresh interpreter would, without paying
for a fresh interpreter's imports each time.

A server process imports torch, transformers, TRL, PEFT, datasets and minimind_hf once and then forks one child per
command. The child is what `python` would be after those imports: its own working folder, `sys.argv`, `sys.path[0]`
(the script's folder, or the working folder for `-m` / `-c`), stdin on /dev/null, stdout and stderr to a log file,
`__name__ == "__main__"`, and the exit status of `sys.exit` or an uncaught exception. What differs is only that the
libraries were imported before the command started, so a script's own imports find them in `sys.modules` (a script
that forgets an import still fails: its names are not bound). The server is forked before any torch operation runs,
so no thread pool exists to break in the children. Commands that need another environment than the server's must run
in a real subprocess (`Forkrun.env` says which environment the server has).

The documented-commands test runs about 25 scripts; each paid 4-5 s of imports in its own interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SERVER = r"""
import json, os, runpy, sys, traceback
import torch, transformers, trl, peft, datasets, accelerate  # noqa: F401  (the imports every child would pay for)
import minimind_hf, minimind_hf.training, minimind_hf.data, minimind_hf.curriculum  # noqa: F401

def child(request):
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    sys.stdin = open(0, closefd=False)
    os.chdir(request["cwd"])
    argv = request["argv"]
    code = 0
    try:
        if argv[0] == "-c":
            sys.argv = ["-c", *argv[2:]]
            sys.path[0] = ""
            exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        elif argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            sys.path[0] = os.getcwd()
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as error:
        if error.code is None:
            code = 0
        elif isinstance(error.code, int):
            code = error.code
        else:
            print(error.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

reply = os.fdopen(int(sys.argv[1]), "w")
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        child(request)
    _, status = os.waitpid(pid, 0)
    reply.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
    reply.flush()
"""


class Forkrun:
    """`with Forkrun(env) as run: run(argv, cwd)` -> `subprocess.CompletedProcess` (stdout and stderr together in
    `stderr`), for `argv` as `sys.executable` would take it."""

    def __init__(self, env: dict, log_dir: Path):
        self.env = dict(env)
        self.log_dir = Path(log_dir)
        self.count = 0

    def __enter__(self):
        read, write = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(write)],
            stdin=subprocess.PIPE,
            env=self.env,
            pass_fds=(write,),
            text=True,
        )
        os.close(write)
        self.replies = os.fdopen(read)
        return self

    def __call__(self, argv: list, cwd: Path) -> subprocess.CompletedProcess:
        self.count += 1
        log = self.log_dir / f"forkrun-{self.count}.log"
        self.proc.stdin.write(json.dumps({"argv": [str(a) for a in argv], "cwd": str(cwd), "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        line = self.replies.readline()
        if not line:
            raise RuntimeError(f"forkrun server died with {self.proc.wait()}")
        output = log.read_text(errors="replace") if log.exists() else ""
        return subprocess.CompletedProcess(argv, json.loads(line)["returncode"], "", output)

    def __exit__(self, *exc):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.replies.close()
