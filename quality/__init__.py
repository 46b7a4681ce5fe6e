"""Dataset validation: a Great Expectations suite per record kind, results as JSON and Data Docs."""
import logging as _logging
import os as _os
import sys as _sys

_os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# Before the import: registering its expectations, GX logs hundreds of DEBUG lines.
_logging.getLogger("great_expectations").setLevel(_logging.WARNING)

# Great Expectations imports its optional Spark and SQL integrations whenever they are installed
# (pyspark is, for the Spark engine): about a quarter of its import time, for datasources the
# suites never use (they validate pandas frames). Importing it as where those extras are absent
# leaves them out; GX's own stand-ins then answer for them, as in an install without them.
# A process that has imported them already keeps them.
_OPTIONAL_INTEGRATIONS = ("pyspark", "sqlalchemy")
_left_out = [name for name in _OPTIONAL_INTEGRATIONS if name not in _sys.modules]
for _name in _left_out:
    _sys.modules[_name] = None  # an import of it raises ImportError while GX is imported
try:
    import great_expectations  # noqa: E402,F401
finally:
    for _name in _left_out:
        if _name in _sys.modules and _sys.modules[_name] is None:
            del _sys.modules[_name]

from .validate import ExpectationFailure, ValidationReport, validate_dataset, validate_kind  # noqa: E402,F401

__all__ = ["ExpectationFailure", "ValidationReport", "validate_dataset", "validate_kind"]
