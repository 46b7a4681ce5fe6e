"""What trainers receive: the shard folder loads with pyarrow, pandas and Hugging Face `datasets`
(offline), and the exports in ShareGPT, Alpaca and JSON lines keep the training order."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas import CONVERSATIONS, DOCUMENTS, SCHEMAS, conversation_id, document_id
from schemas.dataset import StageManifest
from transforms.export.formats import DATASET_INFO, export_corpus
from transforms.stages import run_sample

SFT_EPOCHS = 2


def turns(*pairs):
    return [{"role": role, "content": content} for role, content in pairs]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data) -> Path:
    """A corpus sampled from real dialogues and real monograph paragraphs."""
    root = tmp_path_factory.mktemp("export")
    records = json.loads((shared_data / "instructions" / "cmtmedqa_test.json").read_text(encoding="utf-8"))[:40]
    conversations = []
    for record in records:
        messages = []
        for question, answer in record.get("history") or []:
            messages += turns(("user", question), ("assistant", answer))
        messages += turns(("user", record["instruction"]), ("assistant", record["output"]))
        conversations.append({"id": conversation_id("cmtmedqa", messages), "messages": messages, "source": "cmtmedqa", "category": "sft"})
    with_system = turns(("system", "你是一名中医师。"), ("user", "黄芪有什么功效？"), ("assistant", "补气升阳，固表止汗。"))
    conversations.append({"id": conversation_id("house", with_system), "messages": with_system, "source": "house", "category": "sft"})
    text = (shared_data / "corpus" / "pharmacopoeia" / "2022年中药药典.txt").read_text(encoding="utf-8")
    paragraphs = [p.strip() for p in text[:40_000].splitlines() if len(p.strip()) > 30][:60]
    documents = [{"id": document_id("pharmacopoeia", p), "text": p, "source": "pharmacopoeia", "category": "encyclopedia"} for p in paragraphs]
    documents = list({d["id"]: d for d in documents}.values())
    items = root / "items"
    for kind, rows in ((DOCUMENTS, documents), (CONVERSATIONS, conversations)):
        (items / kind).mkdir(parents=True)
        schema = pa.schema([f.with_nullable(True) for f in SCHEMAS[kind]])
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), items / kind / "part-00000.parquet")
    params = {"weights": {"encyclopedia": 8, "sft": 1}, "sft_epochs": SFT_EPOCHS, "seed": 1, "shard_rows": 50}
    folder = root / "corpus"
    run_sample([items], folder, params, StageManifest(stage="sample"), "test")
    return folder


def test_shards_load_with_pyarrow_pandas_and_datasets(corpus, tmp_path, monkeypatch):
    manifest = json.loads((corpus / "_corpus_manifest.json").read_text(encoding="utf-8"))
    rows = manifest["rows"]
    assert len(manifest["shards"]) > 1

    table = pq.read_table(corpus)  # the whole folder: manifests are skipped by discovery
    assert table.num_rows == rows
    frame = pd.read_parquet(corpus)
    assert sorted(frame["position"]) == list(range(rows))

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import datasets

    by_files = datasets.load_dataset(
        "parquet", data_files=sorted(str(p) for p in corpus.glob("part-*.parquet")), split="train", cache_dir=str(tmp_path / "cache")
    )
    by_folder = datasets.load_dataset(str(corpus), split="train", cache_dir=str(tmp_path / "cache"))
    for loaded in (by_files, by_folder):
        assert loaded.num_rows == rows
        assert loaded["position"] == list(range(rows)), "shards in name order are the training order"
        assert set(loaded.column_names) >= {"id", "position", "category", "format", "messages", "text"}
    chat = next(row for row in by_files if row["format"] == "chat")
    assert chat["messages"][-1]["role"] == "assistant"
    streamed = datasets.load_dataset("parquet", data_files=str(corpus / "part-*.parquet"), split="train", streaming=True)
    assert [row["position"] for _, row in zip(range(5), streamed)] == list(range(5))


def test_the_folder_loads_with_datasets_at_one_shard_as_at_many(corpus, tmp_path, monkeypatch):
    """The README's `load_dataset("<build>/corpus")`: the dataset card names the shards, so one
    part beside two JSON manifests is still read as Parquet."""
    one = tmp_path / "one-shard"
    params = {"weights": {"encyclopedia": 8, "sft": 1}, "sft_epochs": SFT_EPOCHS, "seed": 1, "shard_rows": 100_000}
    run_sample([corpus.parent / "items"], one, params, StageManifest(stage="sample"), "test")
    assert len(list(one.glob("part-*.parquet"))) == 1 and (one / ".huggingface.yaml").is_file()
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets

    for folder in (one, corpus):
        loaded = datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))
        assert list(loaded) == ["train"]
        rows = json.loads((folder / "_corpus_manifest.json").read_text(encoding="utf-8"))["rows"]
        assert loaded["train"].num_rows == rows and loaded["train"]["position"] == list(range(rows))


def test_two_corpus_folders_of_one_name_do_not_share_a_datasets_cache(corpus, tmp_path, monkeypatch):
    """Every build writes `<workdir>/corpus`: a second build's folder, loaded after the first with
    the same cache, reads its own rows (with a fixed config name datasets served the first's)."""
    other = tmp_path / "other-build" / "corpus"
    params = {"weights": {"encyclopedia": 1, "sft": 1}, "sft_epochs": 1, "seed": 7, "shard_rows": 100_000}
    run_sample([corpus.parent / "items"], other, params, StageManifest(stage="sample"), "test")
    assert other.name == corpus.name
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets

    ids = {folder: pa.concat_tables(pq.read_table(p, columns=["id"]) for p in sorted(folder.glob("part-*.parquet"))).column("id").to_pylist() for folder in (corpus, other)}
    assert ids[corpus] != ids[other]
    for folder in (corpus, other, corpus):
        loaded = datasets.load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "cache"))
        assert loaded["id"] == ids[folder]


def test_exports_in_trainer_formats_keep_the_order(corpus, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    counts = export_corpus([corpus], out, ["sharegpt", "alpaca", "jsonl"])
    ordered = pq.read_table(corpus).sort_by("position").to_pylist()
    chat = [row for row in ordered if row["format"] == "chat"]
    text = [row for row in ordered if row["format"] == "text"]
    assert dict(counts) == {
        "sharegpt.jsonl": len(chat), "pretrain.jsonl": len(text),
        "alpaca.jsonl": len(chat), "corpus.jsonl": len(ordered),
    }

    def lines(name):
        return [json.loads(line) for line in (out / name).read_text(encoding="utf-8").splitlines()]

    sharegpt = lines("sharegpt.jsonl")
    assert [r["id"] for r in sharegpt] == [r["id"] for r in chat]
    for record, row in zip(sharegpt, chat):
        roles = [m["from"] for m in record["conversations"]]
        assert roles == ["human", "gpt"] * (len(roles) // 2)
        assert record["conversations"][-1]["value"] == row["messages"][-1]["content"]
    assert all("system" in r for r in sharegpt), "every row holds every column dataset_info.json maps"
    with_system = [r for r in sharegpt if r["system"]]
    assert len(with_system) == SFT_EPOCHS and with_system[0]["system"] == "你是一名中医师。"

    alpaca = lines("alpaca.jsonl")
    for record, row in zip(alpaca, chat):
        turns_ = [m for m in row["messages"] if m["role"] != "system"]
        assert record["output"] == turns_[-1]["content"] and record["instruction"] == turns_[-2]["content"]
        assert len(record["history"]) == len(turns_) // 2 - 1
    assert any(record["history"] for record in alpaca), "real dialogues have several rounds"
    assert [r["text"] for r in lines("pretrain.jsonl")] == [row["text"] for row in text]
    assert [r["position"] for r in lines("corpus.jsonl")] == list(range(len(ordered)))

    info = json.loads((out / DATASET_INFO).read_text(encoding="utf-8"))
    assert info["tcm_sharegpt"]["formatting"] == "sharegpt"
    assert info["tcm_sharegpt"]["tags"]["user_tag"] == "human"
    assert all((out / entry["file_name"]).is_file() for entry in info.values())

    # The same JSON lines load with datasets' json builder, as the trainers read them.
    import datasets

    loaded = datasets.load_dataset("json", data_files=str(out / "sharegpt.jsonl"), split="train", cache_dir=str(tmp_path / "cache"))
    assert loaded.num_rows == len(chat) and loaded[0]["conversations"][0]["from"] == "human"


def test_unknown_format_is_refused(corpus, tmp_path):
    with pytest.raises(ValueError, match="unknown export format 'parquet'"):
        export_corpus([corpus], tmp_path, ["parquet"])


def test_export_flow_writes_the_chosen_formats(corpus, tmp_path, prefect_harness):
    from flows.pipeline import export_flow

    result = export_flow(inputs=[str(corpus)], output=str(tmp_path / "export"), formats=["alpaca"])
    assert set(result["stats"]["files"]) == {"alpaca.jsonl", "pretrain.jsonl"}
    assert (tmp_path / "export" / "alpaca.jsonl").is_file() and (tmp_path / "export" / DATASET_INFO).is_file()
    total = sum(pq.read_metadata(path).num_rows for path in corpus.glob("part-*.parquet"))
    assert result["rows_in"] == {"corpus": total}


def test_sharegpt_lines_are_the_json_of_each_record(tmp_path):
    """The ShareGPT and pretrain lines are written from the columns' strings: each is exactly
    json.dumps of the row's record, escapes, a system turn, a null text and an empty chat too."""
    from schemas import CORPUS
    from transforms.export.formats import export_record

    awkward = 'say "补气"\\ then\n\ttab \x01\x1f end\u2028'
    rows = [
        {"messages": turns(("system", "你是\"医师\""), ("user", awkward), ("assistant", "答\r\n"))},
        {"messages": turns(("user", "问"), ("assistant", None))},
        {"messages": []},
        {"format": "text", "text": awkward},
        {"format": "text", "text": None},
        {"messages": turns(("user", "黄芪？"), ("assistant", "补气。"), ("user", "剂量？"), ("assistant", "九至三十克。"))},
    ]
    rows = [
        {"id": f"row-{i}\"", "position": i, "source": "s", "category": "sft", "format": "chat", "text": None, "meta": None, **row}
        for i, row in enumerate(rows)
    ]
    for row in rows:
        if row["format"] == "text":
            row["messages"] = None
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMAS[CORPUS]), corpus / "part-00000.parquet")
    out = tmp_path / "out"
    out.mkdir()
    export_corpus([corpus], out, ["sharegpt"])
    expected: dict[str, list[str]] = {}
    for row in pq.read_table(corpus).to_pylist():
        stem, record = export_record(row, "sharegpt")
        expected.setdefault(f"{stem}.jsonl", []).append(json.dumps(record, ensure_ascii=False) + "\n")
    for name, lines in expected.items():
        assert (out / name).read_text(encoding="utf-8") == "".join(lines)
