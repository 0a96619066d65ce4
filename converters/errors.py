"""Errors meant for the person at the keyboard.

Every failure a user can cause (a bad path, a bad config, a broken
checkpoint, a tolerance not met) is raised as a `UserError`: the CLI prints
its message as one paragraph and exits non-zero, without a traceback unless
`--debug` is given. Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A failure the user can fix; the message says what, where and how."""

    exit_code = 2


class ConfigError(UserError):
    """A config file is missing, malformed or fails validation."""


class CheckpointError(UserError):
    """A checkpoint cannot be found, read or fitted to the architecture."""


class ArtifactError(UserError):
    """An artifact on disk is missing, changed or unusable."""


class ConversionError(UserError):
    """A converter (exporter, simplifier, quantizer, pnnx) failed.

    `log` is (file name, text) of the converter's whole log, which the pipeline
    keeps in the bundle's `logs/` folder for the user to read.
    """

    def __init__(self, message: str, log: tuple[str, str] | None = None):
        super().__init__(message)
        self.log = log


class ParityError(UserError):
    """Parity was measured and at least one tolerance is not met."""

    exit_code = 3


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where Ctrl-C would be so that the same clean-up runs; exits 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
