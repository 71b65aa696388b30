"""Exceptions raised by kpipe.

Every error a user can cause derives from :class:`KpipeError`; the CLI turns
them into a one-line message and exit code 1, never a traceback.
"""

from __future__ import annotations


class KpipeError(Exception):
    """Base class of every error kpipe raises on bad input or bad state."""


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


class LoadError(KpipeError, ImportError):
    """A user object (`module:function` or `path.py:function`) that cannot be loaded."""
