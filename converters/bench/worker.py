"""`python -m converters.bench.worker JOB RESULT`: run one pickled measurement (see `processes.run_fresh`)."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path


def main(job: Path, result: Path) -> None:
    function, args = pickle.loads(job.read_bytes())
    result.write_bytes(pickle.dumps(function(*args)))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
