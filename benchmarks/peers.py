"""Side by side with the peers, in one run: near-duplicate removal and character-level filtering,
through the commands a user runs, per CPU-second.

    python benchmarks/peers.py [--shared ../shared/data] [--passages 37648] [--copies 10000]
                               [--data-juicer-python PATH] [--datatrove-python PATH] [--keep DIR] [--dedup-only]
                               [--data-juicer-filters-only]

Installs nothing: each peer runs where it is installed and is reported as not installed
otherwise. datatrove (0.10.1) and rensa (0.5.0) install into this project's environment without
changing its pins and are looked for there; py-data-juicer pins older dill and multiprocess, so it
lives in a virtual environment of its own, named with --data-juicer-python (or the environment
variable TCM_DATA_JUICER_PYTHON). None of them is a dependency of the project.

The input: `--passages` passages of 500 characters cut from the shared ancient books (at random
offsets, benchmarks/dedup_eval.py), followed by a near-copy of each of the first `--copies`
(characters substituted, inserted and deleted at the edit rates of dedup_eval.EDIT_RATES):
47,648 rows by default, 10,000 of them planted.

Dedup, every tool at Jaccard 0.8 over 5-character shingles of the text:
- `flows run dedup` (this project, the whole command: Prefect, the stage, the manifest);
- datatrove's MinHash pipeline (signatures, buckets, clusters, filter on a LocalPipelineExecutor)
  with a character tokenizer (its word tokenizers give Chinese no shingles), the same
  bands x rows as ours;
- data-juicer's `document_minhash_deduplicator` (character tokens, window 5, 128 permutations).
Filters: `flows run clean` then `flows run select` (every rule: normalisation, repair, language,
quality tags, entries, thresholds) against data-juicer's six character-level filters
(alphanumeric, character repetition, special characters, text length, maximum and average line
length) with their defaults. The MinHash cores, in this process: this project's signatures of
the match forms against rensa's RMinHash over the same shingles.

Printed per tool: CPU seconds of its whole process tree (user + system, children included; for
`flows run`, with what the shared Prefect server spent meanwhile), peak resident memory of its
largest process, rows removed, and for dedup the recall on the
planted copies whose exact Jaccard with their original is at least 0.8 and the rows removed that
are no part of a planted pair.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.dedup_eval import EDIT_RATES, load_passages, plant_copy  # noqa: E402

THRESHOLD = 0.8
NGRAM = 5

# Runs a command and prints the CPU seconds and peak memory of its process tree as JSON.
_MEASURE = """
import json, resource, subprocess, sys
done = subprocess.run(sys.argv[2:], capture_output=True, text=True)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as out:
    json.dump({"rc": done.returncode, "cpu": usage.ru_utime + usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024,
               "tail": (done.stdout + done.stderr)[-3000:]}, out)
"""

_DATATROVE = """
import json, sys
from datatrove.data import Document
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.pipeline.writers import JsonlWriter

source, work, bands, rows = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

import xxhash
import datatrove.utils.hashes.xxhash as datatrove_xxhash

if int(xxhash.VERSION.split(".")[0]) >= 4:
    # xxhash 4 hashes bytes only; datatrove 0.10 hands it str, as xxhash 3 took (encoded as UTF-8).
    datatrove_xxhash.xxhash64 = lambda text: xxhash.xxh64_intdigest(text.encode("utf-8") if isinstance(text, str) else text)
    datatrove_xxhash.xxhash32 = lambda text: xxhash.xxh32_intdigest(text.encode("utf-8") if isinstance(text, str) else text)


class Characters:
    # datatrove's word tokenizers give a Chinese clause as one token: shingle characters instead.
    def word_tokenize(self, text, *args, **kwargs):
        return [c for c in text if not c.isspace()]


class CharacterSignature(MinhashDedupSignature):
    def __init__(self, *args, **kwargs):
        import datatrove.pipeline.dedup.minhash as module

        loader, module.load_word_tokenizer = module.load_word_tokenizer, lambda language: Characters()
        try:
            super().__init__(*args, **kwargs)
        finally:
            module.load_word_tokenizer = loader


def documents(data=None, rank=0, world_size=1):
    with open(source, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            yield Document(text=row["text"], id=row["id"])


config = MinhashConfig(n_grams=5, num_buckets=bands, hashes_per_bucket=rows)
for pipeline in (
    [documents, CharacterSignature(output_folder=f"{work}/signatures", config=config)],
    [MinhashDedupBuckets(input_folder=f"{work}/signatures", output_folder=f"{work}/buckets", config=config)],
    [MinhashDedupCluster(input_folder=f"{work}/buckets", output_folder=f"{work}/remove_ids", config=config)],
    [documents, MinhashDedupFilter(input_folder=f"{work}/remove_ids", exclusion_writer=JsonlWriter(f"{work}/removed", compression=None)),
     JsonlWriter(f"{work}/kept", compression=None)],
):
    tasks = bands if pipeline[0].__class__.__name__ == "MinhashDedupBuckets" else 1
    LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1, logging_dir=f"{work}/logs/{len(pipeline)}-{tasks}").run()
import glob
removed = [json.loads(line)["id"] for path in glob.glob(f"{work}/removed/*.jsonl") for line in open(path, encoding="utf-8")]
json.dump(removed, open(f"{work}/removed_ids.json", "w"))
"""

_DATA_JUICER_DEDUP = """
import json, sys
from data_juicer.core.data import NestedDataset
from data_juicer.ops.deduplicator.document_minhash_deduplicator import DocumentMinhashDeduplicator
rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
dataset = NestedDataset.from_list(rows)
op = DocumentMinhashDeduplicator(tokenization="character", window_size=5, num_permutations=128, jaccard_threshold=0.8)
kept = {r["id"] for r in op.run(dataset)}
json.dump([r["id"] for r in rows if r["id"] not in kept], open(sys.argv[2], "w"))
"""

_DATA_JUICER_FILTERS = """
import json, sys
from data_juicer.core.data import NestedDataset
from data_juicer.ops.filter import (AlphanumericFilter, AverageLineLengthFilter, CharacterRepetitionFilter,
                                    MaximumLineLengthFilter, SpecialCharactersFilter, TextLengthFilter)
rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
dataset = NestedDataset.from_list(rows)
for op in (AlphanumericFilter(), CharacterRepetitionFilter(), SpecialCharactersFilter(), TextLengthFilter(),
           MaximumLineLengthFilter(), AverageLineLengthFilter()):
    dataset = op.run(dataset)
kept = {r["id"] for r in dataset}
json.dump([r["id"] for r in rows if r["id"] not in kept], open(sys.argv[2], "w"))
"""


def build_rows(books: Path, passages: int, copies: int, seed: int = 11) -> tuple[list[dict], dict[str, str]]:
    """The rows (id, text) and, for each planted copy, the id of its original."""
    texts = load_passages(books, passages)
    rng = random.Random(seed)
    alphabet = "".join(sorted(set("".join(texts[:2000]))))
    rows = [{"id": f"p{i:06d}", "text": t} for i, t in enumerate(texts)]
    originals = {}
    for i in range(min(copies, passages)):
        rows.append({"id": f"c{i:06d}", "text": plant_copy(texts[i], EDIT_RATES[i % len(EDIT_RATES)], rng, alphabet)})
        originals[f"c{i:06d}"] = f"p{i:06d}"
    return rows, originals


def write_inputs(rows: list[dict], folder: Path) -> tuple[Path, Path]:
    """The rows as a documents dataset (for `flows run`) and as JSON lines (for the peers)."""
    import pyarrow as pa

    from schemas.dataset import DatasetWriter, StageManifest

    dataset = folder / "input"
    with DatasetWriter(dataset, StageManifest(stage="input")) as writer:
        writer.write("documents", pa.Table.from_pylist([{**r, "source": "books", "category": "books"} for r in rows]))
        writer.commit()
    lines = folder / "input.jsonl"
    with lines.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return dataset, lines


def measure(command: list[str], folder: Path, env: dict | None = None) -> dict:
    """Run `command`; its process tree's CPU seconds, peak memory (largest process), exit code.
    With `env` (a `flows run` command), the CPU the shared Prefect server of env's PREFECT_HOME
    spent meanwhile counts too: it works for the command, outside its process tree."""
    from benchmarks.measure import server_cpu

    home = Path(env["PREFECT_HOME"]) if env else None
    report = folder / f"measure-{time.monotonic_ns()}.json"
    started, server = time.perf_counter(), server_cpu(home) if home else 0.0
    subprocess.run([sys.executable, "-c", _MEASURE, str(report), *command], env=env, check=False)
    result = json.loads(report.read_text())
    result["wall"] = time.perf_counter() - started
    if home:
        result["server_cpu"] = server_cpu(home) - server
        result["cpu"] += result["server_cpu"]
    return result


def run_script(python: str, source: str, name: str, lines: Path, folder: Path) -> dict:
    """Write a peer's script `source` as folder/NAME.py and run it with that peer's `python` on the
    JSON-lines input `lines`; the script writes the ids it removed to folder/NAME_removed.json.
    measure()'s figures plus "removed" (a set of ids; empty when the script failed)."""
    script, removed_file = folder / f"{name}.py", folder / f"{name}_removed.json"
    script.write_text(source, encoding="utf-8")
    run = measure([python, str(script), str(lines), str(removed_file)], folder)
    return {**run, "removed": set(json.loads(removed_file.read_text())) if run["rc"] == 0 else set()}


def flows_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "run", *args]


def removed_ids(dataset: Path) -> set[str]:
    import pyarrow.parquet as pq

    folder = dataset / "rejected" / "documents"
    return set(pq.read_table(folder, columns=["id"]).column("id").to_pylist()) if folder.is_dir() else set()


def score(removed: set[str], rows: list[dict], originals: dict[str, str]) -> dict:
    """Recall on the planted copies whose exact Jaccard (shingles of the match forms) with their
    original is at least THRESHOLD (one of the pair removed), and how many rows removed are no
    part of a planted pair (the books also quote each other: not all of those are mistakes)."""
    from transforms.dedup.minhash import shingle_hashes

    text = {r["id"]: r["text"] for r in rows}
    true_copies = []
    for copy, original in originals.items():
        a, b = set(shingle_hashes(text[copy], NGRAM).tolist()), set(shingle_hashes(text[original], NGRAM).tolist())
        if a and b and len(a & b) / len(a | b) >= THRESHOLD:
            true_copies.append((copy, original))
    caught = sum(c in removed or o in removed for c, o in true_copies)
    planted = set(originals) | set(originals.values())
    return {"recall": caught / len(true_copies) if true_copies else 1.0, "planted_true": len(true_copies),
            "other_removed": len(removed - planted)}


def peer_python(given: str | None, module: str, env_name: str) -> str | None:
    """The Python that has `module`: the one given, this one, or the environment variable's."""
    for python in (given, os.environ.get(env_name), sys.executable):
        if python and Path(python).exists():
            found = subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode == 0
            if found:
                return python
    return None


def minhash_cores(texts: list[str]) -> dict[str, float]:
    """Documents per CPU-second of the MinHash signatures alone, on the same match forms: ours
    (transforms.dedup.minhash) and rensa's RMinHash (when installed)."""
    from transforms.clean.normalize import match_keys
    from transforms.dedup import minhash
    from transforms.dedup.deduplicate import DedupSettings

    params = DedupSettings(threshold=THRESHOLD).minhash_params()
    keys = match_keys(texts)
    rates = {}
    started = time.process_time()
    minhash.signatures_of_keys(keys, params)
    rates["tcm-corpus signatures"] = len(keys) / (time.process_time() - started)
    try:
        from rensa import RMinHash
    except ImportError:
        return rates
    shingles = [[k[i : i + params.ngram] for i in range(max(1, len(k) - params.ngram + 1))] for k in keys]
    started = time.process_time()
    for grams in shingles:
        signature = RMinHash(num_perm=params.num_perm, seed=42)
        signature.update(grams)
        signature.digest()
    rates["rensa RMinHash"] = len(keys) / (time.process_time() - started)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--passages", type=int, default=37_648)
    parser.add_argument("--copies", type=int, default=10_000)
    parser.add_argument("--data-juicer-python", help="a Python with py-data-juicer (default: $TCM_DATA_JUICER_PYTHON, then this one)")
    parser.add_argument("--datatrove-python", help="a Python with datatrove (default: this one)")
    parser.add_argument("--keep", type=Path, help="keep the inputs and outputs in this folder")
    parser.add_argument("--dedup-only", action="store_true", help="near-duplicate removal only: no filters, no MinHash cores")
    parser.add_argument("--data-juicer-filters-only", action="store_true",
                        help="run data-juicer's character filters but not its document_minhash_deduplicator "
                             "(single-process, it takes minutes on the default input)")
    args = parser.parse_args()
    books = args.shared / "corpus" / "ancient-books"
    if not any(books.glob("*.txt")):
        sys.exit(f"no books in {books}: give --shared, the folder holding corpus/ancient-books")
    folder = args.keep or Path(tempfile.mkdtemp(prefix="tcm-peers-"))
    folder.mkdir(parents=True, exist_ok=True)
    rows, originals = build_rows(books, args.passages, args.copies)
    dataset, lines = write_inputs(rows, folder)
    megabytes = sum(len(r["text"].encode()) for r in rows) / 1e6
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.setdefault("PREFECT_HOME", str(folder / "prefect"))
    config = folder / "peers.toml"
    config.write_text('name = "peers"\n\n[engine]\nworkers = 1\n', encoding="utf-8")
    print(f"{len(rows)} rows ({args.passages} passages of 500 characters from the shared books, {len(originals)} planted "
          f"near-copies), {megabytes:.1f} MB; Jaccard {THRESHOLD}, {NGRAM}-character shingles; load average {os.getloadavg()[0]:.1f}")

    results: dict[str, dict] = {}
    not_installed: list[str] = []
    # A first command pays for Prefect's database migrations; the figures are of later calls.
    warm, _ = write_inputs(rows[:10], folder / "warm")
    measure(flows_command("clean", "--input", str(warm), "--output", str(folder / "warm" / "clean"), "--config", str(config)), folder, env)
    out = folder / "dedup"
    run = measure(flows_command("dedup", "--input", str(dataset), "--output", str(out), "--config", str(config)), folder, env)
    results["tcm-corpus `flows run dedup`"] = {**run, "removed": removed_ids(out) if run["rc"] == 0 else set()}

    from transforms.dedup.deduplicate import DedupSettings

    params = DedupSettings(threshold=THRESHOLD).minhash_params()
    datatrove = peer_python(args.datatrove_python, "datatrove", "TCM_DATATROVE_PYTHON")
    if datatrove:
        work = folder / "datatrove"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        script = work / "run.py"
        script.write_text(_DATATROVE, encoding="utf-8")
        run = measure([datatrove, str(script), str(lines), str(work), str(params.bands), str(params.rows)], folder)
        removed = set(json.loads((work / "removed_ids.json").read_text())) if run["rc"] == 0 else set()
        results[f"datatrove MinHash ({params.bands} x {params.rows}, characters)"] = {**run, "removed": removed}
    else:
        not_installed.append("datatrove (pip install datatrove==0.10.1 fits this environment)")
    juicer = peer_python(args.data_juicer_python, "data_juicer", "TCM_DATA_JUICER_PYTHON")
    if juicer and not args.data_juicer_filters_only:
        results["data-juicer document_minhash_deduplicator"] = run_script(juicer, _DATA_JUICER_DEDUP, "dj_dedup", lines, folder)
    elif juicer:
        print("data-juicer document_minhash_deduplicator: not run (--data-juicer-filters-only)")
    else:
        not_installed.append("py-data-juicer (its own virtual environment: --data-juicer-python)")

    print(f"\n{'dedup':<52} {'CPU-s':>7} {'wall s':>7} {'peak MB':>8} {'removed':>8} {'recall':>7} {'other':>6} {'rows/CPU-s':>10}")
    for name, row in results.items():
        if row["rc"] != 0:
            print(f"{name:<52} failed (exit {row['rc']}): {row['tail'][-400:]}")
            continue
        quality = score(row["removed"], rows, originals)
        print(f"{name:<52} {row['cpu']:7.1f} {row['wall']:7.1f} {row['rss_mb']:8.0f} {len(row['removed']):8d} "
              f"{quality['recall']:7.4f} {quality['other_removed']:6d} {len(rows) / row['cpu']:10.0f}")
        if name.startswith("tcm-corpus"):
            print(f"  ({quality['planted_true']} planted copies at exact Jaccard >= {THRESHOLD}; 'other': rows removed that are no part of a planted pair)")
    ours = results["tcm-corpus `flows run dedup`"]
    peers = [row["cpu"] for name, row in results.items() if row is not ours and row["rc"] == 0]
    if peers and ours["rc"] == 0:
        print(f"tcm-corpus per CPU-second: {min(peers) / ours['cpu']:.2f}x the faster peer")

    if args.dedup_only:
        for name in not_installed:
            print(f"not installed: {name}")
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
        return

    filters: dict[str, dict] = {}
    cleaned, selected = folder / "clean", folder / "select"
    first = measure(flows_command("clean", "--input", str(dataset), "--output", str(cleaned), "--config", str(config)), folder, env)
    second = measure(flows_command("select", "--input", str(cleaned), "--output", str(selected), "--config", str(config)), folder, env)
    both = {"rc": first["rc"] or second["rc"], "cpu": first["cpu"] + second["cpu"], "wall": first["wall"] + second["wall"],
            "rss_mb": max(first["rss_mb"], second["rss_mb"]), "tail": first["tail"] + second["tail"]}
    filters["tcm-corpus `flows run clean` + `flows run select`"] = {**both, "removed": removed_ids(cleaned) | removed_ids(selected)}
    if juicer:
        filters["data-juicer six character filters"] = run_script(juicer, _DATA_JUICER_FILTERS, "dj_filters", lines, folder)
    print(f"\n{'filters':<52} {'CPU-s':>7} {'wall s':>7} {'peak MB':>8} {'removed':>8} {'MB/CPU-s':>9}")
    for name, row in filters.items():
        if row["rc"] != 0:
            print(f"{name:<52} failed (exit {row['rc']}): {row['tail'][-400:]}")
            continue
        print(f"{name:<52} {row['cpu']:7.1f} {row['wall']:7.1f} {row['rss_mb']:8.0f} {len(row['removed']):8d} {megabytes / row['cpu']:9.2f}")
    mine = filters["tcm-corpus `flows run clean` + `flows run select`"]
    other = filters.get("data-juicer six character filters")
    if other and other["rc"] == 0 and mine["rc"] == 0:
        print(f"tcm-corpus clean + select per CPU-second: {other['cpu'] / mine['cpu']:.2f}x data-juicer's character filters")

    print("\nMinHash cores in this process (signatures only, same match forms):")
    rates = minhash_cores([r["text"] for r in rows])
    for name, rate in rates.items():
        print(f"  {name:<30} {rate:10,.0f} documents/CPU-s")
    if "rensa RMinHash" not in rates:
        not_installed.append("rensa (pip install rensa==0.5.0 fits this environment)")
    elif "tcm-corpus signatures" in rates:
        print(f"  tcm-corpus / rensa: {rates['tcm-corpus signatures'] / rates['rensa RMinHash']:.2f}x")
    for name in not_installed:
        print(f"not installed: {name}")
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
