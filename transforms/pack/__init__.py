"""Tokenize and pack the corpus for GPU trainers (the pack stage), and read it back.

- `tokenizer`: a user's tokenizer.json or Hugging Face tokenizer folder, its chat template.
- `render`: corpus rows as token ids and labels (-100 on system and user tokens).
- `packing`: which items share a sequence (`greedy`, `best_fit`).
- `stage`: the stage over corpus shards, the packed shards and their manifest.
- `megatron`: Megatron-LM's indexed dataset (.bin/.idx).
- `reader`: a PyTorch IterableDataset over the packed shards (needs torch: the `[train]` extra;
  nothing else here imports torch).
"""
