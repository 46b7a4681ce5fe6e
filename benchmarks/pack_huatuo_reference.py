"""HuatuoGPT-II's released tokenize-and-pack step, written small, as the reference of benchmarks/pack.py.

Their adaption/one_stage_training/data_process.py, with the same tokenizer (through `tokenizers`,
as their `use_fast=True` AutoTokenizer runs it): every item is encoded on its own, turn by turn
(`<问>：` / `\\n<答>：`, prompt labels -100), EOS appended; items are concatenated in Python lists in
training order, a sequence closed when the next item does not fit, padded to max_seq_len, and
the packing restarts at every DataLoader batch of 256 items; everything is held in memory and
saved with `datasets.Dataset.from_dict(...).save_to_disk`. Text rows, which their release had
already turned into dialogues, are encoded as one trained turn plus EOS.

    python benchmarks/pack_huatuo_reference.py CORPUS_DIR TOKENIZER_JSON OUT_DIR [--max-seq-len 4096]

Prints one JSON line: items, sequences, tokens (not padding), padding share.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow.parquet as pq
from tokenizers import Tokenizer

IGNORE = -100
BATCH = 256  # their train_bsz_per_gpu: packing restarts at each batch


def preprocess(tokenizer: Tokenizer, row: dict, max_seq_len: int, eos: int) -> dict:
    roles = ("<问>：", "<答>：")
    sep = "\n"
    ignore_len = len(tokenizer.encode(sep + roles[1], add_special_tokens=False).ids)
    input_ids: list[int] = []
    labels: list[int] = []
    if row["format"] != "chat":
        ids = tokenizer.encode(row["text"], add_special_tokens=False).ids[: max_seq_len - 1]
        return {"input_ids": ids + [eos], "labels": ids + [eos]}
    turns = [m for m in row["messages"] if m["role"] != "system"]
    for ind, turn in enumerate(turns):
        if ind % 2 == 1:
            value_ids = tokenizer.encode(sep + roles[1] + turn["content"], add_special_tokens=False).ids[:max_seq_len]
            input_ids += value_ids
            labels += [IGNORE] * ignore_len + value_ids[ignore_len:]
            if len(labels) >= max_seq_len:
                break
        else:
            pre = sep if input_ids else ""
            value_ids = tokenizer.encode(pre + roles[0] + turn["content"], add_special_tokens=False).ids[:max_seq_len]
            input_ids += value_ids
            labels += ([eos] + [IGNORE] * (len(value_ids) - 1)) if labels else [IGNORE] * len(value_ids)
    input_ids.append(eos)
    labels.append(eos)
    return {"input_ids": input_ids[:max_seq_len], "labels": labels[:max_seq_len]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("corpus")
    parser.add_argument("tokenizer")
    parser.add_argument("output")
    parser.add_argument("--max-seq-len", type=int, default=4096)
    parser.add_argument("--eos", default="<|endoftext|>")
    parser.add_argument("--shards", type=int, default=0, help="only the first N corpus shards (0: all)")
    args = parser.parse_args()
    import datasets

    tokenizer = Tokenizer.from_file(args.tokenizer)
    eos = tokenizer.token_to_id(args.eos)
    pad = eos
    files = sorted(Path(args.corpus).glob("part-*.parquet"))
    files = files[: args.shards] if args.shards else files
    all_input_ids, all_labels = [], []
    items = tokens = 0
    batch: list[dict] = []

    def flush(batch: list[dict]) -> None:
        cur_input: list[int] = []
        cur_label: list[int] = []
        for da in batch:
            if len(da["input_ids"]) + len(cur_input) <= args.max_seq_len:
                cur_input += da["input_ids"]
                cur_label += da["labels"]
            else:
                pad_len = args.max_seq_len - len(cur_input)
                all_input_ids.append(cur_input + [pad] * pad_len)
                all_labels.append(cur_label + [IGNORE] * pad_len)
                cur_input, cur_label = da["input_ids"], da["labels"]
        pad_len = args.max_seq_len - len(cur_input)
        all_input_ids.append(cur_input + [pad] * pad_len)
        all_labels.append(cur_label + [IGNORE] * pad_len)

    for file in files:
        for row in pq.read_table(file, columns=["format", "text", "messages"]).to_pylist():
            da = preprocess(tokenizer, row, args.max_seq_len, eos)
            items += 1
            tokens += len(da["input_ids"])
            batch.append(da)
            if len(batch) == BATCH:
                flush(batch)
                batch = []
    if batch:
        flush(batch)
    datasets.Dataset.from_dict({"input_ids": all_input_ids, "labels": all_labels}).save_to_disk(args.output)
    capacity = len(all_input_ids) * args.max_seq_len
    print(json.dumps({"items": items, "sequences": len(all_input_ids), "tokens": tokens, "padding_share": round(1 - tokens / capacity, 6)}))


if __name__ == "__main__":
    main()
