"""Training and evaluating the fastText TCM domain classifier from labelled sources.

A labelled source is a file or folder read by one of the importers (book, text, monograph,
terms, instructions) or `texts` (a JSON list, or JSON lines, of strings: abstracts, web text).
A conversation's text is its turns joined by line breaks. Generated junk (random Han characters,
symbol and digit debris, repeated phrases, spam) adds negatives nobody has to collect.

Held-out split by group, not by row: the chapters of one book are one group, so a held-out book
is a book the model has never seen, and the figures say how it does on a new book, not on more
chapters of a familiar one. Which rows a source contributes (at most `max_per_source`) and which
groups are held out follow a hash of the content and the seed, not the order of files.
"""
from __future__ import annotations

import hashlib
import json
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .domain import OTHER_LABEL, TCM_LABEL, classifier_input, tcm_probability

TEXTS_FORMAT = "texts"
FORMATS = ("book", "text", "monograph", "terms", "instructions", TEXTS_FORMAT)
MIN_CHARS = 10


class TrainingError(Exception):
    """Training inputs that cannot be used; the message is one line."""


@dataclass(frozen=True)
class Example:
    text: str
    label: int  # 1 TCM, 0 other
    group: str  # rows of one group are all trained on or all held out
    source: str


def read_labelled(path: Path | str, fmt: str, label: int, source: str | None = None) -> Iterator[Example]:
    """The texts of one labelled source; rejected records and texts under MIN_CHARS are skipped."""
    from transforms.ingest.importers import SourceError, import_file, list_files
    from transforms.ingest.importers.instructions import read_records

    path = Path(path)
    source = source or path.name
    if fmt not in FORMATS:
        raise TrainingError(f"{path}: unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    try:
        files = list_files(path, "instructions" if fmt == TEXTS_FORMAT else fmt)
    except SourceError as exc:
        raise TrainingError(str(exc)) from None
    if not files:
        raise TrainingError(f"{path}: no {fmt} files")
    for file in files:
        try:
            if fmt == TEXTS_FORMAT:
                records = [r for _, r, _ in read_records(file)]
                texts = [r for r in records if isinstance(r, str)]
                if records and not texts:
                    raise TrainingError(f"{file}: format 'texts' needs a JSON list or JSON lines of strings")
                for index, text in enumerate(texts):
                    if len(text) >= MIN_CHARS:
                        yield Example(text, label, f"{file}#{index}", source)
                continue
            for record in import_file(file, fmt, source, "books"):
                if record.rejected:
                    continue
                row = record.row
                text = row["text"] if "text" in row else "\n".join(m["content"] for m in row["messages"])
                if len(text) >= MIN_CHARS:
                    # Chapters of a book stay together; any other record is its own group.
                    group = str(file) if fmt == "book" else f"{file}#{row['id']}"
                    yield Example(text, label, group, source)
        except SourceError as exc:
            raise TrainingError(str(exc)) from None


def stable_hash(*parts: object) -> int:
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def sample_examples(examples: list[Example], limit: int, seed: int) -> list[Example]:
    """At most `limit` examples, chosen by a hash of their text: the same whatever the order."""
    if len(examples) <= limit:
        return examples
    return sorted(examples, key=lambda e: stable_hash(seed, e.text))[:limit]


def split_examples(examples: list[Example], holdout: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, held out) by group; every source keeps at least one group on each side when it has two."""
    held = {e.group for e in examples if stable_hash(seed, "holdout", e.group) % 10_000 < holdout * 10_000}
    by_source: dict[str, set[str]] = {}
    for e in examples:
        by_source.setdefault(e.source, set()).add(e.group)
    for groups in by_source.values():
        # A source of few groups (one book folder of three books) must still appear on both sides.
        if len(groups) >= 2 and groups <= held:
            held.discard(min(groups, key=lambda g: stable_hash(seed, g)))
        elif len(groups) >= 2 and holdout > 0 and not groups & held:
            held.add(min(groups, key=lambda g: stable_hash(seed, g)))
    train = [e for e in examples if e.group not in held]
    test = [e for e in examples if e.group in held]
    return train, test


JUNK_KINDS = ("random_han", "debris", "repeated", "spam")
_SPAM = (
    "澳门新葡京", "在线娱乐", "注册送彩金", "百家乐", "六合彩", "时时彩", "网上赌场", "代开发票", "加微信",
    "免费领取", "点击进入", "最新网址", "高额返水", "日赚千元", "兼职刷单", "低价出售", "优惠券", "秒杀",
    "包邮", "限时抢购", "招商加盟", "贷款秒批", "成人视频", "同城交友",
)


def generated_junk(count: int, seed: int) -> list[str]:
    """`count` junk texts, an even mix of JUNK_KINDS, reproducible from the seed."""
    rng = random.Random(seed)
    texts = []
    for i in range(count):
        kind = JUNK_KINDS[i % len(JUNK_KINDS)]
        length = rng.randint(40, 400)
        if kind == "random_han":
            text = "".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(length))
        elif kind == "debris":
            alphabet = "0123456789abcdefXYZ#@$%&*+=-_/\\|~^<>[]{}…·•■□▲●◆★"
            text = "".join(rng.choice(alphabet) for _ in range(length))
        elif kind == "repeated":
            phrase = "".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(rng.randint(2, 6)))
            text = (phrase + rng.choice("，。！ ")) * (length // (len(phrase) + 1) + 1)
        else:
            words = [rng.choice(_SPAM) for _ in range(length // 8 + 2)]
            text = "".join(w + rng.choice(("！", "，", " ", "→", "【", "】", str(rng.randint(10, 99999)))) for w in words)
        texts.append(text)
    return texts


def junk_examples(count: int, seed: int) -> list[Example]:
    return [Example(t, 0, f"junk#{seed}#{i}", "generated-junk") for i, t in enumerate(generated_junk(count, seed))]


@dataclass(frozen=True)
class TrainParams:
    epoch: int = 10
    lr: float = 0.5
    word_ngrams: int = 2
    # fasttext-numpy2 0.10.4 diverges to NaN in about half the runs at dim 32 on this data; 64 and
    # 100 trained 36 runs out of 36.
    dim: int = 64
    bucket: int = 200_000
    min_count: int = 1
    seed: int = 13


TRAIN_ATTEMPTS = 3


def train_classifier(train: list[Example], params: TrainParams):
    """A fastText supervised model over the examples (one thread, so the same inputs give the
    same model); a run that diverges to NaN is tried again from the next seed."""
    import fasttext

    labels = {e.label for e in train}
    if labels != {0, 1}:
        raise TrainingError("training needs both TCM (positive) and other (negative) examples")
    # fastText reads its training set from a file; shuffled, since it learns in file order.
    order = sorted(range(len(train)), key=lambda i: stable_hash(params.seed, "order", i))
    with tempfile.TemporaryDirectory(prefix="domain-train-") as folder:
        data = Path(folder) / "train.txt"
        with data.open("w", encoding="utf-8") as out:
            for i in order:
                example = train[i]
                out.write(f"{TCM_LABEL if example.label else OTHER_LABEL} {classifier_input(example.text)}\n")
        for attempt in range(TRAIN_ATTEMPTS):
            try:
                return fasttext.train_supervised(
                    input=str(data), epoch=params.epoch, lr=params.lr, wordNgrams=params.word_ngrams, dim=params.dim,
                    bucket=params.bucket, minCount=params.min_count, loss="softmax", thread=1,
                    seed=params.seed + attempt, verbose=0,
                )
            except RuntimeError as exc:
                if "NaN" not in str(exc):
                    raise
    raise TrainingError(f"fastText training diverged (NaN) {TRAIN_ATTEMPTS} times; lower train_domain.lr or raise dim")


def precision_recall(predicted: np.ndarray, truth: np.ndarray) -> dict:
    """Precision, recall and F1 of the positive class, with the confusion counts."""
    predicted, truth = np.asarray(predicted, bool), np.asarray(truth, bool)
    tp = int(np.sum(predicted & truth))
    fp = int(np.sum(predicted & ~truth))
    fn = int(np.sum(~predicted & truth))
    tn = int(np.sum(~predicted & ~truth))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def evaluate_scores(scores: np.ndarray, examples: list[Example], threshold: float) -> dict:
    """Figures of `score >= threshold` as the TCM decision, overall and the share kept per source."""
    truth = np.array([e.label for e in examples], bool)
    kept = np.asarray(scores) >= threshold
    figures = precision_recall(kept, truth)
    per_source: dict[str, dict] = {}
    for source in sorted({e.source for e in examples}):
        mask = np.array([e.source == source for e in examples])
        per_source[source] = {"rows": int(mask.sum()), "label": "tcm" if truth[mask][0] else "other",
                              "kept": round(float(kept[mask].mean()), 4)}
    return {"threshold": threshold, "rows": len(examples), **figures, "per_source": per_source}


def evaluate_classifier(model, examples: list[Example], threshold: float) -> dict:
    return evaluate_scores(tcm_probability(model, [e.text for e in examples]), examples, threshold)


def save_model(model, path: Path | str, report: dict) -> tuple[Path, Path]:
    """The model at `path` and its figures at `path` + .json, each written beside and renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    model.save_model(str(partial))
    partial.replace(path)
    metrics = path.with_name(path.name + ".json")
    partial_metrics = metrics.with_name(metrics.name + ".partial")
    partial_metrics.write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    partial_metrics.replace(metrics)
    return path, metrics
