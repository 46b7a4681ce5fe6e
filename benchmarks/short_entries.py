"""Short entries and lists of herbs, before and after: counts from two full builds and the hand
judgement in benchmarks/short_entries_sample.tsv.

    python benchmarks/short_entries.py [--before /work/before/build] [--after BUILD]
    python benchmarks/short_entries.py --after BUILD --draw 60 > rows.tsv   # a new sample to judge

Both builds are `python benchmarks/build_stages.py --workdir DIR` on ../shared/data. A chapter is
matched across them by (book, chapter index) from `meta`, since its id changes with its text.
Before, the length rule was clean's `too_short` (len(text) < 20); after, it is select's
`too_short:<kind>:...`. Prints:
- chapters rejected as too short, before and after, and after by body kind;
- what became of the chapters rejected as too short before (kept, or rejected and why);
- rows rejected by punct_line_ratio, before and after;
- from the judged sample: the share of content-bearing short entries now kept, and what the
  rows still rejected and the rows newly kept are, as judged.
The sample file has one row per judged chapter: book, chapter_index, title, body (before, newlines
as ⏎), judgement (content | fragment | cross_reference), after (kept | the after reason), drawn
(which draw it came from: before_too_short, still_rejected, newly_kept).
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

SAMPLE = Path(__file__).with_name("short_entries_sample.tsv")
COLUMNS = ("book", "chapter_index", "title", "body", "judgement", "after", "drawn")


def rows(folder: Path, columns=("text", "title", "meta", "reason")) -> list[dict]:
    if not folder.exists():
        return []
    table = pq.read_table(folder)
    return table.select([c for c in columns if c in table.schema.names]).to_pylist()


def key(row: dict) -> tuple[str, int] | None:
    meta = json.loads(row["meta"] or "{}")
    if meta.get("chapter_index") is None:
        return None
    return meta.get("book"), int(meta["chapter_index"])


def body(row: dict) -> str:
    return (row["text"] or "").replace("\n", "⏎")


def outcome(after: Path) -> dict:
    """(book, chapter index) -> "kept" or the reason of the stage that rejected it, after."""
    state: dict = {}
    for stage in ("clean", "select"):
        for row in rows(after / "stages" / stage / "rejected" / "documents"):
            if key(row):
                state[key(row)] = row["reason"]
    for row in rows(after / "stages" / "select" / "documents", ("text", "title", "meta")):
        if key(row):
            state[key(row)] = "kept"
    return state


def too_short(reason: str | None) -> bool:
    return bool(reason) and reason.startswith("too_short")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, default=Path("/work/before/build"))
    parser.add_argument("--after", type=Path, required=True)
    parser.add_argument("--draw", type=int, help="print a new random sample of N rows per draw to judge, and stop")
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args(argv)

    before_short = [r for r in rows(args.before / "stages" / "clean" / "rejected" / "documents") if too_short(r["reason"])]
    after_state = outcome(args.after)
    after_rejected = rows(args.after / "stages" / "select" / "rejected" / "documents") + rows(
        args.after / "stages" / "clean" / "rejected" / "documents")
    after_short = [r for r in after_rejected if too_short(r["reason"])]

    if args.draw:
        rng = random.Random(args.seed)
        before_keys = {key(r) for r in before_short}
        still = [r for r in after_short if key(r) in before_keys]
        newly = [r for r in before_short if after_state.get(key(r)) == "kept"]
        writer = csv.writer(sys.stdout, delimiter="\t", lineterminator="\n")
        writer.writerow(COLUMNS)
        for drawn, pool in (("before_too_short", before_short), ("still_rejected", still), ("newly_kept", newly)):
            for row in rng.sample(pool, min(args.draw, len(pool))):
                book, index = key(row)
                writer.writerow([book, index, row["title"], body(row), "", after_state.get((book, index), "?"), drawn])
        return 0

    print(f"chapters rejected as too short: before {len(before_short):,}, after {len(after_short):,}")
    by_kind = Counter(r["reason"].split(":")[1] for r in after_short)
    print("  after, by body kind: " + ", ".join(f"{k} {n:,}" for k, n in by_kind.most_common()))
    fate = Counter(after_state.get(key(r), "missing") for r in before_short)
    kept = fate.pop("kept", 0)
    print(f"the {len(before_short):,} rejected before: {kept:,} kept now ({kept / max(len(before_short), 1):.1%})")
    reasons = Counter(reason.split(":")[0] + (":" + reason.split(":")[1] if too_short(reason) else "") for reason in fate.elements())
    print("  still rejected: " + ", ".join(f"{k} {n:,}" for k, n in reasons.most_common()))

    punct_before = [r for r in rows(args.before / "stages" / "select" / "rejected" / "documents") if r["reason"].startswith("punct_line_ratio")]
    punct_after = [r for r in after_rejected if r["reason"].startswith("punct_line_ratio")]
    print(f"rows rejected by punct_line_ratio: before {len(punct_before)}, after {len(punct_after)}")
    lists_kept = sum(1 for r in punct_before if key(r) and after_state.get(key(r)) == "kept")
    print(f"  of the {len(punct_before)} before, kept now: {lists_kept}; still rejected: "
          + ", ".join(f"{r['title']} ({after_state.get(key(r), '?').split(':')[0]})" for r in punct_before
                      if key(r) and after_state.get(key(r)) != "kept"))

    if not SAMPLE.exists():
        print(f"no judged sample at {SAMPLE}")
        return 0
    with SAMPLE.open(encoding="utf-8") as handle:
        judged = list(csv.DictReader(handle, delimiter="\t"))
    for row in judged:
        # The state of the build given, not the one recorded when the row was judged.
        row["after"] = after_state.get((row["book"], int(row["chapter_index"])), row["after"])
    drawn = [r for r in judged if r["drawn"] == "before_too_short"]
    content = [r for r in drawn if r["judgement"] == "content"]
    kept_content = sum(1 for r in content if r["after"] == "kept")
    print(f"judged sample of the rejected before ({len(drawn)} rows): {len(content)} content-bearing, "
          f"{kept_content} of them kept now ({kept_content / max(len(content), 1):.1%}); "
          + ", ".join(f"{k} {n}" for k, n in Counter(r["judgement"] for r in drawn).most_common()))
    not_content_kept = [r for r in drawn if r["judgement"] != "content" and r["after"] == "kept"]
    print(f"  not content but kept now: {len(not_content_kept)}")
    for name in ("still_rejected", "newly_kept"):
        part = [r for r in judged if r["drawn"] == name]
        print(f"judged {name} ({len(part)} rows): " + ", ".join(f"{k} {n}" for k, n in Counter(r["judgement"] for r in part).most_common()))
    # Over all the rejected before: content = its share in the first draw; content lost = the
    # share of content among the rows still rejected (second draw) times how many there are.
    still = [r for r in judged if r["drawn"] == "still_rejected"]
    still_count = sum(1 for r in before_short if after_state.get(key(r)) != "kept")
    if drawn and still:
        content_total = len(content) / len(drawn) * len(before_short)
        content_lost = sum(r["judgement"] == "content" for r in still) / len(still) * still_count
        print(f"estimate over all {len(before_short):,}: about {content_total:,.0f} content-bearing, about "
              f"{content_lost:,.0f} of them still rejected: {1 - content_lost / content_total:.1%} kept")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
