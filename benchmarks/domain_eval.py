"""Precision and recall of the TCM domain filter on held-out shared data, and tagging throughput.

    python benchmarks/domain_eval.py [--shared ../shared/data] [--max-per-source 2000] [--books N]

The labelled set: TCM books (whole books held out), pharmacopoeia monographs, TCM dialogues and
symptom-to-formula instructions as TCM; general medical Q&A (huatuo26m), English PubMed abstracts
and generated junk as other. The lexicon is built from the pharmacopoeia, the two terminology
standards and the training books only, so a held-out book's formula headings are not in it. The
classifier is trained on the training part. Prints, for each filter (lexicon density >= t,
P(tcm) >= t), precision, recall and F1 on the held-out part and the share kept per source; then
the tagging throughput in MB/s (UTF-8 bytes of text) on the books, one process.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from transforms.clean import domain_training as training  # noqa: E402
from transforms.clean.domain import DomainTagger  # noqa: E402
from transforms.clean.lexicon import build_lexicon, write_lexicon  # noqa: E402

# (path under the shared data, format, label 1 = TCM)
LABELLED = (
    ("corpus/ancient-books", "book", 1),
    ("corpus/pharmacopoeia/2022年中药药典.txt", "monograph", 1),
    ("instructions/mtcmb_tcm_chgd.jsonl", "instructions", 1),
    ("instructions/tcm_qr.json", "instructions", 1),
    ("instructions/huatuo26m_test.json", "instructions", 0),
    ("english/pubmed_abstracts.json", "texts", 0),
)
TERMINOLOGY = ("corpus/pharmacopoeia/中医临床诊疗术语疾病.txt", "corpus/pharmacopoeia/中医临床诊疗术语证候.txt")
LEXICON_THRESHOLDS = (0.02, 0.05, 0.1)
CLASSIFIER_THRESHOLDS = (0.5, 0.8)
SEED = 13


def labelled_examples(shared: Path, max_per_source: int = 2000, junk: int = 1000, books: int | None = None) -> list[training.Example]:
    examples: list[training.Example] = []
    for relative, fmt, label in LABELLED:
        path = shared / relative
        if books is not None and fmt == "book":
            files = sorted(path.glob("*.txt"))[:books]
            found = [e for file in files for e in training.read_labelled(file, fmt, label, source=path.name)]
        else:
            found = list(training.read_labelled(path, fmt, label))
        examples.extend(training.sample_examples(found, max_per_source, SEED))
    examples.extend(training.junk_examples(junk, SEED))
    return examples


def evaluate_domain_filter(shared: Path, workdir: Path, max_per_source: int = 2000, junk: int = 1000,
                           books: int | None = None) -> dict:
    """Train on the training part, build the lexicon without held-out books, evaluate both filters."""
    examples = labelled_examples(shared, max_per_source, junk, books)
    train, held_out = training.split_examples(examples, 0.2, SEED)
    started = time.perf_counter()
    model = training.train_classifier(train, training.TrainParams(seed=SEED))
    train_seconds = time.perf_counter() - started
    model_path = workdir / "domain.bin"
    model.save_model(str(model_path))
    training_books = sorted({e.group for e in train if e.source == "ancient-books"})
    reference = [shared / "corpus/pharmacopoeia/2022年中药药典.txt", *(shared / t for t in TERMINOLOGY), *training_books]
    lexicon_path = write_lexicon(build_lexicon(reference, strict=False), workdir / "lexicon.txt")
    tagger = DomainTagger.load(lexicon_path, model_path)
    tags = tagger.tag([e.text for e in held_out])
    return {
        "train_rows": len(train),
        "held_out_rows": len(held_out),
        "held_out_books": len({e.group for e in held_out if e.source == "ancient-books"}),
        "train_seconds": round(train_seconds, 2),
        "lexicon": {t: training.evaluate_scores(tags["domain_lexicon"], held_out, t) for t in LEXICON_THRESHOLDS},
        "classifier": {t: training.evaluate_scores(tags["domain_score"], held_out, t) for t in CLASSIFIER_THRESHOLDS},
        "lexicon_path": lexicon_path,
        "model_path": model_path,
    }


def book_texts(shared: Path) -> list[str]:
    return [e.text for e in training.read_labelled(shared / "corpus/ancient-books", "book", 1)]


def throughput(tagger: DomainTagger, texts: list[str], batch_rows: int = 2048) -> float:
    """MB/s of UTF-8 text through tagger.tag, batch by batch."""
    size = sum(len(t.encode("utf-8")) for t in texts)
    started = time.perf_counter()
    for start in range(0, len(texts), batch_rows):
        tagger.tag(texts[start:start + batch_rows])
    return size / 1e6 / (time.perf_counter() - started)


def _print_filter(name: str, figures: dict) -> None:
    for threshold, result in figures.items():
        print(f"{name} >= {threshold}: precision {result['precision']:.4f} recall {result['recall']:.4f} "
              f"f1 {result['f1']:.4f} (tp {result['tp']} fp {result['fp']} fn {result['fn']} tn {result['tn']})")
        kept = ", ".join(f"{s} {v['kept']:.1%}" for s, v in result["per_source"].items())
        print(f"    kept per source: {kept}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--max-per-source", type=int, default=2000)
    parser.add_argument("--junk", type=int, default=1000)
    parser.add_argument("--books", type=int, default=None, help="use only the first N books")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="domain-eval-") as folder:
        result = evaluate_domain_filter(args.shared, Path(folder), args.max_per_source, args.junk, args.books)
        print(f"train {result['train_rows']} rows ({result['train_seconds']} s), held out {result['held_out_rows']} rows "
              f"({result['held_out_books']} whole books)")
        _print_filter("domain_lexicon", result["lexicon"])
        _print_filter("domain_score", result["classifier"])
        texts = book_texts(args.shared)
        megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6
        print(f"throughput on {len(texts)} book chapters, {megabytes:.1f} MB UTF-8, one process:")
        for name, tagger in (
            ("lexicon only", DomainTagger.load(result["lexicon_path"], None)),
            ("classifier only", DomainTagger.load(None, result["model_path"])),
            ("both", DomainTagger.load(result["lexicon_path"], result["model_path"])),
        ):
            print(f"    {name}: {throughput(tagger, texts):.1f} MB/s")


if __name__ == "__main__":
    main()
