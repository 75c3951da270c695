"""Errors a user can fix; the stage CLIs print their message after `error:`, with no traceback."""

import signal


class PipelineError(RuntimeError):
    """Base class: the message names the cause and the fix."""


class ParamsError(PipelineError, ValueError):
    """params.yaml is missing, unreadable or invalid."""


class DataError(PipelineError):
    """The archive or prepared arrays are missing or broken."""


class WeightsError(PipelineError):
    """ImageNet weights for the fine-tune could not be had."""


class TrackingError(PipelineError):
    """The MLflow store can't be reached or used."""


class TrainingError(PipelineError):
    """Training can't go on (device missing, out of memory)."""


class Diverged(TrainingError):
    """Training produced a non-finite loss or weights."""


class OutputError(PipelineError):
    """A stage can't write where its outputs go (read-only folder, a file in the way)."""


class Interrupted(Exception):
    """SIGINT/SIGTERM stopped the work at a point it can resume from; cli.run exits with 128 + signum.
    `cursor` (a progress.EpochCursor) is where in an epoch training stopped; None at an epoch's end."""

    def __init__(self, signum: int, cursor=None):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum
        self.cursor = cursor
