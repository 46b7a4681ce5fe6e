"""Tokenize and pack, side by side in one run, on the corpus of a full build, with one tokenizer:

1. ours: `flows run pack` (the command users run; best_fit, window 1000, huatuo template),
   also on the first corpus shard alone, to show memory does not grow with the corpus;
2. HuatuoGPT-II's released approach: benchmarks/pack_huatuo_reference.py (per-item encode,
   Python list concatenation, greedy packing in batches of 256, datasets.from_dict);
3. Hugging Face `datasets.map` with batched fast-tokenizer calls (`encode_batch`), then a
   batched greedy packing map, saved with save_to_disk;
4. the `tokenizers` library alone (every text and message encoded once, nothing else): the
   ceiling of a packer that encodes through `tokenizers` (ours encodes byte-level BPE through
   its tiktoken twin, see transforms/pack/bpe_twin.py).

The command's CPU seconds include what the shared local Prefect server spent meanwhile (it is no
child of the command).

Each runs as its own process; measured: wall seconds, CPU seconds of the process tree (every
core), tokens (not padding) per CPU second = tokens per second per core, peak resident memory of
the process tree (sampled every 0.1 s), padding share at seq_len. The tokenizer is a byte-level
BPE (32k) trained here on the corpus's own text (no hub), saved in WORKDIR/tokenizer/.

    python benchmarks/pack.py [--corpus /work/before/build/corpus] [--workdir /tmp/pack-bench] [--shards N]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from measure import run_sampled, server_cpu  # noqa: E402
IGNORE = -100


# -- measuring a process tree -----------------------------------------------------------------


def measure(command: list[str], env: dict | None = None) -> dict:
    """Run `command`; wall seconds and the peak RSS of its process tree."""
    result = run_sampled(command, {**os.environ, **(env or {})}, REPO)
    if result["returncode"] != 0:
        raise SystemExit(f"{command[:4]} failed ({result['returncode']}):\n{result['stderr'][-3000:]}")
    return {"wall": result["wall"], "peak_rss": result["tree_peak"], "stdout": result["stdout"], "stderr": result["stderr"]}


def run(command: list[str], env: dict | None = None) -> dict:
    """`measure`, plus the CPU seconds of the run (its waited-for descendants included)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = measure(command, env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result["cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result


# -- the datasets.map method ------------------------------------------------------------------


def datasets_map(corpus: str, tokenizer_path: str, output: str, seq_len: int, shards: int) -> None:
    """Tokenize with `datasets.map(batched=True)` and the fast tokenizer's batch call, rendering
    the huatuo turns as our stage does; pack greedily per map batch; save_to_disk."""
    import datasets
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(tokenizer_path)
    eos = tokenizer.token_to_id("<|endoftext|>")
    files = sorted(str(p) for p in Path(corpus).glob("part-*.parquet"))
    files = files[:shards] if shards else files
    cache = Path(output + ".cache")
    dataset = datasets.Dataset.from_parquet(files, cache_dir=str(cache), columns=["format", "text", "messages"])

    def tokenize(batch):
        segments, owners = [], []  # (text, trained) per row
        for row, (fmt, text, messages) in enumerate(zip(batch["format"], batch["text"], batch["messages"])):
            if fmt != "chat":
                segments.append((text, True, True))
                owners.append(row)
                continue
            pending, started = "", False
            for m in messages:
                if m["role"] == "system":
                    pending += m["content"] + "\n"
                elif m["role"] == "user":
                    pending += ("\n" if started else "") + "<问>：" + m["content"]
                    started = True
                else:
                    pending += ("\n" if started else "") + "<答>："
                    segments += [(pending, False, False), (m["content"], True, True)]
                    owners += [row, row]
                    pending, started = "", True
        encoded = tokenizer.encode_batch([s[0] for s in segments], add_special_tokens=False)
        ids = [[] for _ in batch["format"]]
        labels = [[] for _ in batch["format"]]
        for (text, trained, eos_after), encoding, row in zip(segments, encoded, owners):
            ids[row] += encoding.ids
            labels[row] += encoding.ids if trained else [IGNORE] * len(encoding.ids)
            if eos_after:
                ids[row].append(eos)
                labels[row].append(eos)
        return {"input_ids": [i[:seq_len] for i in ids], "labels": [lab[:seq_len] for lab in labels]}

    def pack(batch):
        out_ids, out_labels, cur_ids, cur_labels = [], [], [], []
        for ids, labels in zip(batch["input_ids"], batch["labels"]):
            if len(cur_ids) + len(ids) > seq_len and cur_ids:
                pad = seq_len - len(cur_ids)
                out_ids.append(cur_ids + [eos] * pad)
                out_labels.append(cur_labels + [IGNORE] * pad)
                cur_ids, cur_labels = [], []
            cur_ids = cur_ids + ids
            cur_labels = cur_labels + labels
        if cur_ids:
            pad = seq_len - len(cur_ids)
            out_ids.append(cur_ids + [eos] * pad)
            out_labels.append(cur_labels + [IGNORE] * pad)
        return {"input_ids": out_ids, "labels": out_labels}

    tokenized = dataset.map(tokenize, batched=True, batch_size=1000, remove_columns=dataset.column_names)
    tokens = sum(len(ids) for part in tokenized.iter(batch_size=10_000) for ids in part["input_ids"])
    packed = tokenized.map(pack, batched=True, batch_size=1000, remove_columns=tokenized.column_names)
    packed.save_to_disk(output)
    shutil.rmtree(cache, ignore_errors=True)
    capacity = packed.num_rows * seq_len
    print(json.dumps({"items": dataset.num_rows, "sequences": packed.num_rows, "tokens": tokens, "padding_share": round(1 - tokens / capacity, 6)}))


# -- the tokenizer alone ----------------------------------------------------------------------


def tokenizer_alone(corpus: str, tokenizer_path: str, shards: int) -> None:
    """The ceiling of a packer that encodes with `tokenizers`: read the corpus, encode every text and
    every message's content once in batches (`encode_batch_fast`, no offsets), count the tokens;
    no template, no labels, no packing, nothing written."""
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(tokenizer_path)
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    files = sorted(Path(corpus).glob("part-*.parquet"))
    files = files[:shards] if shards else files
    tokens = items = 0
    for file in files:
        table = pq.read_table(file, columns=["text", "messages"])
        texts = [t for t in table.column("text").to_pylist() if t]
        texts += [m["content"] for ms in table.column("messages").to_pylist() if ms for m in ms if m["content"]]
        items += table.num_rows
        for start in range(0, len(texts), 2048):
            tokens += sum(len(e.ids) for e in encode(texts[start : start + 2048], add_special_tokens=False))
    print(json.dumps({"items": items, "sequences": 0, "tokens": tokens, "padding_share": 0.0}))


# -- the run ----------------------------------------------------------------------------------


def make_tokenizer(corpus: Path, folder: Path, vocab: int) -> Path:
    if (folder / "tokenizer.json").is_file():
        return folder
    import pyarrow.parquet as pq

    sys.path.insert(0, str(REPO))
    from transforms.pack.tokenizer import train_bpe_tokenizer

    table = pq.read_table(sorted(corpus.glob("part-*.parquet"))[0], columns=["text", "messages"]).slice(0, 12000)
    texts = [t for t in table.column("text").to_pylist() if t]
    texts += [m["content"] for ms in table.column("messages").to_pylist() if ms for m in ms]
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train_bpe_tokenizer(texts, vocab).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}), encoding="utf-8")
    print(f"tokenizer: byte-level BPE, {vocab} tokens, trained on {len(texts)} texts of the corpus in {time.perf_counter() - started:.1f} s")
    return folder


def corpus_subset(corpus: Path, shards: int, folder: Path) -> Path:
    if not shards:
        return corpus
    folder.mkdir(parents=True, exist_ok=True)
    for file in sorted(corpus.glob("part-*.parquet"))[:shards]:
        link = folder / file.name
        if not link.exists():
            link.symlink_to(file)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="/work/before/build/corpus")
    parser.add_argument("--workdir", default="/tmp/pack-bench")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--shards", type=int, default=0, help="only the first N corpus shards (0: all)")
    parser.add_argument("--methods", default="ours,huatuo,datasets,tokenizer")
    parser.add_argument("--datasets-map", nargs=3, metavar=("CORPUS", "TOKENIZER", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer-alone", nargs=2, metavar=("CORPUS", "TOKENIZER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.datasets_map:
        datasets_map(*args.datasets_map, args.seq_len, args.shards)
        return
    if args.tokenizer_alone:
        tokenizer_alone(*args.tokenizer_alone, args.shards)
        return
    corpus = Path(args.corpus)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(corpus, work / "tokenizer", args.vocab)
    subset = corpus_subset(corpus, args.shards, work / "corpus")
    n_shards = len(list(subset.glob("part-*.parquet")))
    # A busy machine starts Prefect's temporary server slowly: give it time rather than fail.
    env = {"PYTHONPATH": str(REPO), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_HOME": str(work / "prefect"),
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")}
    results = {}
    methods = args.methods.split(",")

    def ours(name: str, corpus_dir: Path) -> None:
        out = work / ("out-ours-" + corpus_dir.name)
        shutil.rmtree(out, ignore_errors=True)
        config = work / "pack.toml"
        config.write_text(f'[pack]\ntokenizer = "{tokenizer}"\nseq_len = {args.seq_len}\ntemplate = "huatuo"\npacking = "best_fit"\nwindow = 1000\n\n[engine]\nworkers = 2\n', encoding="utf-8")
        server_before = server_cpu(work / "prefect")
        result = run([sys.executable, "-m", "flows", "run", "pack", "--input", str(corpus_dir), "--output", str(out), "--config", str(config)], env)
        result["server_cpu"] = server_cpu(work / "prefect") - server_before
        result["cpu"] += result["server_cpu"]
        figures = json.loads((out / "_manifest.json").read_text(encoding="utf-8"))["stats"]["pack"]
        result.update(tokens=figures["tokens"], sequences=figures["sequences"], padding=figures["padding_share"], items=figures["items"],
                      stage_cpu=figures["cpu_seconds"], trained=figures["trained_tokens"], encoder=figures["tokenizer"].get("encoder", "tokenizers"))
        results[name] = result

    if "ours" in methods:
        ours("flows run pack (best_fit)", subset)
        if n_shards > 1:
            ours("flows run pack, 1st shard only", corpus_subset(corpus, 1, work / "corpus-1"))
    if "huatuo" in methods:
        out = work / "out-huatuo"
        shutil.rmtree(out, ignore_errors=True)
        result = run([sys.executable, str(REPO / "benchmarks/pack_huatuo_reference.py"), str(subset), str(tokenizer / "tokenizer.json"), str(out), "--max-seq-len", str(args.seq_len)], env)
        figures = json.loads(result["stdout"].strip().splitlines()[-1])
        result.update(tokens=figures["tokens"], sequences=figures["sequences"], padding=figures["padding_share"], items=figures["items"])
        results["HuatuoGPT-II reference (per-item encode)"] = result
    if "datasets" in methods:
        out = work / "out-datasets"
        shutil.rmtree(out, ignore_errors=True)
        result = run([sys.executable, __file__, "--seq-len", str(args.seq_len), "--datasets-map", str(subset), str(tokenizer / "tokenizer.json"), str(out)], env)
        figures = json.loads(result["stdout"].strip().splitlines()[-1])
        result.update(tokens=figures["tokens"], sequences=figures["sequences"], padding=figures["padding_share"], items=figures["items"])
        results["datasets.map (batched encode_batch)"] = result

    if "tokenizer" in methods:
        result = run([sys.executable, __file__, "--tokenizer-alone", str(subset), str(tokenizer / "tokenizer.json")], env)
        figures = json.loads(result["stdout"].strip().splitlines()[-1])
        result.update(tokens=figures["tokens"], sequences=0, padding=0.0, items=figures["items"])
        results["tokenizers library alone (encode only)"] = result

    print(f"\ncorpus: {corpus} ({n_shards} shard(s)); seq_len {args.seq_len}; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
    print(f"{'method':<44} {'wall s':>7} {'CPU s':>7} {'tokens':>11} {'tok/s/core':>10} {'peak MB':>8} {'seqs':>6} {'padding':>8}")
    for name, r in results.items():
        print(f"{name:<44} {r['wall']:>7.1f} {r['cpu']:>7.1f} {r['tokens']:>11,} {r['tokens'] / r['cpu']:>10,.0f} {r['peak_rss'] / 2**20:>8.0f} {r['sequences']:>6,} {r['padding']:>8.2%}")
    mine = results.get("flows run pack (best_fit)")
    if mine:
        print(f"\nours inside the stage (no Prefect start-up): {mine['stage_cpu']:.1f} CPU s, {mine['tokens'] / mine['stage_cpu']:,.0f} tokens/s/core; "
              f"{mine['trained']:,} trained tokens; {mine['items']:,} items")
        others = [r["tokens"] / r["cpu"] for n, r in results.items() if not n.startswith(("flows", "tokenizer"))]
        if others:
            print(f"ours / faster reference, tokens per second per core: {mine['tokens'] / mine['cpu'] / max(others):.2f}x (whole command), "
                  f"{mine['tokens'] / mine['stage_cpu'] / max(others):.2f}x (stage)")
        ceiling = next((r for n, r in results.items() if n.startswith("tokenizers library")), None)
        if ceiling:
            rate = ceiling["tokens"] / ceiling["cpu"]
            print(f"the tokenizers library alone: {rate:,.0f} tokens/s/core; the stage runs at {mine['tokens'] / mine['stage_cpu'] / rate:.0%} of it "
                  f"(encoder: {mine['encoder']})")
        if mine.get("server_cpu"):
            print(f"the shared Prefect server spent {mine['server_cpu']:.1f} CPU s during the command (counted in its CPU s)")


if __name__ == "__main__":
    main()
