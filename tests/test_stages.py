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


def _keep_all_but_first(batch, context):
    """A map step: drops each batch's first row (reason: the context), and says which process ran it."""
    import os

    import pyarrow as pa

    table = pa.Table.from_batches([batch])
    rejected = table.slice(0, 1).append_column("reason", pa.array([context], pa.string()))
    return table.slice(1), rejected, os.getpid()


def test_map_stage_starts_one_pool_for_all_kinds(tmp_path):
    """With workers, a stage's kinds share one pool (each worker starts once, with every kind's
    context); the output is the one a single process writes."""
    import os

    import pyarrow as pa

    from schemas import CONVERSATIONS, DOCUMENTS, conversation_id, document_id
    from schemas.dataset import DatasetWriter

    texts = [f"第{i}条：黄芪补气升阳，固表止汗。" for i in range(12)]
    chats = [[{"role": "user", "content": f"问{i}"}, {"role": "assistant", "content": f"答{i}"}] for i in range(9)]
    with DatasetWriter(tmp_path / "in", StageManifest(stage="ingest")) as writer:
        writer.write(DOCUMENTS, pa.table({"id": [document_id("s", t) for t in texts], "text": texts,
                                          "source": ["s"] * 12, "category": ["books"] * 12}))
        writer.write(CONVERSATIONS, pa.table({"id": [conversation_id("s", m) for m in chats], "messages": chats,
                                              "source": ["s"] * 9, "category": ["sft"] * 9}))
        writer.commit()
    outputs, processes = {}, {}
    for workers in (1, 2):
        ran: dict[str, set] = {}
        manifest = LocalEngine(workers=workers, batch_rows=3).map_stage(
            _keep_all_but_first, [tmp_path / "in"], tmp_path / f"out{workers}", StageManifest(stage="x"), (DOCUMENTS, CONVERSATIONS),
            lambda kind: f"first_of_batch:{kind}", extras=lambda kind, pid: ran.setdefault(kind, set()).add(pid),
        )
        assert manifest.rows_in == {DOCUMENTS: 12, CONVERSATIONS: 9}
        assert manifest.rows_rejected == {DOCUMENTS: 4, CONVERSATIONS: 3}
        outputs[workers] = {kind: (pq.read_table(tmp_path / f"out{workers}" / kind), pq.read_table(tmp_path / f"out{workers}" / "rejected" / kind))
                            for kind in (DOCUMENTS, CONVERSATIONS)}
        processes[workers] = ran
    assert processes[1] == {DOCUMENTS: {os.getpid()}, CONVERSATIONS: {os.getpid()}}
    both = processes[2][DOCUMENTS] | processes[2][CONVERSATIONS]
    assert os.getpid() not in both and len(both) <= 2
    for kind in (DOCUMENTS, CONVERSATIONS):
        assert outputs[1][kind][0].equals(outputs[2][kind][0]) and outputs[1][kind][1].equals(outputs[2][kind][1])
    assert outputs[2][DOCUMENTS][1].column("reason").to_pylist() == ["first_of_batch:documents"] * 4
