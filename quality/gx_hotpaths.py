"""Two of Great Expectations' hot paths with the work they repeat done once: an Expectation's
kwarg lookups, and the conversion of plain Python values to JSON-ready ones.

Kwarg lookups. GX 1.24's `Expectation` looks up each of its domain, success and runtime keys in
`self.configuration`, a property that builds the configuration anew on every read: a pydantic
`dict()` of the expectation, a regular expression over its class name, a new
`ExpectationConfiguration`. Building a validation graph asks for the kwargs of every metric of
every expectation, so a validation read each expectation's configuration about sixty times
(13,585 reads for the 14 validations of the embedded sample build, the largest fixed cost of a
validation). The replacements are GX's own four lookup methods, except that each call reads the
configuration once and looks every key up in that one copy; the class-name conversion is
memoised (a function of the name alone).

JSON conversion. Every metric of the graph is identified by `IDDict.to_id`, which passes its
kwargs through `great_expectations.util.convert_to_json_serializable`; that function tries a
dozen types (numpy's among them) before it reaches `None`, the most common value there, and
results pass through it again to become JSON. `convert_to_json_serializable` below answers for
None, str, int, bool, float, and plain dicts, lists, tuples and sets of them, as GX's function does
(a NaN float becomes None, dict keys become strings, a tuple or set a list), and hands every
other value to GX's function.

Neither changes a result: reading the configuration does not change the expectation, and the
conversion returns what GX's returns (tests/test_quality.py compares both with GX's own on
every suite). `install()` puts them in place for the GX release they were written from
(`GX_VERSION`, the version pyproject.toml pins); another release keeps its own code.
"""
from __future__ import annotations

import functools
import logging
import sys
from typing import Any, Optional

import great_expectations
import great_expectations.expectations.expectation as _expectation_module
import great_expectations.util as _gx_util
from great_expectations.expectations.expectation import Expectation, parse_result_format

log = logging.getLogger(__name__)

GX_VERSION = "1.24.1"

# GX's own code, kept to compare with and for `uninstall`.
ORIGINAL = {
    name: Expectation.__dict__[name]
    for name in ("_get_domain_kwargs", "_get_success_kwargs", "_get_success_kwarg", "_get_runtime_kwargs")
}
ORIGINAL_CAMEL_TO_SNAKE = _gx_util.camel_to_snake
ORIGINAL_CONVERT = _gx_util.convert_to_json_serializable
_patched_modules: list[str] = []


def _domain_kwargs(expectation: Expectation, kwargs: dict) -> dict[str, Optional[str]]:
    # Every domain key is in the result, so GX's check for missing ones never fires.
    return {key: kwargs.get(key, expectation._get_default_value(key)) for key in expectation.domain_keys}


def _success_kwargs(expectation: Expectation, kwargs: dict) -> dict[str, Any]:
    domain_kwargs = _domain_kwargs(expectation, kwargs)
    success_kwargs = {key: kwargs.get(key, expectation._get_default_value(key)) for key in expectation.success_keys}
    success_kwargs.update(domain_kwargs)
    return success_kwargs


def _success_kwarg(expectation: Expectation, kwargs: dict, key: str, default: Any = None) -> Any:
    if key in kwargs:
        return kwargs[key]
    field = expectation.__fields__.get(key)
    if field is not None:
        return field.default if not field.required else default
    log.warning('_get_success_kwarg called with key "%s", but it is not a known field of %s', key, type(expectation).__name__)
    return default


def _get_domain_kwargs(self: Expectation) -> dict[str, Optional[str]]:
    return _domain_kwargs(self, self.configuration.kwargs)


def _get_success_kwargs(self: Expectation) -> dict[str, Any]:
    return _success_kwargs(self, self.configuration.kwargs)


def _get_success_kwarg(self: Expectation, key: str, default: Any = None) -> Any:
    return _success_kwarg(self, self.configuration.kwargs, key, default)


def _get_runtime_kwargs(self: Expectation, runtime_configuration: Optional[dict] = None) -> dict:
    runtime_configuration = runtime_configuration or {}
    kwargs = self.configuration.kwargs
    # A subclass that overrides a lookup keeps its own, as GX's method would call it.
    cls = type(self)
    if cls._get_success_kwargs is _get_success_kwargs:
        success_kwargs = _success_kwargs(self, kwargs)
    else:
        success_kwargs = self._get_success_kwargs()
    if cls._get_success_kwarg is _get_success_kwarg:
        runtime_kwargs = {key: runtime_configuration.get(key, _success_kwarg(self, kwargs, key)) for key in self.runtime_keys}
    else:
        runtime_kwargs = {key: runtime_configuration.get(key, self._get_success_kwarg(key)) for key in self.runtime_keys}
    runtime_kwargs.update(success_kwargs)
    runtime_kwargs["result_format"] = parse_result_format(runtime_kwargs["result_format"])
    return runtime_kwargs


KWARG_LOOKUPS = {
    "_get_domain_kwargs": _get_domain_kwargs,
    "_get_success_kwargs": _get_success_kwargs,
    "_get_success_kwarg": _get_success_kwarg,
    "_get_runtime_kwargs": _get_runtime_kwargs,
}


def convert_to_json_serializable(data: Any) -> Any:
    """GX's `convert_to_json_serializable`, answering at once for plain values (exact types only:
    a subclass, an Enum, a numpy or pandas value goes to GX's function)."""
    kind = type(data)
    if data is None or kind is str or kind is int or kind is bool:
        return data
    if kind is float:
        return None if data != data else data  # NaN
    if kind is dict:
        return {str(key): convert_to_json_serializable(value) for key, value in data.items()}
    if kind is list or kind is tuple or kind is set:
        return [convert_to_json_serializable(value) for value in data]
    return ORIGINAL_CONVERT(data)


def install() -> bool:
    """Put the lookups and the conversion above in place of GX's; True when installed (GX is
    `GX_VERSION`). The conversion replaces GX's in every GX module imported so far that holds it
    (GX's own recursion included); a module imported later keeps GX's."""
    if great_expectations.__version__ != GX_VERSION:
        log.debug("Great Expectations %s is not %s: its own hot paths are kept", great_expectations.__version__, GX_VERSION)
        return False
    for name, method in KWARG_LOOKUPS.items():
        setattr(Expectation, name, method)
    _expectation_module.camel_to_snake = functools.lru_cache(maxsize=None)(ORIGINAL_CAMEL_TO_SNAKE)
    for name, module in list(sys.modules.items()):
        if name.partition(".")[0] == "great_expectations" and getattr(module, "convert_to_json_serializable", None) is ORIGINAL_CONVERT:
            module.convert_to_json_serializable = convert_to_json_serializable
            _patched_modules.append(name)
    return True


def uninstall() -> None:
    """GX's own code back in place."""
    for name, method in ORIGINAL.items():
        setattr(Expectation, name, method)
    _expectation_module.camel_to_snake = ORIGINAL_CAMEL_TO_SNAKE
    for name in _patched_modules:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "convert_to_json_serializable", None) is convert_to_json_serializable:
            module.convert_to_json_serializable = ORIGINAL_CONVERT
    _patched_modules.clear()
