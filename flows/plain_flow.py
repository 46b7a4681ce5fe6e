"""`flow`: Prefect's flow decorator for this package's flows, whose parameters are plain JSON
values (paths as strings, lists of them, flags, None).

Prefect stores a flow run's parameters as JSON, encoded by FastAPI's `jsonable_encoder`, which
it imports on a command's first flow run: FastAPI and its OpenAPI models, about 0.15 CPU-s of a
command that needs nothing else of FastAPI. For parameters of exact JSON types that encoder
returns the same values, so a `PlainParameterFlow` copies them itself and leaves any other
value (a Path, a model, a subclass of str) to Prefect's own encoding.
"""
from __future__ import annotations

from typing import Any, Callable

from prefect.flows import Flow

_SCALARS = (str, int, float, bool, type(None))


def plain_json(value: Any) -> bool:
    """Whether `value` is made only of exact JSON types: str, int, float, bool, None, and lists
    and str-keyed dicts of them (a subclass, a tuple, a Path is not)."""
    kind = type(value)
    if kind in _SCALARS:
        return True
    if kind is list:
        return all(plain_json(item) for item in value)
    if kind is dict:
        return all(type(key) is str and plain_json(item) for key, item in value.items())
    return False


def _copied(value: Any) -> Any:
    if type(value) is list:
        return [_copied(item) for item in value]
    if type(value) is dict:
        return {key: _copied(item) for key, item in value.items()}
    return value


class PlainParameterFlow(Flow):
    """A Prefect flow whose plain JSON parameters are stored without FastAPI's encoder."""

    def serialize_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        if self.ismethod or self.isclassmethod or not all(plain_json(value) for value in parameters.values()):
            return super().serialize_parameters(parameters)
        return {key: _copied(value) for key, value in parameters.items()}


def flow(**options: Any) -> Callable[[Callable], PlainParameterFlow]:
    """`@flow(name=..., description=..., on_failure=...)`, as Prefect's `@flow(...)` with
    keyword options, making a `PlainParameterFlow`."""
    return lambda fn: PlainParameterFlow(fn=fn, **options)
