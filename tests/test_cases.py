"""The shared fault cases (../shared/cases, each with EXPECTED.md) run through `flows run
build-corpus`, the command users run, and checked against what EXPECTED.md says."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from test_build import flows_cli

pytestmark = pytest.mark.slow


def build(folder: Path, config: str, prefect_home: Path) -> Path:
    workdir = folder / "build"
    run = flows_cli("run", "build-corpus", "--config", str(folder / config), "--workdir", str(workdir), prefect_home=prefect_home)
    assert run.returncode == 0, run.stderr[-3000:]
    return workdir


# LLaMA-Factory's DatasetAttr defaults (data/parser.py): with a "columns" entry, a column it does
# not name is None; without one, these defaults apply.
_ALPACA_DEFAULTS = {"prompt": "instruction", "query": "input", "response": "output", "history": None, "system": None}
_SHAREGPT_DEFAULTS = {"messages": "conversations", "system": None}


def llama_factory_examples(folder: Path, entry: dict, cache: Path) -> list[dict]:
    """Load one dataset_info.json entry with `datasets` and read every row through its column
    mapping the way LLaMA-Factory's converters do (`example[column]`, so a mapped column missing
    from the loaded dataset is a KeyError): [{"prompt", "response", "system"}]."""
    import datasets

    loaded = datasets.load_dataset("json", data_files=str(folder / entry["file_name"]), split="train", cache_dir=str(cache))
    formatting = entry.get("formatting", "alpaca")
    defaults = _SHAREGPT_DEFAULTS if formatting == "sharegpt" else _ALPACA_DEFAULTS
    columns = {k: entry["columns"].get(k) for k in defaults} if "columns" in entry else dict(defaults)
    tags = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt", **entry.get("tags", {})}
    examples = []
    for example in loaded:
        system = example[columns["system"]] if columns["system"] else ""
        if formatting == "sharegpt":
            messages = example[columns["messages"]]
            roles = [m[tags["role_tag"]] for m in messages]
            assert roles == [tags["user_tag"], tags["assistant_tag"]] * (len(roles) // 2), roles
            prompt, response = messages[-2][tags["content_tag"]], messages[-1][tags["content_tag"]]
        else:
            if columns["history"]:
                assert isinstance(example[columns["history"]], list)
            query = [example[c] for c in (columns["prompt"], columns["query"]) if c and example[c]]
            prompt = "\n".join(query)
            response = example[columns["response"]] if columns["response"] else ""
        assert isinstance(system, str)
        examples.append({"prompt": prompt, "response": response, "system": system})
    return examples


def test_export_columns_case_loads_through_dataset_info(tmp_path, prefect_home, monkeypatch, shared_case):
    """export-columns: every mapped column is on every exported row, and no two export files are
    byte-identical copies registered under two names."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    folder = shared_case("export-columns")
    export = build(folder, "build.toml", prefect_home) / "stages" / "export"
    info = json.loads((export / "dataset_info.json").read_text(encoding="utf-8"))
    assert {"tcm_sharegpt", "tcm_alpaca"} <= set(info)
    contents = {name: (export / entry["file_name"]).read_bytes() for name, entry in info.items()}
    assert len(set(contents.values())) == len(contents), "two registered names, one content"
    assert len({entry["file_name"] for entry in info.values()}) == len(info)
    answers = {"黄芪有什么功效？": "补气升阳，固表止汗，利水消肿，生津养血，行滞通痹，托毒排脓，敛疮生肌。", "当归有什么功效？": "补血活血，调经止痛，润肠通便。"}
    for name in ("tcm_sharegpt", "tcm_alpaca"):
        examples = llama_factory_examples(export, info[name], tmp_path / "cache")
        assert {e["prompt"]: e["response"] for e in examples} == answers, name
        assert all(e["system"] == "" for e in examples)
    for name, entry in info.items():
        if name not in ("tcm_sharegpt", "tcm_alpaca"):
            assert llama_factory_examples(export, entry, tmp_path / "cache")


def test_dedup_keeps_the_clean_copy_case(tmp_path, prefect_home, shared_case):
    """dedup-keeps-clean-copy: A, its one-character variant B, its traditional form C and its copy
    padded with spaced ASCII punctuation D are one cluster; the cluster keeps A, not the longer D."""
    folder = shared_case("dedup-keeps-clean-copy")
    dedup = build(folder, "config.toml", prefect_home) / "stages" / "dedup"
    kept = {json.loads(m)["file"] for m in pq.read_table(dedup / "documents", columns=["meta"]).column("meta").to_pylist()}
    rejected = pq.read_table(dedup / "rejected" / "documents").to_pylist()
    gone = {json.loads(r["meta"])["file"]: r["reason"] for r in rejected}
    assert "A.txt" in kept and "G_unrelated.txt" in kept
    assert {"B_one_char.txt", "C_traditional.txt", "D_punct_spaces.txt"} <= set(gone), gone
    clusters = pq.read_table(dedup / "clusters").to_pylist()
    a_id = next(r["id"] for r in pq.read_table(dedup / "documents").to_pylist() if json.loads(r["meta"])["file"] == "A.txt")
    assert {r["cluster"] for r in clusters} == {a_id}
    assert all(reason.endswith(a_id) for reason in gone.values())
