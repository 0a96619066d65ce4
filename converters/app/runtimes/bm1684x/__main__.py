"""`python -m converters.app.runtimes.bm1684x` (what `make sophgo-env` runs): make tpu-mlir's environment, once."""

import sys

from converters.app.runtimes.bm1684x.env import create
from converters.errors import UserError

if __name__ == "__main__":  # not on import (the app side's import test walks every module)
    try:
        print(create())
    except UserError as error:
        sys.exit(f"error: {error}")
