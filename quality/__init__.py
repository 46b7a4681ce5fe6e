"""Dataset validation: a Great Expectations suite per record kind, results as JSON and Data Docs."""
import logging as _logging
import os as _os
import importlib.abc
import importlib.util
import sys as _sys
import threading

_os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# Before the import: registering its expectations, GX logs hundreds of DEBUG lines.
_logging.getLogger("great_expectations").setLevel(_logging.WARNING)

# Great Expectations imports its optional Spark and SQL integrations whenever they are installed
# (pyspark is, for the Spark engine): about a quarter of its import time, for datasources the
# suites never use (they validate pandas frames). Importing it as where those extras are absent
# leaves them out; GX's own stand-ins then answer for them, as in an install without them.
# A process that has imported them already keeps them (a module in sys.modules is not looked for).
_OPTIONAL_INTEGRATIONS = ("pyspark", "sqlalchemy")
# Modules GX imports at its top for expectations the suites never run (KL divergence, KS tests):
# scipy.stats and altair, about 40% of its import time. They are loaded lazily
# (importlib.util.LazyLoader): the module is made now and runs the first time anything reads one
# of its attributes, so a process that uses them gets them whole.
_DEFERRED = ("scipy.stats", "altair")


class _ImportGuard(importlib.abc.MetaPathFinder):
    """Acts in the thread importing GX only: a command may import `quality` on a thread while its
    main thread goes on (flows/cli.py), and an import of sqlalchemy there (Prefect's) must still
    succeed. Refuses the optional integrations and defers `_DEFERRED`."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()

    def find_spec(self, name, path=None, target=None):
        if threading.get_ident() != self.thread:
            return None
        if name.partition(".")[0] in _OPTIONAL_INTEGRATIONS:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        if name in _DEFERRED:
            for finder in _sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                        spec.loader = importlib.util.LazyLoader(spec.loader)
                    return spec
        return None


_finder = _ImportGuard()
_sys.meta_path.insert(0, _finder)
try:
    import great_expectations  # noqa: E402,F401
finally:
    _sys.meta_path.remove(_finder)

from . import gx_hotpaths as _gx_hotpaths  # noqa: E402

_gx_hotpaths.install()

from .validate import ExpectationFailure, ValidationReport, validate_dataset, validate_kind  # noqa: E402,F401

__all__ = ["ExpectationFailure", "ValidationReport", "validate_dataset", "validate_kind"]
