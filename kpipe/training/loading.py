"""Load user objects named ``module:attr`` or ``path/to/file.py:attr``.

Only names the user gave (the command line, a ``--config`` file, the Python
API) reach `load_object`; a run folder or a manifest never names code that
kpipe imports (see `kpipe.training.config`), and a saved `FunctionLoss`
imports its code only if this process loaded it already (`is_loaded`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from kpipe.errors import LoadError

_LOADED: set[str] = set()  # specs this process imported because a user named them


def is_loaded(spec: str) -> bool:
    """True if ``spec`` was loaded by `load_object` in this process (the user named it)."""
    return spec in _LOADED


def is_object_spec(text: str) -> bool:
    """True if ``text`` looks like ``module:attr`` or ``file.py:attr``."""
    return isinstance(text, str) and ":" in text and not text.startswith(":") and not text.endswith(":")


def load_object(spec: str, *, what: str = "object") -> Any:
    """Import the object named by ``spec``.

    Args:
        spec: ``"package.module:name"`` (imported from ``sys.path``) or
            ``"path/to/file.py:name"`` (loaded from the file). ``name`` may be
            dotted (``"module:Class.method"``).
        what: What the object is for, used in error messages (e.g. ``"loss"``).

    Returns:
        The object.

    Raises:
        LoadError: If the module or file cannot be imported or has no such name.

    Example:
        >>> load_object("my_losses.py:focal", what="loss")
    """
    if not is_object_spec(spec):
        raise LoadError(
            f"The {what} must be given as `module:name` or `path/to/file.py:name`. Received: {spec!r}"
        )
    module_part, _, attr = spec.rpartition(":")
    if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
        path = Path(module_part)
        if not path.is_file():
            raise LoadError(f"The {what} file {path} does not exist. Received: {spec!r}")
        name = f"kpipe_user_{path.stem}_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise LoadError(f"Cannot load {path} as a Python file (for the {what} {spec!r}).")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # so that pickling and Keras deserialization can find it
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(name, None)
            raise LoadError(f"Importing {path} (for the {what} {spec!r}) failed: {type(e).__name__}: {e}") from e
    else:
        try:
            module = importlib.import_module(module_part)
        except ImportError as e:
            raise LoadError(
                f"Cannot import module {module_part!r} for the {what} {spec!r}: {e}. "
                "Is it on PYTHONPATH? A file path like path/to/file.py:name also works."
            ) from e
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise LoadError(f"{module_part} has no attribute {attr!r} (the {what} {spec!r}).")
        obj = getattr(obj, part)
    _LOADED.add(spec)
    return obj
