"""Hostile files through ingest: truncations of real files, random bytes, wrong encodings, huge
lines, broken JSON, symlink loops, odd names. For each: no traceback, the exit code `flows run
ingest` would give is 0 or 2, and rows in = kept + rejected.

Each generated file is checked the way the CLI runs it, in process and without a Prefect server
so a few hundred fit in well under a minute: the config is loaded (`load_config`), the CLI's
preflight runs (`UsageError` is exit 2), then the ingest stage (`SourceError` is exit 2); any
other exception is a traceback and fails the test. One real `flows run ingest` over a folder of
such files checks the command itself.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from flows.cli import UsageError, _preflight, _parser
from flows.config import load_config
from schemas.dataset import StageManifest, read_manifest
from transforms import stages
from transforms.ingest.importers import SourceError

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "flows" / "sample"
REAL = {
    "book": (SAMPLE / "books" / "900-杏林撮要.txt").read_bytes(),
    "monograph": (SAMPLE / "monographs" / "常用中药六种.txt").read_bytes(),
    "instructions": (SAMPLE / "dialogues" / "tcm_dialogues.jsonl").read_bytes(),
    "text": (SAMPLE / "books" / "900-杏林撮要.txt").read_bytes()[:4000].decode("gb18030", "ignore").encode("utf-8"),
    "terms": "A01.01\t阴阳\t阴阳学说\t古代哲学概念。\nA01.02\t五行\t\t木火土金水。\n".encode("utf-8"),
}
SUFFIX = {"book": ".txt", "text": ".txt", "monograph": ".txt", "terms": ".txt", "instructions": ".jsonl"}
FORMATS = sorted(REAL)


def _decoded(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("gb18030")  # the sample book


TEXT = {fmt: _decoded(data) for fmt, data in REAL.items()}


def fast(examples: int):
    return settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)


def ingest_exit_code(folder: Path, fmt: str) -> int:
    """What `flows run ingest --config folder/c.toml --output folder/out` exits with, minus
    Prefect: 0 for a written dataset, 2 for a refused input. Anything else raises."""
    config_file = folder / "c.toml"
    config_file.write_text(
        f'[[sources]]\nname = "s"\nkind = "files"\npath = "src"\nformat = "{fmt}"\ncategory = "books"\n', encoding="utf-8"
    )
    config = load_config(config_file)
    output = folder / "out"
    args = _parser().parse_args(["run", "ingest", "--config", str(config_file), "--output", str(output)])
    try:
        _preflight(args, config)
    except UsageError:
        return 2
    sources = [{"name": s.name, "category": s.category, "path": str(s.path), "format": s.format, "encoding": s.encoding}
               for s in config.sources]
    try:
        manifest = stages.run_ingest(sources, [], output, {"min_chars": 20, "batch_rows": 512}, StageManifest(stage="ingest"))
    except SourceError as exc:
        assert "\n" not in str(exc).strip(), "a refusal is one line"
        return 2
    check_ledger(output, manifest)
    return 0


def check_ledger(output: Path, manifest: StageManifest) -> None:
    assert read_manifest(output) is not None
    for kind, rows in manifest.rows_in.items():
        assert rows == manifest.rows_kept[kind] + manifest.rows_rejected.get(kind, 0), kind
        written = output / kind
        kept = pq.read_table(written).num_rows if written.is_dir() else 0
        rejected_dir = output / "rejected" / kind
        rejected = pq.read_table(rejected_dir).num_rows if rejected_dir.is_dir() else 0
        assert kept + rejected == rows, (kind, kept, rejected, rows)


def fresh(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("hostile")
    source = folder / "src"
    source.mkdir()
    return folder, source


def run_one(tmp_path_factory, fmt: str, name: str, data: bytes) -> None:
    folder, source = fresh(tmp_path_factory)
    (source / (name + SUFFIX[fmt])).write_bytes(data)
    assert ingest_exit_code(folder, fmt) in (0, 2)


@fast(60)
@given(fmt=st.sampled_from(FORMATS), cut=st.floats(0, 1), skip=st.integers(0, 7))
def test_truncated_real_files(tmp_path_factory, fmt, cut, skip):
    """A real file cut anywhere (inside a multibyte character too), possibly from the front."""
    data = REAL[fmt]
    run_one(tmp_path_factory, fmt, "cut", data[skip:int(len(data) * cut)])


@fast(60)
@given(fmt=st.sampled_from(FORMATS), data=st.binary(max_size=3000))
def test_random_bytes(tmp_path_factory, fmt, data):
    run_one(tmp_path_factory, fmt, "noise", data)


@fast(40)
@given(fmt=st.sampled_from(FORMATS),
       encoding=st.sampled_from(["gb18030", "big5", "utf-16", "utf-16-be", "utf-32", "shift_jis", "euc-kr", "latin-1", "utf-8-sig"]),
       bom=st.sampled_from([b"", b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff"]))
def test_wrong_and_mixed_encodings(tmp_path_factory, fmt, encoding, bom):
    """Real text in another encoding than it claims (a BOM of a third one in front of it)."""
    text = TEXT[fmt]
    data = bom + text.encode(encoding, errors="replace")
    run_one(tmp_path_factory, fmt, "enc", data)


@fast(15)
@given(fmt=st.sampled_from(FORMATS), char=st.sampled_from(["黄", "a", " ", "\u3000", "\x00", "{", "\ufffd"]),
       size=st.integers(50_000, 400_000), newlines=st.booleans())
def test_huge_lines(tmp_path_factory, fmt, char, size, newlines):
    line = char * size
    data = (line + "\n" + line if newlines else line).encode("utf-8")
    run_one(tmp_path_factory, fmt, "huge", data)


JSON_BREAKS = [
    lambda s: s[: len(s) // 2],                       # cut in the middle
    lambda s: s.replace('"', "'"),                    # single quotes
    lambda s: s.replace("}", "", 1),                  # a missing brace
    lambda s: "[" * 50_000 + "]" * 50_000,            # nesting far past the recursion limit
    lambda s: '{"a": ' * 20_000 + "1" + "}" * 20_000,
    lambda s: s.replace("\n", ",\n"),                 # JSONL that is neither JSON nor JSONL
    lambda s: "\n".join(['"just a string"', "42", "null", "[]", "true", '{"messages": 3}', '{"conversations": [1, 2]}']),
    lambda s: '{"instruction": "\\ud800", "output": "\\udfff坏"}',  # lone surrogates
    lambda s: '[{"instruction": null, "input": {"x": 1}, "output": ["a", {"b": null}]}]',
    lambda s: "NaN\nInfinity\n" + s,
]


@fast(30)
@given(fmt=st.sampled_from(["instructions"]), which=st.integers(0, len(JSON_BREAKS) - 1), json_file=st.booleans())
def test_broken_json(tmp_path_factory, fmt, which, json_file):
    text = TEXT["instructions"]
    if json_file:
        text = json.dumps([json.loads(line) for line in text.splitlines() if line.strip()], ensure_ascii=False)
    folder, source = fresh(tmp_path_factory)
    (source / ("broken" + (".json" if json_file else ".jsonl"))).write_text(JSON_BREAKS[which](text), encoding="utf-8")
    assert ingest_exit_code(folder, fmt) in (0, 2)


@fast(40)
@given(fmt=st.sampled_from(["terms", "monograph", "book"]), cells=st.lists(
    st.text(alphabet=st.sampled_from(list('\t,"\n\r;|黄芪A1 ')), max_size=40), max_size=30))
def test_broken_delimited_text(tmp_path_factory, fmt, cells):
    """Tab- and comma-separated lines with stray quotes, ragged columns and CR line ends."""
    run_one(tmp_path_factory, fmt, "cells", "\t".join(cells).encode("utf-8"))


ODD_NAMES = ["-rf", " leading space", "new\nline", "tab\tname", "名字" * 40, "a" * 240, "semi;colon", "quote'\"",
             "back\\slash", "..", "dot.", "emoji😀", "\u202eevil", "CON"]


@fast(30)
@given(fmt=st.sampled_from(FORMATS), name=st.sampled_from(ODD_NAMES), raw_name=st.booleans())
def test_odd_file_names(tmp_path_factory, fmt, name, raw_name):
    folder, source = fresh(tmp_path_factory)
    if name == "..":
        name = "dotdot.."
    path = os.fsencode(source) + b"/" + (b"\xff\xfe-not-utf8" if raw_name else name.encode("utf-8")) + SUFFIX[fmt].encode()
    with open(path, "wb") as handle:
        handle.write(REAL[fmt])
    assert ingest_exit_code(folder, fmt) in (0, 2)


@pytest.mark.parametrize("fmt", FORMATS)
def test_symlink_loops_and_dangling_links(tmp_path_factory, fmt):
    folder, source = fresh(tmp_path_factory)
    (source / ("real" + SUFFIX[fmt])).write_bytes(REAL[fmt])
    (source / "loop").symlink_to(source, target_is_directory=True)           # a folder that holds itself
    (source / "deep").mkdir()
    (source / "deep" / "up").symlink_to(source, target_is_directory=True)
    (source / ("self" + SUFFIX[fmt])).symlink_to(source / ("self" + SUFFIX[fmt]))  # ELOOP
    (source / ("gone" + SUFFIX[fmt])).symlink_to(folder / "nowhere")
    assert ingest_exit_code(folder, fmt) in (0, 2)


def test_unreadable_and_empty_files(tmp_path_factory):
    for fmt in FORMATS:
        folder, source = fresh(tmp_path_factory)
        (source / ("empty" + SUFFIX[fmt])).write_bytes(b"")
        assert ingest_exit_code(folder, fmt) in (0, 2)
        if os.geteuid() != 0:  # root reads everything
            folder, source = fresh(tmp_path_factory)
            locked = source / ("locked" + SUFFIX[fmt])
            locked.write_bytes(REAL[fmt])
            locked.chmod(0)
            assert ingest_exit_code(folder, fmt) == 2


@pytest.mark.slow
def test_the_command_on_a_folder_of_hostile_files(tmp_path, prefect_home):
    """`flows run ingest` itself: one line and exit 2, or exit 0 with the ledger; never a traceback."""
    source = tmp_path / "src"
    source.mkdir()
    text = TEXT["instructions"]
    (source / "cut.jsonl").write_bytes(REAL["instructions"][: len(REAL["instructions"]) // 3])
    (source / "deep.json").write_text("[" * 50_000 + "]" * 50_000, encoding="utf-8")
    (source / "gbk.jsonl").write_bytes(text.encode("gb18030"))
    (source / "noise.jsonl").write_bytes(os.urandom(2000))
    (source / "loop").symlink_to(source, target_is_directory=True)
    (source / "stray.parquet").write_bytes(b"PAR1 not really")
    config = tmp_path / "c.toml"
    config.write_text('[[sources]]\nname = "s"\nkind = "dataset"\npath = "src"\nformat = "instructions"\ncategory = "sft"\n', encoding="utf-8")
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "PREFECT_LOGGING_LEVEL": "WARNING"}
    run = subprocess.run([sys.executable, "-m", "flows", "run", "ingest", "--config", str(config), "--output", str(tmp_path / "out")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.returncode in (0, 2), run.stderr[-3000:]
    if run.returncode == 2:
        assert [line for line in run.stderr.splitlines() if line.startswith("flows: error:")], run.stderr
    else:
        manifest = read_manifest(tmp_path / "out")
        check_ledger(tmp_path / "out", manifest)
        assert "ingest:" in run.stdout
