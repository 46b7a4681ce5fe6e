"""Dataset validation: a Great Expectations suite per record kind, results as JSON and Data Docs."""
from .validate import ExpectationFailure, ValidationReport, validate_dataset, validate_kind  # noqa: F401

__all__ = ["ExpectationFailure", "ValidationReport", "validate_dataset", "validate_kind"]
