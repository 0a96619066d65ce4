"""One worker process of a vendor toolkit's environment, driven over a pipe (`worker_protocol`). Torch-free.

tpu-mlir's and rknn-toolkit2's workers speak the same protocol; what differs (the command, its environment
and folder, how a request is named in an error) is given by the caller.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np

from converters.app.runtimes.worker_protocol import encode, read_message
from converters.app.tool_env import ToolEnv
from converters.errors import ArtifactError, UserError


class PipeWorker:
    """A context manager; also stopped when dropped or at exit."""

    def __init__(self, tool: ToolEnv, command: list[str], env: dict[str, str], describe: Callable[[dict], str],
                 cwd: Path | None = None):
        self.tool, self.describe = tool, describe
        # The toolkit's chatter goes to a file: a pipe nobody reads would fill and stall the worker.
        self.log = tempfile.TemporaryFile()
        try:
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                            env=env, cwd=cwd)
        except OSError as error:
            raise UserError(f"Cannot start the {tool.name} environment's worker {command[0]} ({error}). "
                            f"{tool.rebuild_hint()}") from None
        self._stop = weakref.finalize(self, _stop, self.process)

    def ask(self, request: dict, **arrays: np.ndarray) -> tuple[dict, dict[str, np.ndarray]]:
        """The worker's answer to one request; an ArtifactError if it reports a failure or dies."""
        return self.answer(request, encode({"request": request}, arrays))

    def answer(self, request: dict, message: bytes = b"") -> tuple[dict, dict[str, np.ndarray]]:
        """Send `message` (none: the worker was given `request` when started) and read the answer to `request`."""
        try:
            if message:
                self.process.stdin.write(message)
                self.process.stdin.flush()
            answer = read_message(self.process.stdout)
            if answer is None:
                raise EOFError("the worker closed its output")
        except BaseException as error:
            # Whatever broke the exchange (a dead worker, a cut message, Ctrl-C), its answer can no longer be
            # told from the next one's: the worker is stopped, never asked again.
            self.close()
            if not isinstance(error, Exception):
                raise
            raise ArtifactError(
                f"The {self.tool.name} worker stopped while {self.describe(request)}. Its last output:\n"
                f"{self.output_tail()}\nIf {self.tool.name} itself fails to start, {self.tool.rebuild_hint()}"
            ) from None
        response = json.loads(str(answer.pop("response")))
        if "error" in response:
            raise ArtifactError(f"{self.tool.name} failed while {self.describe(request)}: {response['error']}")
        return response, answer

    def output_tail(self, lines: int = 15) -> str:
        self.log.seek(0)
        return "\n".join(self.log.read().decode(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        self._stop()

    def __enter__(self) -> "PipeWorker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()
