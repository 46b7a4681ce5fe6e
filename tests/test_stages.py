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
