"""Where a vendor toolkit's own environment is, and how its processes are started.

Vendor toolkits (tpu-mlir for Sophgo, rknn-toolkit2 for Rockchip) pin Python versions and libraries none of
which can live beside this project's own, so each gets a virtualenv of its own, outside any clone, keyed by
its version and the revision of its install steps (`~/.cache/cnclip/<name>/<version>[-rev<n>]`, or the folder its
override variable names), used only through
subprocesses: nothing of it is imported here. Its recipe lives on the export side
(`converters.export.tool_env`); this side only finds it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from converters.errors import UserError

# Written first and last by a recipe: a folder with the first and not the second is an interrupted build.
STARTED_MARK, COMPLETE_MARK = ".cnclip-recipe", ".complete"


@dataclass(frozen=True)
class ToolEnv:
    name: str  # the toolkit: its folder under ~/.cache/cnclip
    version: str
    override: str  # the environment variable that names another folder for it
    make: str  # the command that makes it
    cost: str  # what making it takes, for the message that says it is missing
    # tpu-mlir builds shell commands from its own install path without quoting them.
    refuses_spaces: bool = False
    # Raised when what its install steps put in the environment changes: one made before is then not used.
    revision: int = 1

    @property
    def key(self) -> str:
        """Its folder's name under ~/.cache/cnclip/<name>, and its completion mark's: the version, and the revision
        after the first."""
        return self.version if self.revision == 1 else f"{self.version}-rev{self.revision}"

    def root(self) -> Path:
        override = os.environ.get(self.override)
        root = Path(override) if override else Path.home() / ".cache" / "cnclip" / self.name / self.key
        if self.refuses_spaces and " " in str(root.absolute()):
            raise UserError(f"{self.name} cannot run from a path with spaces ({root}); set {self.override} to another.")
        return root

    def python(self) -> Path:
        """The environment's Python, or a UserError saying how to make it."""
        root = self.root()
        mark = root / COMPLETE_MARK
        if not mark.is_file():
            raise UserError(
                f"The {self.name} {self.version} tool environment is not installed at {root}. Run `{self.make}` to "
                f"make it there ({self.cost}), or set {self.override} to the folder it should be made in or was made in."
            )
        made_for = mark.read_text().split()
        if made_for != [self.name, self.key]:
            raise UserError(f"The {self.name} environment at {root} was made for {' '.join(made_for)}, not {self.key} "
                            f"(another revision of its install steps). {self.rebuild_hint()}")
        return root / "bin" / "python"

    def process_env(self) -> dict[str, str]:
        """The environment its processes run in: ours, without anything that points Python at this project."""
        return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}

    def rebuild_hint(self) -> str:
        return f"Remove it (rm -rf {self.root()}) and run `{self.make}` again."
