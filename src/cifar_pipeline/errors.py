"""Errors a user can fix; the stage CLIs print their message after `error:`, with no traceback."""


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
