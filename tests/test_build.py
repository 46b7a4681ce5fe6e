"""The whole path: `flows run build-corpus` on the embedded sample and on a slice of the shared
data, the contracts of every stage's output, resuming after a crash, and one-line errors."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from schemas import CATEGORIES, CORPUS_SCHEMA, ROLES
from schemas.dataset import read_manifest

pytestmark = pytest.mark.slow
STAGE_FOLDERS = ("crawl", "ingest", "clean", "select", "dedup", "decontaminate", "convert", "validate", "export")


def flows_cli(*args, prefect_home, cwd=None, timeout=400):
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "PREFECT_LOGGING_LEVEL": "WARNING"}
    return subprocess.run(
        [sys.executable, "-m", "flows", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout
    )


def check_ledgers(workdir: Path) -> dict:
    """Every stage: rows in + rows made = rows kept + rows rejected, per record kind; returns the
    manifests."""
    manifests = {}
    for folder in [*(workdir / "stages").iterdir(), workdir / "corpus"]:
        manifest = read_manifest(folder)
        assert manifest is not None, f"{folder} has no manifest"
        for kind in {*manifest.rows_in, *manifest.rows_made}:
            made = manifest.rows_made.get(kind, 0)
            assert manifest.rows_in.get(kind, 0) + made == manifest.rows_kept[kind] + manifest.rows_rejected.get(kind, 0), (folder.name, kind)
        rejected = folder / "rejected"
        for kind, n in manifest.rows_rejected.items():
            if n:
                table = pq.read_table(rejected / kind)
                assert table.num_rows == n
                assert all(table.column("reason").to_pylist()), "every rejected row has a reason"
        manifests[manifest.stage] = manifest
    return manifests


def check_corpus(corpus: Path) -> pd.DataFrame:
    manifest = json.loads((corpus / "_corpus_manifest.json").read_text(encoding="utf-8"))
    shards = sorted(corpus.glob("part-*.parquet"))
    assert [s["path"] for s in manifest["shards"]] == [s.name for s in shards]
    for shard, entry in zip(shards, manifest["shards"]):
        assert hashlib.sha256(shard.read_bytes()).hexdigest() == entry["sha256"]
        assert pq.read_metadata(shard).num_rows == entry["rows"]
    table = pq.read_table(shards)
    assert table.schema.names == CORPUS_SCHEMA.names
    frame = pd.concat([pd.read_parquet(s) for s in shards], ignore_index=True)
    assert len(frame) == manifest["rows"] == table.num_rows
    assert list(frame["position"]) == list(range(len(frame)))
    assert frame["id"].is_unique
    assert set(frame["category"]) <= set(CATEGORIES)
    assert sum(manifest["counts"]["category"].values()) == len(frame)
    for row in frame.itertuples():
        if row.format == "chat":
            roles = [m["role"] for m in row.messages]
            assert set(roles) <= set(ROLES) and roles[-1] == "assistant"
            assert all(m["content"] for m in row.messages)
        else:
            assert row.format == "text" and row.text
    return frame


def test_build_corpus_on_the_embedded_sample(tmp_path, prefect_home):
    workdir = tmp_path / "build"
    run = flows_cli("run", "build-corpus", "--workdir", str(workdir), prefect_home=prefect_home)
    assert run.returncode == 0, run.stderr[-3000:]
    manifests = check_ledgers(workdir)
    assert set(manifests) >= {"crawl", "ingest", "clean", "select", "dedup", "decontaminate", "convert", "sample", "validate"}
    frame = check_corpus(workdir / "corpus")
    assert {"web", "books", "encyclopedia", "sft"} <= set(frame["category"])
    assert {"chat", "text"} == set(frame["format"])
    # The sample site had a traditional page, a robots-blocked folder and a dead link.
    assert manifests["crawl"].rows_rejected.get("pages", 0) >= 1
    assert manifests["convert"].stats["conversations_from_documents"] > 0
    assert manifests["decontaminate"].rows_rejected.get("documents", 0) >= 1, "the planted exam item is found"
    assert (workdir / "stages" / "export" / "sharegpt.jsonl").is_file()
    assert "corpus:" in run.stdout
    pages = pq.read_table(workdir / "stages" / "crawl" / "pages").to_pylist()
    assert all(p["url"].startswith("site-dir://sample-site/") and p["fetched_at"] is None for p in pages), pages[0]["url"]

    # A second clean build of the same config writes the same bytes: no port, no clock in a shard.
    # It runs in its own work folder while the next two commands run in the first one (commands
    # share the local server; the two folders share nothing).
    def digests(work: Path) -> dict:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((work / "corpus").glob("part-*.parquet"))}

    built = digests(workdir)
    twin = tmp_path / "twin"
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "PREFECT_LOGGING_LEVEL": "WARNING"}
    rebuilding = subprocess.Popen([sys.executable, "-m", "flows", "run", "build-corpus", "--workdir", str(twin)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        again = flows_cli("run", "build-corpus", "--workdir", str(workdir), prefect_home=prefect_home)
        assert again.returncode == 0, again.stderr[-3000:]
        assert again.stdout.count("skipped") >= 8, again.stdout

        # A refresh from the shell: the same sources again add nothing new to the build.
        refresh = flows_cli("run", "refresh", "--workdir", str(workdir), prefect_home=prefect_home)
        assert refresh.returncode == 0, refresh.stderr[-3000:]
        assert "refresh: 0 new rows after dedup against the build" in refresh.stdout, refresh.stdout
    finally:
        _, rebuilt_err = rebuilding.communicate(timeout=400)
    assert rebuilding.returncode == 0, rebuilt_err[-3000:]
    assert built and digests(twin) == built


def _shared_slice_config(tmp_path: Path, shared: Path) -> Path:
    """A few real books, a few real monographs, a few hundred real dialogues, real exam items."""
    books = tmp_path / "books"
    books.mkdir()
    for name in ("000-神农本草经.txt", "203-婴童类萃.txt"):
        os.symlink(shared / "corpus" / "ancient-books" / name, books / name)
    monographs = tmp_path / "monographs.txt"
    text = (shared / "corpus" / "pharmacopoeia" / "2022年中药药典.txt").read_text(encoding="utf-8")
    monographs.write_text(text[:60_000], encoding="utf-8")
    dialogues = json.loads((shared / "instructions" / "cmtmedqa_test.json").read_text(encoding="utf-8"))[:300]
    dialogue_file = tmp_path / "dialogues.json"
    dialogue_file.write_text(json.dumps(dialogues, ensure_ascii=False), encoding="utf-8")
    config = tmp_path / "slice.toml"
    config.write_text(
        f"""
[[sources]]
name = "ancient-books"
kind = "files"
path = "{books}"
format = "book"
category = "books"

[[sources]]
name = "pharmacopoeia"
kind = "files"
path = "{monographs}"
format = "monograph"
category = "encyclopedia"

[[sources]]
name = "cmtmedqa"
kind = "dataset"
path = "{dialogue_file}"
format = "instructions"
category = "sft"

[decontaminate]
benchmarks = ["{shared / 'benchmarks' / 'mtcmb_tcm_ed_a.jsonl'}"]

[sample]
shard_rows = 500
sft_epochs = 2

[engine]
workers = 2
batch_rows = 256

# The crash test raises in convert: no retries, so it fails at once.
[operations.tasks.convert]
retries = 0
""",
        encoding="utf-8",
    )
    return config


def test_build_on_a_slice_of_the_shared_data_and_resume_after_a_crash(tmp_path, shared_data, prefect_harness, monkeypatch):
    from flows import pipeline
    from transforms import stages

    config = _shared_slice_config(tmp_path, shared_data)
    workdir = tmp_path / "build"

    real_convert = stages.run_convert

    def crash(*args, **kwargs):
        raise RuntimeError("killed during convert")

    monkeypatch.setattr(stages, "run_convert", crash)
    with pytest.raises(RuntimeError, match="killed during convert"):
        pipeline.build_corpus(config=str(config), workdir=str(workdir))
    assert not (workdir / "stages" / "convert").exists(), "an unfinished stage leaves nothing behind"
    assert read_manifest(workdir / "stages" / "decontaminate") is not None

    monkeypatch.setattr(stages, "run_convert", real_convert)
    result = pipeline.build_corpus(config=str(config), workdir=str(workdir))
    skipped = {name for name, summary in result["stages"].items() if summary["skipped"]}
    assert skipped == {"ingest", "clean", "select", "dedup", "decontaminate"}

    manifests = check_ledgers(workdir)
    frame = check_corpus(workdir / "corpus")
    ingest = manifests["ingest"]
    assert ingest.rows_in["conversations"] == 300
    assert ingest.rows_in["documents"] > 100
    convert = manifests["convert"]
    assert convert.stats["conversations_from_documents"] > 10
    # Conversations in are those that came in; those made from documents are said as made.
    assert convert.rows_in["conversations"] == manifests["decontaminate"].rows_out["conversations"] == convert.stats["conversations_native"]
    assert convert.rows_made["conversations"] == convert.stats["conversations_from_documents"] + convert.rows_rejected["conversations"]
    assert convert.rows_out["conversations"] == convert.rows_kept["conversations"]
    from quality.report import build_figures

    row = next(r for r in build_figures(workdir)["funnel"] if (r["stage"], r["kind"]) == ("convert", "conversations"))
    assert (row["in"], row["made"], row["kept"]) == (convert.rows_in["conversations"], convert.rows_made["conversations"], convert.rows_out["conversations"])
    sft = frame[frame["category"] == "sft"]
    copies = sft["meta"].map(lambda m: json.loads(m)["origin_id"]).value_counts()
    assert set(copies) == {2}, "each fine-tuning item appears sft_epochs times"
    # Domain text first: the share of sft grows from the first tenth to the last.
    tenth = len(frame) // 10
    assert (frame["category"][:tenth] == "sft").mean() < (frame["category"][-tenth:] == "sft").mean()

    # A changed sampling seed re-runs sampling and what follows, nothing before it.
    config.write_text(config.read_text(encoding="utf-8").replace("sft_epochs = 2", "sft_epochs = 2\nseed = 99"), encoding="utf-8")
    result = pipeline.build_corpus(config=str(config), workdir=str(workdir))
    rerun = {name for name, summary in result["stages"].items() if not summary["skipped"]}
    assert rerun == {"sample", "validate", "export"}


def test_stage_runs_alone_from_the_cli(tmp_path, prefect_home, shared_data):
    config = _shared_slice_config(tmp_path, shared_data)
    ingest = flows_cli("run", "ingest", "--config", str(config), "--output", str(tmp_path / "ingest"), prefect_home=prefect_home)
    assert ingest.returncode == 0, ingest.stderr[-3000:]
    clean = flows_cli(
        "run", "clean", "--input", str(tmp_path / "ingest"), "--output", str(tmp_path / "clean"), "--config", str(config),
        prefect_home=prefect_home,
    )
    assert clean.returncode == 0, clean.stderr[-3000:]
    manifest = read_manifest(tmp_path / "clean")
    assert manifest.rows_in == read_manifest(tmp_path / "ingest").rows_out


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "build-corpus", "--config", "{tmp}/missing.toml"], "config file"),
        (["run", "clean", "--input", "{tmp}/nowhere", "--output", "{tmp}/out"], "does not exist"),
        (["run", "clean", "--input", "{tmp}/corrupt", "--output", "{tmp}/out"], "cannot be read"),
        (["run", "build-corpus", "--config", "{tmp}/bad.toml"], "unknown key 'sample.seeds'"),
        (["run", "build-corpus", "--config", "{tmp}/nosource.toml"], "does not exist"),
        (["run", "build-corpus", "--config", "{tmp}/llm.toml"], "environment variable TCM_UNSET_LLM_KEY is not set"),
    ],
)
def test_user_mistakes_are_one_line_not_a_trace(tmp_path, prefect_home, args, message):
    (tmp_path / "bad.toml").write_text("[sample]\nseeds = 3\n", encoding="utf-8")
    (tmp_path / "nosource.toml").write_text(
        '[[sources]]\nname = "b"\nkind = "files"\npath = "gone"\nformat = "book"\ncategory = "books"\n', encoding="utf-8"
    )
    (tmp_path / "llm.toml").write_text(
        '[convert]\nbackend = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "m"\napi_key_env = "TCM_UNSET_LLM_KEY"\n', encoding="utf-8"
    )
    (tmp_path / "corrupt" / "documents").mkdir(parents=True)
    (tmp_path / "corrupt" / "documents" / "part-00000.parquet").write_bytes(b"not parquet at all")
    run = flows_cli(*[a.format(tmp=tmp_path) for a in args], prefect_home=prefect_home, timeout=120)
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("flows: error:") and message in lines[0], run.stderr
    assert "Traceback" not in run.stderr


def test_flows_list_names_every_flow(prefect_home):
    run = flows_cli("list", prefect_home=prefect_home, timeout=60)
    assert run.returncode == 0
    for name in ("build-corpus", *STAGE_FOLDERS, "sample"):
        assert name in run.stdout


def test_the_build_summary_reaches_the_terminal_once():
    """`flows run` prints the final summary itself; the build's log record of it goes to the
    Prefect API only, not to the console as well."""
    import logging

    from flows.runtime import SUMMARY_RECORD, keep_summary_off_terminal

    keep_summary_off_terminal()
    from prefect.logging.handlers import PrefectConsoleHandler

    logger = logging.getLogger("prefect.flow_runs")  # its records reach the root logger's console handler
    consoles = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    assert consoles and logger.propagate

    def record(**extra):
        return logger.makeRecord(logger.name, logging.INFO, __file__, 1, "build-corpus finished", (), None, extra=extra)

    assert not any(handler.filter(record(**{SUMMARY_RECORD: True})) for handler in consoles)
    assert all(handler.filter(record()) for handler in consoles)
