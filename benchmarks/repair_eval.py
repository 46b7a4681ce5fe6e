"""Precision of the repair step on the shared books: draw a random sample of repairs, and score it
against the hand labels in benchmarks/repair_labels.tsv.

    python benchmarks/repair_eval.py [--shared ../shared/data] [--sample 200] [--seed 14] [--write]
    python benchmarks/repair_eval.py --counts WORKDIR [WORKDIR ...]

`--counts` prints, for the kept rows of each build (WORKDIR/stages/select/documents), the damage
figures: the corrected words, 「黄 」 (not closing a herb such as 大黄) before 汤/散/丸, a bracket
or a dose, 「□」, and the `lost_glyphs` tag where the build has it.

Every chapter of every book goes through what clean does before repairing (Unicode policy,
whitespace, OpenCC on what was traditional) and then `transforms.clean.repair` with the shipped
tables; all repairs are collected with 16 characters of context each side, counted by kind and
entry, and `--sample` of them drawn with `--seed`: the repairs with the smallest blake2b of (seed,
book, chapter, original, replacement, context), so a change of the rules that adds or removes a
few repairs changes a few items of the sample, not all of them. With `--write` the sample is written to the labels file with an
empty label column (existing labels for the same repair are kept); otherwise the labels are read
and precision printed: correct / labelled, per kind and overall. A label is 1 when the
replacement is what the text meant (read in context), 0 when not.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LABELS = REPO / "benchmarks" / "repair_labels.tsv"
FIELDS = ["n", "book", "chapter", "offset", "kind", "original", "replacement", "context", "label", "note"]
CONTEXT = 16


def collect(shared: Path) -> list[dict]:
    sys.path.insert(0, str(REPO))
    from transforms.ingest.importers import import_file
    from transforms.clean.normalize import tidy_whitespace, unicode_clean
    from transforms.clean.repair import repairer
    from transforms.clean.simplify import to_simplified

    tool = repairer()
    found = []
    for path in sorted((shared / "corpus" / "ancient-books").glob("*.txt")):
        for chapter, record in enumerate(import_file(path, "book", "books", "books")):
            if record.rejected or record.kind != "documents":
                continue
            text = to_simplified(tidy_whitespace(unicode_clean(record.row["text"]))).text
            result = tool.repair(text)
            for r in result.repairs:
                left = result.text[max(0, r.offset - CONTEXT) : r.offset]
                right = result.text[r.offset + len(r.replacement) : r.offset + len(r.replacement) + CONTEXT]
                found.append({
                    "book": path.stem, "chapter": chapter, "offset": r.offset, "kind": r.kind,
                    "original": r.original, "replacement": r.replacement,
                    "context": f"{left}[{r.original}→{r.replacement}]{right}".replace("\n", "⏎").replace("\t", " "),
                })
    return found


DAMAGE_WORDS = ("浓朴", "毒瓦斯", "野狼", "伊芳尹", "悉尼", "黄芪", "厚朴")
# 「黄 」 where 芪 was: not closing a herb that ends in 黄, and before what follows 黄芪 in a text.
LOST_HUANGQI = r"(?<![大地麻雄牛蒲硫姜竺雌蛋藤])黄 (?=[汤散丸（(]|[一二三四五六七八九十半]+[两钱分斤]|各)"


def damage_counts(workdir: Path) -> dict:
    import re

    import pyarrow.dataset as ds

    table = ds.dataset(workdir / "stages" / "select" / "documents").to_table()
    texts = table.column("text").to_pylist()
    counts = {word: sum(t.count(word) for t in texts) for word in DAMAGE_WORDS}
    counts["黄 before 汤/散/丸/bracket/dose"] = sum(len(re.findall(LOST_HUANGQI, t)) for t in texts)
    counts["□"] = sum(t.count("□") for t in texts)
    if "lost_glyphs" in table.schema.names:
        counts["lost_glyphs (tag)"] = sum(table.column("lost_glyphs").to_pylist())
    counts["rows"] = table.num_rows
    return counts


def key(row: dict) -> tuple:
    return (row["book"], str(row["chapter"]), row["original"], row["replacement"], row["context"])


def draw_key(seed: int, row: dict) -> bytes:
    return hashlib.blake2b("\x1f".join((str(seed), *key(row))).encode(), digest_size=8).digest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--sample", type=int, default=200)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--labels", type=Path, default=LABELS)
    parser.add_argument("--write", action="store_true", help="write the sample to the labels file (keeps labels given)")
    parser.add_argument("--counts", type=Path, nargs="+", help="print the damage figures of these builds and stop")
    args = parser.parse_args()
    if args.counts:
        for workdir in args.counts:
            print(workdir, damage_counts(workdir))
        return
    found = collect(args.shared)
    kinds = Counter(r["kind"] for r in found)
    entries = Counter(f"{r['original']}->{r['replacement']}" for r in found)
    print(f"repairs in the shared books: {len(found)} ({', '.join(f'{k} {n}' for k, n in kinds.most_common())})")
    print("by entry: " + ", ".join(f"{e} {n}" for e, n in entries.most_common()))
    sample = sorted(found, key=lambda r: draw_key(args.seed, r))[: args.sample]
    known = {}
    if args.labels.exists():
        with args.labels.open(encoding="utf-8") as f:
            known = {key(row): row for row in csv.DictReader(f, delimiter="\t")}
    if args.write:
        with args.labels.open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, FIELDS, delimiter="\t", lineterminator="\n")
            writer.writeheader()
            for n, row in enumerate(sample, 1):
                old = known.get(key(row), {})
                writer.writerow({**row, "n": n, "label": old.get("label", ""), "note": old.get("note", "")})
        print(f"wrote {len(sample)} repairs to {args.labels}")
        return
    missing = [row for row in sample if key(row) not in known or known[key(row)]["label"] not in ("0", "1")]
    if missing:
        print(f"{len(missing)} of the sample are not labelled in {args.labels}; run with --write and label them")
    labelled = [(row, known[key(row)]["label"] == "1") for row in sample if row not in missing]
    for kind in sorted({row["kind"] for row, _ in labelled}):
        rows = [ok for row, ok in labelled if row["kind"] == kind]
        print(f"precision {kind}: {sum(rows)}/{len(rows)} = {sum(rows) / len(rows):.3f}")
    if labelled:
        good = sum(ok for _, ok in labelled)
        print(f"precision overall: {good}/{len(labelled)} = {good / len(labelled):.3f}")
        for row, ok in labelled:
            if not ok:
                print(f"  wrong: {row['book']} #{row['chapter']}: {row['context']}  ({known[key(row)]['note']})")


if __name__ == "__main__":
    main()
