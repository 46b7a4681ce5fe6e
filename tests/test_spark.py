"""The Spark engine against the local engine: same input, config and seed, same result.

One SparkSession (local[2]) for the whole test session. The input is real: classical books from
the shared data (two of them imported twice, under two source names, so exact duplicates with
different ids exist) and real doctor-patient dialogues, written as many small Parquet parts so
that Spark's size-ordered scan would scramble the row order if the engine did not keep it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas import CONVERSATIONS, CORPUS, DOCUMENTS
from schemas.records import CLUSTERS, REPEATED_PARAGRAPHS
from schemas.dataset import DatasetWriter, StageManifest, read_kind
from transforms import stages
from transforms.dedup.deduplicate import run_dedup_stage
from transforms.engines.local import LocalEngine
from transforms.sample.shards import CORPUS_MANIFEST

BOOKS = ["118-增订医方歌诀.txt", "121-医方歌括.txt", "219-跌打损伤方.txt", "251-金疮秘传禁方.txt"]
COPIED_BOOKS = ["121-医方歌括.txt", "219-跌打损伤方.txt"]
CLEAN = {"opencc": "t2s", "unicode_form": "NFKC", "min_chars": 80, "min_han_ratio": 0.0, "min_turn_chars": 1}
SAMPLE = {
    "mode": "priority",
    "weights": {"web": 32, "literature": 16, "encyclopedia": 8, "books": 4, "sft": 1},
    "source_weights": {},
    "sft_epochs": 3,
    "shard_rows": 70,
    "row_group_rows": 30,
    "seed": 7,
}


@pytest.fixture(scope="session")
def spark_engine():
    from transforms.engines.spark import SparkEngine, build_session

    from conftest import SPARK_TEST_JAVA_OPTIONS

    # Few shuffle partitions: the test data is small, and a task costs a second on a busy machine.
    session = build_session("local[2]", {"spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2", "spark.ui.enabled": "false",
                                         "spark.driver.extraJavaOptions": SPARK_TEST_JAVA_OPTIONS})
    yield SparkEngine("local[2]", batch_rows=64, session=session)
    session.stop()


@pytest.fixture(scope="session")
def corpus_input(tmp_path_factory, shared_data) -> Path:
    """Ingested books (two imported twice) and dialogues, re-written as parts of 23 rows."""
    root = tmp_path_factory.mktemp("spark-input")
    folder = root / "books"
    copies = root / "copies"
    folder.mkdir()
    copies.mkdir()
    books = shared_data / "corpus" / "ancient-books"
    for name in BOOKS:
        os.symlink(books / name, folder / name)
    for name in COPIED_BOOKS:
        os.symlink(books / name, copies / name)
    sources = [
        {"name": "classics", "category": "books", "path": str(folder), "format": "book", "encoding": "auto"},
        {"name": "classics-reprint", "category": "literature", "path": str(copies), "format": "book", "encoding": "auto"},
        {"name": "dialogues", "category": "sft", "path": str(shared_data / "instructions" / "mtcmb_tcm_chgd.jsonl"), "format": "instructions", "encoding": "auto"},
    ]
    stages.run_ingest(sources, [], root / "ingest", {"min_chars": 20}, StageManifest(stage="ingest"))
    parts = root / "input"
    with DatasetWriter(parts, StageManifest(stage="input"), part_rows=23) as writer:
        for kind in (DOCUMENTS, CONVERSATIONS):
            table = read_kind(root / "ingest", kind)
            writer.write(kind, table)
            writer.manifest.rows_in[kind] = table.num_rows
        writer.commit()
    return parts


def _ids(path: Path, kind: str, rejected: bool = False) -> list:
    table = read_kind(path / "rejected" if rejected else path, kind)
    if rejected:
        if "reason" not in table.schema.names:  # nothing rejected of this kind
            return []
        return list(zip(table.column("id").to_pylist(), table.column("reason").to_pylist()))
    return table.column("id").to_pylist()


def _ledger(manifest: StageManifest) -> dict:
    return {k: getattr(manifest, k) for k in ("rows_in", "rows_kept", "rows_rejected", "rows_out", "rejected_by_reason")}


def _rows_per_folder(manifest: StageManifest) -> dict:
    rows: dict = {}
    for entry in manifest.files:
        folder = entry["path"].rsplit("/", 1)[0]
        rows[folder] = rows.get(folder, 0) + entry["rows"]
    return rows


def _assert_same_dataset(local: Path, spark: Path, local_manifest: StageManifest, spark_manifest: StageManifest) -> None:
    assert _ledger(spark_manifest) == _ledger(local_manifest)
    for kind in local_manifest.rows_in:
        # Same rows kept, in the same order, with the same columns and values.
        assert read_kind(spark, kind).to_pylist() == read_kind(local, kind).to_pylist()
        assert _ids(spark, kind, rejected=True) == _ids(local, kind, rejected=True)
        assert spark_manifest.rows_in[kind] == spark_manifest.rows_kept[kind] + spark_manifest.rows_rejected[kind]
    # Part sizes may differ (Spark writes a part per input part); folders and rows per folder may not.
    assert _rows_per_folder(spark_manifest) == _rows_per_folder(local_manifest)
    # The layout is the dataset contract only: no Spark markers, checksums or staging folders.
    names = sorted(str(p.relative_to(spark)) for p in spark.rglob("*") if p.is_file())
    assert names == sorted(["_manifest.json", *(f["path"] for f in spark_manifest.files)])
    assert not list(spark.parent.glob(f"{spark.name}.tmp-*"))


@pytest.fixture(scope="session")
def cleaned(tmp_path_factory, corpus_input, spark_engine):
    root = tmp_path_factory.mktemp("spark-clean")
    results = {}
    for name, engine in (("local", LocalEngine(1, 64)), ("spark", spark_engine)):
        manifest = stages.run_clean([corpus_input], root / name, CLEAN, StageManifest(stage="clean"), engine)
        results[name] = (root / name, manifest)
    return results


def test_clean_keeps_the_same_rows_on_both_engines(cleaned):
    (local, local_manifest), (spark, spark_manifest) = cleaned["local"], cleaned["spark"]
    _assert_same_dataset(local, spark, local_manifest, spark_manifest)
    # Clean rejects no chapter for its length (select does): the books' short chapters carry the
    # same body tags from the executors as from the local workers.
    kinds = set(read_kind(spark, DOCUMENTS).column("body_kind").to_pylist())
    assert {"sentence", "fragment"} <= kinds
    assert set(spark_manifest.rows_in) == {DOCUMENTS, CONVERSATIONS}
    # Stats of every batch come back from the executors: the same redaction counts, CPU seconds per step.
    assert spark_manifest.stats["pii_redactions"] == local_manifest.stats["pii_redactions"]
    assert set(spark_manifest.stats["cpu_seconds_per_step"]) == set(local_manifest.stats["cpu_seconds_per_step"])


def test_a_file_split_over_several_tasks_keeps_its_order(tmp_path, corpus_input, spark_engine, monkeypatch):

    from transforms.engines.spark import datasets

    # One file of many row groups, cut into several scan partitions (Spark lists them largest first).
    table = read_kind(corpus_input, DOCUMENTS)
    (tmp_path / "input" / DOCUMENTS).mkdir(parents=True)
    pq.write_table(table, tmp_path / "input" / DOCUMENTS / "part-00000.parquet", row_group_size=9)
    monkeypatch.setattr(datasets, "MIN_SPLIT_BYTES", 1)
    monkeypatch.setattr(datasets, "MAX_SPLIT_BYTES", (tmp_path / "input" / DOCUMENTS / "part-00000.parquet").stat().st_size // 5)
    local = stages.run_clean([tmp_path / "input"], tmp_path / "local", CLEAN, StageManifest(stage="clean"), LocalEngine(1, 64))
    spark = stages.run_clean([tmp_path / "input"], tmp_path / "spark", CLEAN, StageManifest(stage="clean"), spark_engine)
    assert len([f for f in spark.files if f["path"].startswith(DOCUMENTS)]) >= 3  # a part per task
    _assert_same_dataset(tmp_path / "local", tmp_path / "spark", local, spark)


@pytest.mark.parametrize("keep", ["first", "longest"])
def test_exact_dedup_keeps_the_same_copies_on_both_engines(tmp_path, cleaned, spark_engine, keep):
    # Each engine deduplicates its own clean output: the whole chain must agree, row order included.
    params = {"method": "exact", "keep": keep}
    local = stages.run_dedup([cleaned["local"][0]], tmp_path / "local", params, StageManifest(stage="dedup"), LocalEngine(1, 64))
    spark = stages.run_dedup([cleaned["spark"][0]], tmp_path / "spark", params, StageManifest(stage="dedup"), spark_engine)
    _assert_same_dataset(tmp_path / "local", tmp_path / "spark", local, spark)
    assert spark.stats == local.stats
    assert read_kind(tmp_path / "spark", CLUSTERS).to_pylist() == read_kind(tmp_path / "local", CLUSTERS).to_pylist()
    assert spark.rejected_by_reason.get("exact_duplicate_of", 0) > 0
    survivors = {reason.split(":", 1)[1] for _, reason in _ids(tmp_path / "spark", DOCUMENTS, rejected=True)}
    assert survivors <= set(_ids(tmp_path / "spark", DOCUMENTS))


def test_decontamination_ships_the_index_to_executors(tmp_path, cleaned, spark_engine):
    text = read_kind(cleaned["local"][0], DOCUMENTS).column("text")[5].as_py()
    items = [{"benchmark": "exam", "item": "q1", "question": text[10:60]}, {"benchmark": "exam", "item": "q2", "question": "与本语料无关的一道考题题干文字"}]
    params = {"ngram": 13, "min_overlap": 0.5, "min_question_chars": 8, "action": "remove"}
    local = stages.run_decontaminate([cleaned["local"][0]], tmp_path / "local", params, StageManifest(stage="d"), LocalEngine(1, 64), items)
    # Spark reads and writes through Hadoop's FileSystem: a URI (here file://) works as well as a path.
    spark = stages.run_decontaminate([cleaned["local"][0].as_uri()], (tmp_path / "spark").as_uri(), params, StageManifest(stage="d"), spark_engine, items)
    _assert_same_dataset(tmp_path / "local", tmp_path / "spark", local, spark)
    assert ("contaminated" in spark.rejected_by_reason) and spark.stats == local.stats


def test_priority_sample_has_the_same_order_shards_and_manifest(tmp_path, cleaned, spark_engine):
    inputs = [cleaned["local"][0]]
    local = stages.run_sample(inputs, tmp_path / "local", SAMPLE, StageManifest(stage="sample"), "c0ffee")
    spark = stages.run_sample(inputs, tmp_path / "spark", SAMPLE, StageManifest(stage="sample"), "c0ffee", engine=spark_engine)
    assert _ledger(spark) == _ledger(local) and spark.stats == local.stats
    ordered = read_kind(tmp_path / "spark", CORPUS)
    assert ordered.to_pylist() == read_kind(tmp_path / "local", CORPUS).to_pylist()
    assert ordered.column("position").to_pylist() == list(range(ordered.num_rows))
    local_corpus = json.loads((tmp_path / "local" / CORPUS_MANIFEST).read_text(encoding="utf-8"))
    spark_corpus = json.loads((tmp_path / "spark" / CORPUS_MANIFEST).read_text(encoding="utf-8"))
    for shard in (*local_corpus["shards"], *spark_corpus["shards"]):
        del shard["sha256"], shard["bytes"]  # same rows; the bytes depend on the writer's batches
    assert spark_corpus == local_corpus  # shards, row groups, tokens, counts, sampling curve, parameters
    for name in (s["path"] for s in spark_corpus["shards"]):
        assert pq.read_table(tmp_path / "spark" / name).schema == pq.read_table(tmp_path / "local" / name).schema
    assert ordered.num_rows > SAMPLE["shard_rows"] * 2 and spark_corpus["shards"][0]["row_groups"] > 1
    assert {"books", "literature", "sft"} <= set(ordered.column("category").to_pylist())


def test_a_step_that_loses_rows_breaks_the_ledger(tmp_path, corpus_input, spark_engine):
    from transforms.engines.spark.stages import LedgerError

    def _drop_first_row(batch, kind):  # defined here so that Spark ships it by value
        table = pa.Table.from_batches([batch])
        return table.slice(1), table.slice(0, 0).append_column("reason", pa.array([], pa.string()))

    with pytest.raises(LedgerError, match="rows in"):
        stages.run_map_stage(_drop_first_row, [corpus_input], tmp_path / "out", StageManifest(stage="x"), spark_engine, (DOCUMENTS,), lambda kind: kind)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.tmp-*"))


def test_preflight_asks_for_java_in_one_line(monkeypatch):
    from flows.cli import UsageError, _preflight
    from flows.config import load_config

    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", "")
    args = type("Args", (), {"engine": "spark", "flow": "build-corpus", "input": [], "output": None})()
    with pytest.raises(UsageError, match="needs Java 17"):
        _preflight(args, load_config())


# -- MinHash near-duplicates --------------------------------------------------------------------


def test_minhash_clusters_match_the_local_stage(tmp_path, cleaned, spark_engine):
    documents = read_kind(cleaned["local"][0], DOCUMENTS)
    long_rows = [row for row in documents.to_pylist() if len(row["text"]) > 200][:8]
    # Near copies: a character dropped every 100, new ids, another source.
    near = [{**row, "id": f"near-{n}", "source": "reprint-near", "text": "".join(c for i, c in enumerate(row["text"]) if i % 100 != 50)} for n, row in enumerate(long_rows)]
    table = pa.concat_tables([documents, pa.Table.from_pylist(near, schema=documents.schema)])
    with DatasetWriter(tmp_path / "input", StageManifest(stage="input"), part_rows=23) as writer:
        writer.write(DOCUMENTS, table)
        writer.manifest.rows_in[DOCUMENTS] = table.num_rows
        writer.commit()
    params = {"method": "minhash", "keep": ["longest", "first"], "threshold": 0.8, "num_perm": 128, "ngram": 5, "seed": 1}
    manifest = stages.run_dedup([tmp_path / "input"], tmp_path / "spark", params, StageManifest(stage="dedup"), spark_engine)
    local = run_dedup_stage([tmp_path / "input"], tmp_path / "local", params, StageManifest(stage="dedup"), LocalEngine(1, 64))
    _assert_same_dataset(tmp_path / "local", tmp_path / "spark", local, manifest)
    assert manifest.stats == local.stats
    assert read_kind(tmp_path / "spark", CLUSTERS).to_pylist() == read_kind(tmp_path / "local", CLUSTERS).to_pylist()
    expected = dict(_ids(tmp_path / "local", DOCUMENTS, rejected=True))
    assert {"exact_duplicate_of", "near_duplicate_of"} <= set(manifest.rejected_by_reason)
    assert manifest.rows_in[DOCUMENTS] == table.num_rows == manifest.rows_kept[DOCUMENTS] + manifest.rows_rejected[DOCUMENTS]
    kept = _ids(tmp_path / "spark", DOCUMENTS)
    assert kept == [i for i in table.column("id").to_pylist() if i not in expected]  # dataset order kept
    assert 0 < manifest.stats["dedup"][DOCUMENTS]["candidate_pairs_similar"] <= manifest.stats["dedup"][DOCUMENTS]["candidate_pairs_checked"]


NAVIGATION = "首页 中药大全 方剂大全 穴位图解 养生之道"
FOOTER = "本站内容仅供参考，不能代替执业医师的诊断和治疗"


def _web_and_books(cleaned) -> pa.Table:
    """The cleaned books and dialogues' documents, and two web sources built from their real
    paragraphs: pages with the site's navigation and footer (one page of nothing else, some with
    the footer twice), a line shared by a few pages only (under `min_documents`), pages that copy
    a whole chapter, and a blog whose quotes carry its banner."""
    documents = read_kind(cleaned["local"][0], DOCUMENTS).combine_chunks()
    rows = documents.to_pylist()
    chapters = [row for row in rows if len(row["text"]) > 120]
    paragraphs = [line for row in rows for line in row["text"].split("\n") if len(line) > 80]
    template = {**rows[0], "source": "site", "category": "web"}
    web = []
    for n, paragraph in enumerate(paragraphs[:40]):
        body = chapters[n // 10]["text"] if n % 10 == 0 else paragraph  # some pages copy a chapter
        body = f"{body}\n{FOOTER}" if n % 7 == 3 else body  # the footer twice on some pages
        shared = "\n相关阅读：经方配伍的君臣佐使" if n % 13 == 0 else ""
        web.append({**template, "id": f"web-{n}", "text": f"{NAVIGATION}\n{body}{shared}\n{FOOTER}"})
    web.append({**template, "id": "web-chrome", "text": f"{NAVIGATION}\n\n{FOOTER}"})
    web += [{**template, "id": f"blog-{n}", "source": "blog", "text": f"转载自本草讲堂中医药文化频道\n{p}"} for n, p in enumerate(paragraphs[40:52])]
    mixed = [row for n in range(max(len(rows), len(web))) for row in (rows[n:n + 1] + web[n:n + 1])]
    return pa.Table.from_pylist(mixed, schema=documents.schema)


def _write_input(folder: Path, table: pa.Table) -> Path:
    with DatasetWriter(folder, StageManifest(stage="input"), part_rows=23) as writer:
        writer.write(DOCUMENTS, table)
        writer.manifest.rows_in[DOCUMENTS] = table.num_rows
        writer.commit()
    return folder


def _without(stats: dict, path: tuple) -> dict:
    stats = json.loads(json.dumps(stats))
    inner = stats
    for key in path[:-1]:
        inner = inner.get(key, {})
    inner.pop(path[-1], None)
    return stats


def _assert_same_dedup(local_dir: Path, spark_dir: Path, local: StageManifest, spark: StageManifest) -> None:
    _assert_same_dataset(local_dir, spark_dir, local, spark)
    # Rejected rows as removed: stripped texts too (the local writer keeps the kind's own columns only).
    def removed(folder: Path) -> list:
        table = read_kind(folder / "rejected", DOCUMENTS)
        return table.select(["id", "source", "text", "reason"]).to_pylist() if "reason" in table.schema.names else []

    assert removed(spark_dir) == removed(local_dir)
    index = ("dedup", "index", "path")  # each engine keeps its own index folder
    assert _without(spark.stats, index) == _without(local.stats, index)
    for audit in (CLUSTERS, REPEATED_PARAGRAPHS):
        assert read_kind(spark_dir, audit).to_pylist() == read_kind(local_dir, audit).to_pylist()


def test_repeated_paragraphs_on_spark_match_the_local_stage(tmp_path, cleaned, spark_engine):
    """Web pages and books with paragraphs on (the default build's dedup): the same kept rows
    (stripped texts), reasons, `clusters` and `repeated_paragraphs` audits and stats."""
    inputs = [_write_input(tmp_path / "input", _web_and_books(cleaned))]
    params = {"method": "minhash", "threshold": 0.8, "paragraphs": {"min_documents": 5, "min_share": 0.05}}
    local = run_dedup_stage(inputs, tmp_path / "local", params, StageManifest(stage="dedup"), LocalEngine(1, 64))
    spark = stages.run_dedup(inputs, tmp_path / "spark", params, StageManifest(stage="dedup"), spark_engine)
    _assert_same_dedup(tmp_path / "local", tmp_path / "spark", local, spark)
    found = spark.stats["dedup"][DOCUMENTS]["repeated_paragraphs"]
    audit = {r["paragraph"]: r for r in read_kind(tmp_path / "spark", REPEATED_PARAGRAPHS).to_pylist()}
    assert audit[FOOTER]["removed"] > audit[FOOTER]["documents"] == 41 and audit["转载自本草讲堂中医药文化频道"]["source"] == "blog"
    assert "相关阅读：经方配伍的君臣佐使" not in audit  # 4 pages of 41: under min_documents
    assert found["documents_emptied"] == 1 and spark.rejected_by_reason["repeated_paragraphs_only"] == 1
    # the pages copy chapters once their chrome is gone: duplicates of the books, or the books of them
    assert spark.rejected_by_reason["exact_duplicate_of"] >= 4
    kept = read_kind(tmp_path / "spark", DOCUMENTS).column("text").to_pylist()
    assert not any(FOOTER in t or NAVIGATION in t for t in kept)


def test_the_persistent_index_on_spark_matches_the_local_stage(tmp_path, cleaned, spark_engine):
    """Two builds in turn against `dedup.index_path`: the second finds copies of the first's rows;
    each engine keeps its own index, and both indexes hold the same segments and rows."""
    table = _web_and_books(cleaned)
    earlier = _write_input(tmp_path / "earlier", table.slice(0, 45))
    later = _write_input(tmp_path / "later", table.slice(30))
    results = {}
    for name, engine, run in (("local", LocalEngine(1, 64), run_dedup_stage), ("spark", spark_engine, stages.run_dedup)):
        params = {"index_path": str(tmp_path / name / "index"), "paragraphs": {"min_documents": 3}}
        for build in (earlier, later):
            results[name, build.name] = run([build], tmp_path / name / build.name, params, StageManifest(stage="dedup"), engine)
    for build in ("earlier", "later"):
        local, spark = results["local", build], results["spark", build]
        _assert_same_dedup(tmp_path / "local" / build, tmp_path / "spark" / build, local, spark)
    later_stats = results["spark", "later"].stats["dedup"][DOCUMENTS]
    assert later_stats["prior_rows"] > 0 and len(later_stats["prior_segments"]) == 1
    assert any(r["prior"] for r in read_kind(tmp_path / "spark" / "later", CLUSTERS).to_pylist())
    for name in ("local", "spark"):
        segments = sorted((tmp_path / name / "index" / DOCUMENTS).glob("*"))
        assert [s.name for s in segments] == [s.name for s in sorted((tmp_path / "local" / "index" / DOCUMENTS).glob("*"))]
        assert len(segments) == 2
    for segment in sorted((tmp_path / "local" / "index" / DOCUMENTS).glob("*.parquet")):
        ours = pq.read_table(tmp_path / "spark" / "index" / DOCUMENTS / segment.name)
        assert ours.to_pylist() == pq.read_table(segment).to_pylist() and ours.schema.metadata == pq.read_schema(segment).metadata


def test_connected_components_of_a_long_chain(spark_engine):
    from transforms.engines.spark.near_dedup import connected_components

    spark = spark_engine.session
    # A path 0-1-...-12 in shuffled edge order, and a separate triangle: two components.
    edges = [(i, i + 1) for i in range(12)] + [(100, 101), (101, 102), (102, 100)]
    frame = spark.createDataFrame(sorted(edges, key=lambda e: (e[0] * 7919) % 113), "a long, b long")
    roots = dict(connected_components(frame).collect())
    assert roots == {**{i: 0 for i in range(13)}, 100: 100, 101: 100, 102: 100}


def test_engine_section_builds_a_spark_engine_with_settings_passed_through(tmp_path):
    from flows.config import parse_config
    from flows.pipeline import make_engine
    from transforms.engines.spark import SparkEngine

    config = parse_config(
        '[engine]\nkind = "spark"\nmaster = "spark://head:7077"\ncheckpoint_dir = "hdfs:///tmp/tcm"\n'
        '[engine.spark]\n"spark.executor.instances" = 8\n"spark.executor.memory" = "8g"\n"spark.dynamicAllocation.enabled" = false\n',
        tmp_path,
    )
    engine = make_engine(config, stage="clean")
    assert isinstance(engine, SparkEngine) and engine.master == "spark://head:7077" and engine.checkpoint_dir == "hdfs:///tmp/tcm"
    assert engine.settings == {"spark.executor.instances": "8", "spark.executor.memory": "8g", "spark.dynamicAllocation.enabled": "false"}
    assert make_engine(config, stage="convert").name == "local"  # no Spark implementation yet
    # Repeated paragraphs of web sources (the default build) run on Spark too.
    web = '[[sources]]\nname = "site"\nkind = "crawl"\ncategory = "web"\nstart_urls = ["http://127.0.0.1:9/"]\n[engine]\nkind = "spark"\n'
    assert make_engine(parse_config(web, tmp_path), stage="dedup").name == "spark"
    assert make_engine(config, stage="dedup").name == "spark"
    assert make_engine(config, "local", stage="clean").name == "local"


def test_prefect_runs_a_stage_on_spark_from_the_config(tmp_path, corpus_input, cleaned, spark_engine, prefect_harness):
    from flows import pipeline

    config = tmp_path / "build.toml"
    config.write_text('[engine]\nkind = "spark"\nmaster = "local[2]"\nbatch_rows = 64\n\n[clean]\nopencc = "t2s"\n', encoding="utf-8")
    summary = pipeline.clean_flow(inputs=[str(corpus_input)], output=str(tmp_path / "clean"), config=str(config))
    assert summary["rows_in"] == cleaned["local"][1].rows_in and summary["rows_kept"] == cleaned["local"][1].rows_kept
    assert read_kind(tmp_path / "clean", DOCUMENTS).to_pylist() == read_kind(cleaned["local"][0], DOCUMENTS).to_pylist()
    again = pipeline.clean_flow(inputs=[str(corpus_input)], output=str(tmp_path / "clean"), config=str(config))
    assert again["skipped"]  # the Spark stage's manifest is one the flows recognise as finished


def test_pack_on_spark_equals_local(spark_engine, shared_data, tmp_path):
    """One Spark task per corpus shard, tokenizing in mapInArrow: the same packed shards, byte
    for byte, and the same ledger and figures as the local engine."""
    pytest.importorskip("tokenizers", reason="the pack stage needs the tokenizers package (test extra)")
    from pack_fixtures import corpus_rows, make_tokenizer_folder, write_corpus

    from transforms.pack.stage import run_pack

    tokenizer = make_tokenizer_folder(shared_data, tmp_path / "tokenizer", vocab_size=1000)
    corpus = write_corpus(corpus_rows(shared_data, texts=90, chats=40), tmp_path / "corpus", shards=3)
    params = {"tokenizer": str(tokenizer), "seq_len": 1024, "template": "tokenizer", "packing": "best_fit", "window": 30,
              "overflow": {"text": "split", "chat": "reject"}, "pad_to_multiple_of": 64, "eos_token": None, "pad_token": None,
              "outputs": ["megatron"], "row_group_rows": 8}
    local = run_pack([corpus], tmp_path / "local", params, StageManifest(stage="pack"), LocalEngine(1))
    spark = run_pack([corpus], tmp_path / "spark", params, StageManifest(stage="pack"), spark_engine)
    assert spark.rows_in == local.rows_in and spark.rows_rejected == local.rows_rejected and spark.rows_out == local.rows_out
    drop = ("cpu_seconds",)
    assert {k: v for k, v in spark.stats["pack"].items() if k not in drop} == {k: v for k, v in local.stats["pack"].items() if k not in drop}
    assert len(local.stats["pack"]["shards"]) == 3
    rejected = [read_kind(tmp_path / engine / "rejected", CORPUS).column("id").to_pylist() for engine in ("spark", "local")]
    assert rejected[0] == rejected[1] and rejected[0]
    for name in ("megatron/tokens.bin", "megatron/tokens.idx"):
        assert (tmp_path / "spark" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()


def test_a_cluster_session_ships_the_pipelines_code_and_keeps_the_users_archives(tmp_path):
    import tarfile

    from transforms.engines.spark.session import CODE_FOLDER, code_archive, ship_code

    settings = ship_code({"spark.archives": "/shared/tcm-env.tar.gz#env", "spark.executorEnv.PYTHONPATH": "extra"})
    archives = settings["spark.archives"].split(",")
    assert archives[0] == "/shared/tcm-env.tar.gz#env" and archives[1].endswith(f".tar.gz#{CODE_FOLDER}")
    assert settings["spark.executorEnv.PYTHONPATH"].split(os.pathsep) == [CODE_FOLDER, "extra"]
    archive = code_archive(tmp_path)
    assert code_archive(tmp_path) == archive  # built once per version of the code
    names = tarfile.open(archive).getnames()
    assert {"schemas/__init__.py", "transforms/dedup/paragraphs.py", "transforms/resources/corrections.tsv"} <= set(names)
    assert not any("__pycache__" in n or n.startswith("flows/") for n in names)
