"""Every measurement runs in a fresh Python process, so that memory peaks and loaded libraries never mix.

The parent pickles a module-level function and its arguments into a file,
`python -m converters.bench.worker` runs it and pickles the result back.
The child's environment pins numpy's BLAS to the benchmark's thread count:
OpenBLAS reads it once, when numpy is first imported.
"""

from __future__ import annotations

import os
import pickle
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

Result = TypeVar("Result")

BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")


class WorkerError(RuntimeError):
    """A measurement process failed; its traceback is on stderr above."""


def run_fresh(function: Callable[..., Result], *args, threads: int) -> Result:
    with tempfile.TemporaryDirectory(prefix="cnclip-bench-job-") as folder:
        job, result = Path(folder) / "job.pickle", Path(folder) / "result.pickle"
        job.write_bytes(pickle.dumps((function, args)))
        environment = os.environ | {name: str(threads) for name in BLAS_THREAD_VARIABLES}
        command = [sys.executable, "-m", "converters.bench.worker", str(job), str(result)]
        finished = subprocess.run(command, env=environment, check=False)
        if finished.returncode != 0:
            raise WorkerError(f"{function.__module__}.{function.__name__} failed in its process (exit {finished.returncode}); its error is above.")
        return pickle.loads(result.read_bytes())


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def peak_rss_mb() -> float:
    """This process's peak resident set since it started (getrusage; never reset)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def take_high_water_mb() -> float | None:
    """The resident peak since the last call, then reset it (Linux /proc); None where that is not possible.

    The reset also lowers what `peak_rss_mb` reports from then on: a process uses one or the other.
    """
    try:
        status = Path("/proc/self/status").read_text()
        Path("/proc/self/clear_refs").write_text("5")  # "5" resets VmHWM to the current resident set
    except OSError:
        return None
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(found.group(1)) / 2**10 if found else None
