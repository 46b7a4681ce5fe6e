"""Names and one-line descriptions of the flows, readable without importing Prefect."""

FLOWS = {
    "build-corpus": "run every stage, from sources to validated shards",
    "crawl": "fetch the configured web sources into raw pages",
    "ingest": "import books, monographs and dialogue datasets; extract documents from pages",
    "clean": "normalise text, redact personal data, tag language and quality scores (--dry-run: report only)",
    "select": "apply the [select] thresholds to the tags written by clean (--dry-run: report only)",
    "dedup": "remove exact and MinHash near-duplicates and repeated paragraphs; write the clusters audit",
    "decontaminate": "remove rows that contain evaluation items",
    "convert": "turn structured documents into conversations; pass dialogues through",
    "sample": "order everything by priority sampling into Parquet shards with a manifest",
    "validate": "check datasets with Great Expectations suites",
    "export": "write the corpus in trainer formats (sharegpt, alpaca, jsonl)",
    "pack": "tokenize the corpus and pack it into fixed-length sequences for GPU trainers ([pack] tokenizer)",
    "refresh": "crawl and import the sources again, clean them, dedup them against the build in --workdir",
    "train-domain-classifier": "train the fastText TCM domain classifier on [train_domain] sources; print held-out precision/recall",
}


def describe() -> str:
    width = max(len(name) for name in FLOWS)
    return "\n".join(f"{name:<{width}}  {text}" for name, text in FLOWS.items())
