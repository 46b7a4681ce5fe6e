"""Stages over datasets on disk, without Prefect: ids stay unique and ledgers reconcile."""
import pyarrow.parquet as pq

from schemas.dataset import StageManifest, read_manifest
from transforms import stages
from transforms.engines.local import LocalEngine

CHAPTER = "味甘，无毒。主明目，益气，令人有子。生丘陵，如碧石青。久服轻身，不老延年。"


def test_same_text_in_two_files_of_a_source_is_one_row(tmp_path):
    books = tmp_path / "books"
    books.mkdir()
    for name in ("a.txt", "b.txt"):
        (books / name).write_text(CHAPTER, encoding="utf-8")
    source = {"name": "books", "category": "books", "path": str(books), "format": "text", "encoding": "auto"}
    manifest = stages.run_ingest([source], [], tmp_path / "ingest", {}, StageManifest(stage="ingest"))
    assert manifest.rows_in == {"documents": 2}
    assert manifest.rows_rejected["documents"] == 1
    reasons = pq.read_table(tmp_path / "ingest" / "rejected" / "documents").column("reason").to_pylist()
    assert reasons[0].startswith("repeated_record:")


def test_dedup_ledger_over_several_input_datasets(tmp_path):
    engine = LocalEngine(workers=2, batch_rows=2)
    inputs = []
    for name, texts in (("one", [CHAPTER, "当归补血活血，调经止痛。" * 3, "甘草调和诸药。" * 4]), ("two", [CHAPTER + "。", "茯苓利水渗湿。" * 4])):
        folder = tmp_path / name
        (folder / "files").mkdir(parents=True)
        for i, text in enumerate(texts):
            (folder / "files" / f"{i}.txt").write_text(text, encoding="utf-8")
        source = {"name": name, "category": "books", "path": str(folder / "files"), "format": "text"}
        stages.run_ingest([source], [], folder / "ingest", {}, StageManifest(stage="ingest"))
        inputs.append(folder / "ingest")
    manifest = stages.run_dedup(inputs, tmp_path / "dedup", {"keep": "first"}, StageManifest(stage="dedup"), engine)
    assert manifest.rows_in == {"documents": 5}
    assert manifest.rows_rejected["documents"] == 1
    assert manifest.rows_kept["documents"] == 4 == read_manifest(tmp_path / "dedup").rows_out["documents"]


def _tagged(batch, context):
    import os

    return [(context, item, os.getpid()) for item in batch]


def test_local_engine_workers_serve_every_map_call_with_that_calls_context():
    from transforms.engines import local

    engine = LocalEngine(workers=2)
    first = [row for rows in engine.map(_tagged, [[1, 2], [3], [4, 5], [6]], "clean params") for row in rows]
    spent = local.worker_cpu_seconds()
    second = [row for rows in LocalEngine(workers=2).map(_tagged, [[7], [8], [9]], {"index": [1, 2, 3]}) for row in rows]
    # Results in input order, each call's batches with that call's context.
    assert [(c, i) for c, i, _ in first] == [("clean params", i) for i in range(1, 7)]
    assert [(c, i) for c, i, _ in second] == [({"index": [1, 2, 3]}, i) for i in (7, 8, 9)]
    # The same worker processes, started once, served both calls; their CPU is counted while they live.
    workers = set(local._shared.pids())
    assert {pid for _, _, pid in first + second} <= workers and len(workers) == 2
    assert local.worker_cpu_seconds() >= spent > 0
    # A step that fails stops that call only; the next call still gets results.
    try:
        list(engine.map(_tagged, [[1], None, [2]], "ctx"))
    except TypeError:
        pass
    else:
        raise AssertionError("the failing batch's error reaches the caller")
    assert [i for rows in engine.map(_tagged, [[1], [2]], "again") for _, i, _ in rows] == [1, 2]
    local.shutdown_workers()
    assert local._shared is None and local.worker_cpu_seconds() == 0.0
