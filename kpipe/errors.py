"""Exceptions raised by kpipe.

Every error a user can cause derives from :class:`KpipeError`; the CLI turns
them into a one-line message and exit code 1, never a traceback.
"""

from __future__ import annotations


class KpipeError(Exception):
    """Base class of every error kpipe raises on bad input or bad state."""


class ArgumentError(KpipeError, ValueError):
    """An invalid argument value at the API boundary (the message names the argument)."""


class SamplingError(ArgumentError):
    """An invalid sampling configuration (mode, balance, distribution, sizes)."""


class WeightError(ArgumentError):
    """An invalid weight: unknown class key, negative / NaN / infinite value,
    missing per-sample weights, or weights given twice."""


class InputError(KpipeError, ValueError):
    """Raw input that cannot be prepared: missing, empty, or inconsistent."""


class SplitError(KpipeError, ValueError):
    """A partition that cannot be made, e.g. a class too small to stratify."""


class ManifestError(KpipeError, ValueError):
    """A manifest that is missing, unreadable, or fails validation."""


class StoreError(KpipeError, OSError):
    """A storage file that cannot be read or written (names file and ID)."""


class SampleNotFoundError(KpipeError, KeyError):
    """A sample ID that the store or manifest does not hold."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it plain.
        return str(self.args[0]) if self.args else ""


class OutputExistsError(KpipeError, FileExistsError):
    """An output folder that exists already and would be overwritten."""


class OutputWriteError(StoreError):
    """An output that cannot be written (no space left on the device, a read-only or forbidden folder): the
    environment's fault, never an input's; the message names the file. A `StoreError`, as every error about a
    storage file."""


class LoadError(KpipeError, ImportError):
    """A user object (`module:function` or `path.py:function`) that cannot be loaded."""


class TransformError(KpipeError, RuntimeError):
    """The user's ``transform`` raised (or returned something else than a batch).

    The message names the batch index, the epoch and the sample IDs; the
    original exception is the ``__cause__``, also when the batch was made in
    a worker process (it travels with the error when it pickles, else as a
    `RuntimeError` quoting it).
    """

    def __reduce__(self):
        cause = self.__cause__
        if cause is not None:
            import pickle

            try:
                pickle.dumps(cause)
            except Exception:
                cause = RuntimeError(f"{type(cause).__name__}: {cause}")
        return _rebuild_with_cause, (type(self), self.args, cause)


class WorkerError(KpipeError, RuntimeError):
    """A worker process making batches died (a signal, ``os._exit``, a native crash, the OOM killer)."""


def _rebuild_with_cause(cls: type[BaseException], args: tuple, cause: BaseException | None) -> BaseException:
    error = cls(*args)
    error.__cause__ = cause
    return error

