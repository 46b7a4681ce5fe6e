"""Packed sequences on a GPU: stream them through the reader to CUDA and run a forward pass with
varlen attention; print tokens per second and check the packing loss equality on the device.

Not part of the test suite (it needs a GPU). After `pip install -e '.[train]'` with a CUDA build
of torch (flash-attn optional); it imports only torch, numpy and pyarrow from the environment:

    python benchmarks/pack_gpu.py --packed WORKDIR/packed         # the pack stage's output
    python benchmarks/pack_gpu.py --synthetic                      # makes its own small packed data
    python benchmarks/pack_gpu.py --synthetic --device cpu --steps 2 --dim 64   # a smoke run anywhere

Attention: a varlen kernel over the batch joined into one row with `cu_seqlens` on CUDA
(flash-attention's `flash_attn_varlen_func` when flash-attn is installed, else PyTorch's own
`torch.nn.attention.varlen.varlen_attn`, torch >= 2.10), else PyTorch SDPA on [batch, seq_len]
rows with the block-diagonal causal mask from `seq_lens` (`--attention mask` forces it). The
check: for the first rows, the loss of every item inside its packed row equals its loss alone
(fp32, SDPA with the block mask: within 1e-5 on CPU, 5e-5 on CUDA; bf16 varlen: within 2e-2), and plain causal
attention is shown to differ.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from transforms.pack.check import TinyCausalLM, packed_vs_alone, token_losses, varlen_backend  # noqa: E402
from transforms.pack.reader import PackedDataset, block_causal_mask  # noqa: E402

HAN = "气血阴阳虚实寒热表里脏腑经络肝心脾肺肾胃胆肠膀胱三焦精神津液痰湿瘀风火燥暑邪正治法方药汤散丸膏丹君臣佐使黄芪人参当归川芎白芍地黄甘草桂枝麻黄柴胡"


def synthetic_packed(folder: Path, seq_len: int, rows: int = 4000) -> Path:
    """A corpus of random TCM-flavoured text and dialogues, a tokenizer trained on it, packed by
    the pack stage itself (no shared data, no hub)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from schemas import CORPUS_SCHEMA
    from schemas.dataset import StageManifest
    from transforms.engines.local import LocalEngine
    from transforms.pack.stage import run_pack
    from transforms.pack.tokenizer import train_bpe_tokenizer

    rng = random.Random(0)

    def sentence() -> str:
        return "".join(rng.choice(HAN) for _ in range(rng.randint(4, 16))) + rng.choice("，。；")

    records = []
    for i in range(rows):
        if i % 3:
            text = "".join(sentence() for _ in range(rng.randint(2, 60)))
            records.append({"id": f"t{i}", "position": i, "source": "synthetic", "category": "books", "format": "text", "messages": None, "text": text, "meta": None})
        else:
            messages = []
            for _ in range(rng.randint(1, 3)):
                messages += [{"role": "user", "content": "".join(sentence() for _ in range(rng.randint(1, 6)))},
                             {"role": "assistant", "content": "".join(sentence() for _ in range(rng.randint(3, 40)))}]
            records.append({"id": f"c{i}", "position": i, "source": "synthetic", "category": "sft", "format": "chat", "messages": messages, "text": None, "meta": None})
    corpus = folder / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for shard in range(2):
        pq.write_table(pa.Table.from_pylist(records[shard::2], schema=CORPUS_SCHEMA), corpus / f"part-{shard:05d}.parquet")
    tokenizer_dir = folder / "tokenizer"
    tokenizer_dir.mkdir(exist_ok=True)
    texts = [r["text"] or r["messages"][-1]["content"] for r in records[:2000]]
    train_bpe_tokenizer(texts, 4000).save(str(tokenizer_dir / "tokenizer.json"))
    params = {"tokenizer": str(tokenizer_dir / "tokenizer.json"), "seq_len": seq_len, "template": "chatml", "packing": "best_fit", "window": 1000,
              "overflow": {"text": "split", "chat": "truncate"}, "pad_to_multiple_of": None, "eos_token": None, "pad_token": None, "outputs": [], "row_group_rows": 64}
    out = folder / "packed"
    run_pack([corpus], out, params, StageManifest(stage="pack"), LocalEngine(1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packed", help="the pack stage's output folder")
    parser.add_argument("--synthetic", action="store_true", help="make a small packed dataset first")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=4096, help="with --synthetic")
    parser.add_argument("--attention", choices=("auto", "varlen", "mask"), default="auto")
    args = parser.parse_args()
    if not args.packed and not args.synthetic:
        parser.error("give --packed DIR or --synthetic")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or with --device cpu for a smoke run")
    packed = Path(args.packed) if args.packed else synthetic_packed(Path(tempfile.mkdtemp(prefix="pack-gpu-")), args.seq_len)
    attention = args.attention
    backend = varlen_backend() if device.type == "cuda" else None
    if attention == "auto":
        attention = "varlen" if backend else "mask"
    if attention == "varlen" and not backend:
        raise SystemExit("--attention varlen needs a CUDA device and flash-attn or torch >= 2.10")
    dataset = PackedDataset(packed, batch_size=args.batch_size)
    vocab = int(dataset.manifest.get("tokenizer", {}).get("vocab_size", 0)) or 65536
    seq_len = int(dataset.manifest.get("seq_len", args.seq_len))
    print(f"packed: {packed} ({dataset.total:,} sequences of {seq_len}); device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}; attention {attention}"
          f"{' (' + backend + ')' if attention == 'varlen' else ''}; torch {torch.__version__}")

    # 1. The check, in fp32 with SDPA and the block mask (and in bf16 with the varlen kernel).
    torch.manual_seed(0)
    checker = TinyCausalLM(vocab, dim=64, heads=4, layers=2, max_positions=seq_len).to(device).eval()
    rows = [row for row in PackedDataset(packed) if len(row["seq_lens"]) > 1][:3]
    if not rows:
        raise SystemExit("no packed row holds two items: nothing to check")
    # fp32 on CPU: 1e-5. CUDA's fp32 attention kernels order their sums differently for a
    # 4,096-token row than for an item alone: about 1e-6 of a ~10-nat loss (seen: 1.05e-5 on an
    # H200), against ~0.4 for a wrong mask.
    tolerance = 1e-5 if device.type == "cpu" else 5e-5
    for row in rows:
        tensors = [row[k].to(device) for k in ("input_ids", "labels", "position_ids")]
        good = packed_vs_alone(checker, *tensors, row["seq_lens"].tolist(), "mask")
        wrong = packed_vs_alone(checker, *tensors, row["seq_lens"].tolist(), "causal")
        line = f"check: {len(row['seq_lens'])} items in a row: |packed - alone| {good:.2e} with the block mask (fp32), {wrong:.2e} with plain causal attention"
        if attention == "varlen":
            varlen = packed_vs_alone(checker.to(torch.bfloat16), *tensors, row["seq_lens"].tolist(), "varlen")
            checker.float()
            line += f", {varlen:.2e} with the {backend} varlen kernel (bf16)"
            assert varlen < 2e-2, "varlen packing changed the loss"
        print(line)
        assert good < tolerance and wrong > 100 * good, "packing changed the loss"

    # 2. Throughput: reader -> device -> forward (bf16 on CUDA).
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = TinyCausalLM(vocab, dim=args.dim, heads=args.heads, layers=args.layers, max_positions=seq_len).to(device, dtype).eval()
    params = sum(p.numel() for p in model.parameters())
    loader = dataset.loader(num_workers=args.workers, collate="packed" if attention == "varlen" else "stacked", pin_memory=device.type == "cuda")
    steps = real = total = 0
    loss_sum = 0.0
    started = None
    with torch.no_grad():
        for batch in loader:
            ids = batch["input_ids"].to(device, non_blocking=True)
            labels = batch["labels"].to(device, non_blocking=True)
            positions = batch["position_ids"].to(device, non_blocking=True)
            if attention == "varlen":
                logits = model(ids, positions, "varlen", cu_seqlens=batch["cu_seqlens"].to(device), max_seqlen=batch["max_seqlen"])
                real += int(batch["seq_lens"].sum())
            else:
                mask = torch.stack([block_causal_mask(cu.to(device), ids.shape[1]) for cu in batch["cu_seqlens"]])
                logits = model(ids, positions, "mask", mask=mask)
                real += int(sum(int(s.sum()) for s in batch["seq_lens"]))
            loss = token_losses(logits, labels)
            loss_sum += float(loss.sum() / max(1, int((labels[:, 1:] != -100).sum())))
            total += ids.numel()
            steps += 1
            if steps == 3:  # warm-up done: start the clock
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started, real_at, total_at = time.perf_counter(), real, total
            if steps >= args.steps + 3:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    if started is None or steps <= 3:
        raise SystemExit("too few batches for a timing: lower --batch-size or give more data")
    seconds = time.perf_counter() - started
    figures = {"attention": attention, "kernel": backend if attention == "varlen" else "sdpa", "params_m": round(params / 1e6, 1), "steps": steps - 3, "batch": args.batch_size, "seq_len": seq_len,
               "tokens_per_s": round((total - total_at) / seconds), "item_tokens_per_s": round((real - real_at) / seconds),
               "mean_loss": round(loss_sum / steps, 4), "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else None}
    print(f"forward: {figures['tokens_per_s']:,} tokens/s ({figures['item_tokens_per_s']:,} item tokens/s), {params / 1e6:.0f}M parameters, "
          f"{args.batch_size} x {seq_len} per step, {steps - 3} steps")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
