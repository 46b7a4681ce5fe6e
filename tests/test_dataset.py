"""The on-disk dataset contract: atomic writes, the ledger, kinds, rejected rows."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas import DOCUMENTS, conform, document_id, kind_of
from schemas import CONVERSATIONS
from schemas.dataset import (
    ROW_GROUP_ROWS, DatasetError, DatasetWriter, StageManifest, check_input, fingerprint, iter_batches, parquet_leaves, read_kind,
    read_manifest,
)


def _documents(n, start=0):
    texts = [f"第{i}条：黄芪补气升阳，固表止汗。" for i in range(start, start + n)]
    return pa.table(
        {"id": [document_id("s", t) for t in texts], "text": texts, "source": ["s"] * n, "category": ["books"] * n}
    )


def test_writer_commits_whole_dataset_with_ledger(tmp_path):
    out = tmp_path / "stage"
    manifest = StageManifest(stage="test", rows_in={DOCUMENTS: 5})
    with DatasetWriter(out, manifest, part_rows=2) as writer:
        writer.write(DOCUMENTS, _documents(3))
        rejected = _documents(2, 10).append_column("reason", pa.array(["too_short:x", "empty"]))
        writer.reject(DOCUMENTS, rejected)
        assert not out.exists(), "nothing appears at the output before commit"
        written = writer.commit()
    assert sorted(p.name for p in (out / DOCUMENTS).iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert written.rows_out == {DOCUMENTS: 3}
    assert written.rows_rejected == {DOCUMENTS: 2}
    assert written.rows_kept == {DOCUMENTS: 3}
    assert written.rejected_by_reason == {"empty": 1, "too_short": 1}
    on_disk = read_manifest(out)
    assert on_disk.fingerprint == written.fingerprint and on_disk.fingerprint
    assert pq.read_table(out / "rejected" / DOCUMENTS).column("reason").to_pylist() == ["too_short:x", "empty"]
    assert read_kind(out, DOCUMENTS).num_rows == 3
    assert json.loads((out / "_manifest.json").read_text())["stage"] == "test"


def test_parts_gather_write_calls_into_row_groups(tmp_path):
    """Batches of a few hundred rows make row groups of ROW_GROUP_ROWS, parts keep `part_rows`
    rows, and the rows come back in order; dictionaries only on the repeated short columns."""
    out = tmp_path / "stage"
    part_rows, batch = ROW_GROUP_ROWS * 2 + 100, 700
    total = part_rows + 1_000
    table = _documents(total)
    with DatasetWriter(out, StageManifest(stage="test"), part_rows=part_rows) as writer:
        for start in range(0, total, batch):
            writer.write(DOCUMENTS, table.slice(start, batch))
        manifest = writer.commit()
    files = sorted((out / DOCUMENTS).iterdir())
    assert [pq.ParquetFile(f).metadata.num_rows for f in files] == [part_rows, 1_000]
    assert [f["rows"] for f in manifest.files] == [part_rows, 1_000]
    first = pq.ParquetFile(files[0]).metadata
    assert [first.row_group(g).num_rows for g in range(first.num_row_groups)] == [ROW_GROUP_ROWS, ROW_GROUP_ROWS, 100]
    assert read_kind(out, DOCUMENTS).column("text").to_pylist() == table.column("text").to_pylist()
    assert sum(b.num_rows for b in iter_batches(out, DOCUMENTS, 4096)) == total
    columns = {first.row_group(0).column(i).path_in_schema: first.row_group(0).column(i) for i in range(first.num_columns)}
    assert columns["source"].has_dictionary_page and columns["category"].has_dictionary_page
    assert not columns["text"].has_dictionary_page and not columns["id"].has_dictionary_page


def test_long_rows_make_row_groups_of_fewer_rows(tmp_path, monkeypatch):
    """A row group is written once the pending rows hold ROW_GROUP_BYTES of data, however few."""
    import schemas.dataset as dataset

    monkeypatch.setattr(dataset, "ROW_GROUP_BYTES", 64 << 10)
    table = _documents(300)
    table = table.set_column(1, "text", pa.array([text * 20 for text in table.column("text").to_pylist()]))
    with DatasetWriter(tmp_path / "stage", StageManifest(stage="test")) as writer:
        for start in range(0, 300, 10):
            writer.write(DOCUMENTS, table.slice(start, 10))
        writer.commit()
    metadata = pq.ParquetFile(tmp_path / "stage" / DOCUMENTS / "part-00000.parquet").metadata
    assert 1 < metadata.num_row_groups < 30 and metadata.num_rows == 300
    assert read_kind(tmp_path / "stage", DOCUMENTS).column("text").to_pylist() == table.column("text").to_pylist()


def test_parquet_leaves_name_nested_columns_as_parquet_does(tmp_path):
    conversations = conform(pa.table({
        "id": ["c1"], "source": ["s"], "category": ["sft"],
        "messages": [[{"role": "user", "content": "问"}, {"role": "assistant", "content": "答"}]],
    }), CONVERSATIONS)
    pq.write_table(conversations, tmp_path / "c.parquet")
    on_disk = [column.path for column in pq.ParquetFile(tmp_path / "c.parquet").schema]
    assert parquet_leaves(conversations.schema) == on_disk
    assert "messages.list.element.role" in on_disk


def test_failed_write_leaves_no_dataset(tmp_path):
    out = tmp_path / "stage"
    with pytest.raises(RuntimeError):
        with DatasetWriter(out, StageManifest(stage="test")) as writer:
            writer.write(DOCUMENTS, _documents(2))
            raise RuntimeError("crash mid-stage")
    assert not out.exists()
    assert not list(tmp_path.iterdir()), "the temporary folder is cleaned up"


def test_rejected_rows_need_reason(tmp_path):
    with DatasetWriter(tmp_path / "o", StageManifest(stage="t")) as writer:
        with pytest.raises(ValueError):
            writer.reject(DOCUMENTS, _documents(1))


def test_loose_parquet_folder_is_a_dataset_told_by_columns(tmp_path):
    pq.write_table(_documents(4), tmp_path / "mine.parquet")
    assert check_input(tmp_path) == tmp_path
    assert read_kind(tmp_path, DOCUMENTS).num_rows == 4
    assert fingerprint(tmp_path)


def test_check_input_names_the_problem(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        check_input(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no dataset"):
        check_input(tmp_path / "empty")


def test_conform_adds_optional_columns_and_keeps_stage_columns():
    table = _documents(2).append_column("score", pa.array([0.5, 0.7]))
    conformed = conform(table, DOCUMENTS)
    assert conformed.schema.names[:8] == ["id", "text", "source", "category", "url", "title", "lang", "meta"]
    assert "score" in conformed.schema.names
    assert kind_of(conformed.schema) == DOCUMENTS
    with pytest.raises(ValueError, match="text"):
        conform(table.drop_columns(["text"]), DOCUMENTS)


def test_ids_are_content_derived():
    assert document_id("s", "黄芪") == document_id("s", "黄芪")
    assert document_id("s", "黄芪") != document_id("s", "当归")
    assert document_id("a", "黄芪") != document_id("b", "黄芪")
