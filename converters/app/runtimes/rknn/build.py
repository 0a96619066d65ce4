"""Canonical .rknn builds: the same inputs give the same bytes, so a shipped file can be proven. Torch-free.

rknn-toolkit2 writes host heap and stack pointers (and stale heap bytes) into the .rknn, so two plain builds of
one model differ in about 1,000 bytes (rk3588). A build is canonical when everything that moves the process's
memory layout is fixed (the issue-24 spike, FINDINGS §2): ASLR off (`setarch -R`), an empty environment but for
fixed PATH/HOME/LANG/TMPDIR and PYTHONHASHSEED=0, one fixed folder (CANONICAL_DIR) holding the toolkit's
environment under a fixed link, the worker, the ONNX and the calibration inputs under fixed names,
deterministic temporary file names (worker.py), malloc filling what it hands out (MALLOC_PERTURB_), and a
stopped clock (libfaketime, from the environment's pip: revision 2). Then rebuilds were byte-identical on rk3588,
rk3568 and rk3566 (18 of 18 in the spike, tiny towers), not on rk3576 (3 of 6 differed): `REPRODUCIBLE`. The
clock matters at full size: the toolkit's timings change what it allocates, so the stale heap pointers it writes
(130 bytes of RN50's int8 visual file) moved, and five rebuilds gave four different files; with the clock stopped
by the environment's library, five of five were alike (2026-12-06, AMD EPYC, random weights). The simulator runs
only a model built in the same process, so the worker that built a file is the one that simulates it.

The proof holds within one toolkit environment, not across two: three environments made by the same recipe on
one machine gave three different (each self-consistent) builds of the tiny tower (2026-12-06). A bundle converted
on another machine is therefore refused by the simulator runner here, with advice to convert again.
"""

from __future__ import annotations

import json
import shutil
from collections import OrderedDict
from pathlib import Path

import numpy as np
from filelock import FileLock

from converters.app.runtimes.rknn.env import FAKETIME_LIBRARY, RKNN_ENV
from converters.app.runtimes.tool_worker import PipeWorker

HERE = Path(__file__).resolve().parent
CANONICAL_DIR = Path("/tmp/cnclip-rknn-build")
REPRODUCIBLE = frozenset({"rk3588", "rk3568", "rk3566"})
CALIBRATION_LIST = "dataset.txt"


class RknnWorker(PipeWorker):
    """One worker process of the rknn-toolkit2 environment (requests as in worker.py), in `folder`."""

    def __init__(self, folder: Path, canonical: bool, build: str | None = None):
        python = RKNN_ENV.python()
        for script in (HERE / "worker.py", HERE.parent / "worker_protocol.py"):
            shutil.copyfile(script, folder / script.name)
        # The toolkit leaves a temporary folder per build (its check.rknn, 9 MB for a tiny tower) that it never
        # removes: under the worker's folder, they go when the folder does, not pile up in /tmp.
        (folder / "tmp").mkdir()
        if canonical:
            # The environment under a fixed path too: its prefix is in every module path the toolkit touches.
            (folder / "env").symlink_to(python.parent.parent)
            command = ["setarch", "x86_64", "-R", str(folder / "env" / "bin" / "python"), "worker.py", build]
            env = {"PATH": "/usr/bin:/bin", "HOME": str(folder), "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
                   "OMP_NUM_THREADS": "1", "TMPDIR": str(folder / "tmp"),
                   # malloc fills what it hands out with one byte: the compiler copies uninitialized heap into
                   # the file, whose stale contents otherwise vary from run to run (ViT-B-16's text tower:
                   # 1,967 bytes differed between rebuilds).
                   "MALLOC_PERTURB_": "85",
                   # A clock stopped at one moment (no "@": not a start time from which it runs on).
                   "LD_PRELOAD": str(folder / "env" / FAKETIME_LIBRARY), "FAKETIME": "2000-01-01 00:00:00"}
        else:
            command, env = [str(python), "worker.py"], RKNN_ENV.process_env() | {"TMPDIR": str(folder / "tmp")}
        super().__init__(RKNN_ENV, command, env, _describe, cwd=folder)
        self.folder = folder

    def build(self, spec: dict) -> dict:
        return self.ask({"build": spec})[0]

    def layers(self, spec: dict) -> list[str]:
        return self.ask({"layers": spec})[0]["layers"]

    def run(self, array: np.ndarray) -> np.ndarray:
        return self.ask({"run": True}, input=array)[1]["output"]

    def analyse(self, sample: np.ndarray, output_dir: Path) -> Path:
        """accuracy_analysis on one sample; its per-layer table."""
        np.save(self.folder / "analysed.npy", sample)
        self.ask({"analyse": ["analysed.npy"], "output_dir": str(output_dir)})
        return output_dir / "error_analysis.txt"


def _describe(request: dict) -> str:
    if "build" in request:
        return f"building a .rknn for {request['build']['platform']}"
    if "layers" in request:
        return "listing the layers hybrid quantization can keep"
    if "run" in request:
        return "simulating the model"
    return f"answering {request}"


def stage_inputs(folder: Path, onnx_files: list[Path], calibration: np.ndarray | None) -> None:
    """The ONNX (and its external data) and the calibration inputs (one .npy each, in the ONNX layout), under
    fixed names, and the list the toolkit reads them from."""
    for file in onnx_files:
        shutil.copyfile(file, folder / file.name)
    if calibration is not None:
        (folder / "calibration").mkdir()
        names = [f"calibration/{index:04d}.npy" for index in range(len(calibration))]
        for name, sample in zip(names, calibration):
            np.save(folder / name, sample[None])
        (folder / CALIBRATION_LIST).write_text("".join(f"{name}\n" for name in names))


def canonical_build(spec: dict, onnx_files: list[Path], calibration: np.ndarray | None,
                    into: Path) -> tuple[RknnWorker, dict]:
    """Build `spec` canonically; the file is copied to `into`. Returns the worker (it can simulate the model)
    and its answer (sha256, description)."""
    with FileLock(CANONICAL_DIR.with_name(CANONICAL_DIR.name + ".lock")):
        shutil.rmtree(CANONICAL_DIR, ignore_errors=True)
        CANONICAL_DIR.mkdir()
        stage_inputs(CANONICAL_DIR, onnx_files, calibration)
        request = {**spec, "verbose": False} | ({"dataset": CALIBRATION_LIST} if spec["quantize"] else {})
        (CANONICAL_DIR / "build.json").write_text(json.dumps(request, sort_keys=True))
        worker = RknnWorker(CANONICAL_DIR, canonical=True, build="build.json")
        try:
            answer = worker.answer({"build": request})[0]
            into.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(CANONICAL_DIR / "model.rknn", into)
        except BaseException:
            worker.close()
            raise
    _remember(answer["sha256"], worker)
    return worker, answer


# Workers whose build was just made (by sha256 of the file), for the runner that simulates that file next (the
# float fallback's trials, parity right after a conversion): it need not rebuild what this process just built.
_BUILT: OrderedDict[str, RknnWorker] = OrderedDict()
KEEP_BUILT = 2


def _remember(sha256: str, worker: RknnWorker) -> None:
    _BUILT[sha256] = worker
    while len(_BUILT) > KEEP_BUILT:
        _BUILT.popitem(last=False)[1].close()


def adopt(sha256: str) -> RknnWorker | None:
    """The live worker that built the file with this sha256 in this process, handed over once."""
    worker = _BUILT.pop(sha256, None)
    return worker if worker is not None and worker.process.poll() is None else None
