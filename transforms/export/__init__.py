"""Export: the corpus as training files (ShareGPT, Alpaca, JSONL) with LLaMA-Factory's dataset_info."""
