"""A tokenizer trained on the shared data and a small corpus of its real text, for the pack tests."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from schemas import CORPUS_SCHEMA, content_id

# Written for these tests in the shape of Qwen2's template: a default system turn, ChatML turns.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\n你是一位中医助手。<|im_end|>\\n' }}{%- endif %}\n"
    "{%- for message in messages %}"
    "{%- if message['role'] != 'system' or not loop.first %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}\n"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}\n"
)
SYSTEM_PROMPT = "请以中医师的身份回答。"


def pharmacopoeia_texts(shared_data: Path) -> list[str]:
    """Monograph paragraphs: runs of 6 non-empty lines of the 2022 pharmacopoeia."""
    lines = [line.strip() for line in (shared_data / "corpus/pharmacopoeia/2022年中药药典.txt").read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    return ["\n".join(lines[i : i + 6]) for i in range(0, len(lines), 6)]


def dialogues(shared_data: Path) -> list[list[dict]]:
    """CMtMedQA multi-turn doctor-patient dialogues as messages."""
    records = json.loads((shared_data / "instructions/cmtmedqa_test.json").read_text(encoding="utf-8"))
    out = []
    for record in records:
        if not record.get("history") or not record.get("output"):
            continue
        messages = []
        for user, assistant in record["history"]:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        messages += [{"role": "user", "content": record["instruction"]}, {"role": "assistant", "content": record["output"]}]
        out.append(messages)
    return out


def make_tokenizer_folder(shared_data: Path, folder: Path, vocab_size: int = 3000) -> Path:
    """A Hugging Face style tokenizer folder: tokenizer.json trained here, tokenizer_config.json
    with the chat template and special tokens."""
    from transforms.pack.tokenizer import train_bpe_tokenizer

    texts = pharmacopoeia_texts(shared_data)[:1500]
    texts += [m["content"] for d in dialogues(shared_data)[:300] for m in d]
    tokenizer = train_bpe_tokenizer(texts, vocab_size)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"chat_template": CHAT_TEMPLATE, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None,
              "tokenizer_class": "Qwen2Tokenizer", "model_max_length": 32768}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    return folder


def corpus_rows(shared_data: Path, texts: int = 240, chats: int = 120, seed: int = 0) -> list[dict]:
    """Corpus rows of real text in a priority-like order: monograph texts (some joined into
    texts longer than a short seq_len), dialogues (a third with a system turn), one dialogue too
    long for any short sequence and one without an answer."""
    rng = random.Random(seed)
    paragraphs = pharmacopoeia_texts(shared_data)
    rows = []
    for i in range(texts):
        text = "\n".join(paragraphs[i * 3 : i * 3 + 40]) if i % 40 == 7 else paragraphs[i * 3]
        rows.append({"id": content_id("t", text, str(i)), "source": "pharmacopoeia", "category": "encyclopedia", "format": "text", "messages": None, "text": text})
    for i, messages in enumerate(dialogues(shared_data)[:chats]):
        if i % 3 == 0:
            messages = [{"role": "system", "content": SYSTEM_PROMPT}, *messages]
        if i == 5:
            messages = messages[:-1] + [{"role": "assistant", "content": messages[-1]["content"] * 30}]
        if i == 9:
            messages = [messages[0] if messages[0]["role"] == "user" else messages[1]]
        rows.append({"id": content_id("c", json.dumps(messages, ensure_ascii=False)), "source": "cmtmedqa", "category": "sft", "format": "chat", "messages": messages, "text": None})
    rng.shuffle(rows)
    for position, row in enumerate(rows):
        row["position"] = position
        row["meta"] = None
    return rows


def write_corpus(rows: list[dict], folder: Path, shards: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(rows) // shards)
    for shard in range(shards):
        part = rows[shard * per : (shard + 1) * per]
        table = pa.Table.from_pylist(part, schema=CORPUS_SCHEMA)
        pq.write_table(table, folder / f"part-{shard:05d}.parquet", row_group_size=50)
    (folder / "_corpus_manifest.json").write_text(json.dumps({"rows": len(rows)}), encoding="utf-8")
    return folder
