"""Running the installed `cxrlt` console script the way a user does."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch.main import main

CXRLT = Path(sys.executable).parent / "cxrlt"


def cxrlt(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(CXRLT), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


def cxrlt_in_process(capfd: pytest.CaptureFixture[str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`cxrlt ARGS` through the console script's own `main`, in this process, from `cwd`: for a command
    refused in its parent process (`cxrlt train` and `cxrlt predict` check their input before any rank
    starts), which as a subprocess would pay seconds of torch/DeepSpeed imports only to print one line.
    The result reads like `cxrlt`'s: exit status and the fd-level stdout and stderr."""
    capfd.readouterr()  # only this command's output
    before = Path.cwd()
    os.chdir(cwd)
    try:
        returncode = main([str(a) for a in args])
    except SystemExit as e:  # argparse's usage errors
        returncode = e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(before)
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess([str(CXRLT), *map(str, args)], returncode, out, err)


RENDEZVOUS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def cxrlt_forked(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`cxrlt ARGS` through the console script's own `main`, in a forked child of this process, from
    `cwd`, with the child's stdout and stderr (file descriptors and sys streams) in files: what
    `cxrlt(...)` gives, without paying the torch/DeepSpeed/MLflow imports again for each command. For
    one-rank commands (`--nproc 1` trains and predicts in the command's own process, which is the
    child here); a command of more ranks still starts torchrun. A child per command, as each needs a
    process group of its own (DeepSpeed keeps the first one a process saw)."""
    import multiprocessing
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cxrlt-forked-") as folder:
        out_path, err_path = Path(folder) / "stdout", Path(folder) / "stderr"

        def child() -> None:
            for key in RENDEZVOUS:
                os.environ.pop(key, None)
            os.chdir(cwd)
            for fd, path in ((1, out_path), (2, err_path)):
                file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(file, fd)
                os.close(file)
            sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 (the child's streams)
            sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:  # argparse's usage errors
                code = e.code if isinstance(e.code, int) else 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)  # nothing of pytest's (atexit, capture teardown) runs in the child

        process = multiprocessing.get_context("fork").Process(target=child)
        process.start()
        process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired(["cxrlt", *map(str, args)], timeout, err_path.read_text())
        return subprocess.CompletedProcess(
            [str(CXRLT), *map(str, args)], process.exitcode, out_path.read_text(), err_path.read_text()
        )
