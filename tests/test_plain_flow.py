"""The flows' parameters are stored as Prefect's own encoder stores them, without importing
FastAPI for plain JSON values."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prefect.flows import Flow

from flows.plain_flow import PlainParameterFlow, plain_json

ROOT = Path(__file__).resolve().parents[1]


def _body(inputs: list, output, config=None, engine=None, options=None) -> None:
    return None


def test_parameters_serialize_as_prefects_encoder_does():
    plain = PlainParameterFlow(fn=_body, name="plain")
    stock = Flow(fn=_body, name="stock")
    cases = [
        {"inputs": ["/data/a", "/data/b"], "output": "out", "config": None, "engine": "local", "options": {"n": 3, "x": 0.5, "on": True}},
        {"inputs": [], "output": "", "config": None, "engine": None, "options": {"nested": [{"a": [1, None]}]}},
        # Not plain: Prefect's encoder decides (a Path becomes its string, a tuple a list).
        {"inputs": (Path("/data/a"),), "output": Path("out"), "config": None, "engine": None, "options": None},
    ]
    for parameters in cases:
        assert plain.serialize_parameters(parameters) == stock.serialize_parameters(parameters)
    copied = plain.serialize_parameters(cases[0])
    assert copied["inputs"] is not cases[0]["inputs"], "the stored lists are copies, as the encoder's are"
    assert plain_json(cases[0]["options"]) and not plain_json(cases[2]["inputs"]) and not plain_json({1: "a"})


def test_plain_parameters_leave_fastapi_unimported(tmp_path):
    script = tmp_path / "serialize.py"
    script.write_text(
        "import sys\n"
        "from flows.stages.clean import clean_flow\n"
        "from flows.build import build_corpus\n"
        "print(type(clean_flow).__name__, type(build_corpus).__name__)\n"
        "clean_flow.serialize_parameters({'inputs': ['in'], 'output': 'out', 'config': None, 'engine': None})\n"
        "print('fastapi' in sys.modules)\n",
        encoding="utf-8",
    )
    out = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.split()
    assert out == ["PlainParameterFlow", "PlainParameterFlow", "False"]
