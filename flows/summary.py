"""The final summary of a build: what was produced, where, how many rows, how long it took.

`produced(result)` gathers the facts from the build's result and the corpus manifest;
`as_text` is what `flows run` prints, `as_markdown` the artifact the Prefect UI shows.
"""
from __future__ import annotations

import json
from pathlib import Path


def produced(workdir: Path, corpus: Path, stages: dict[str, dict], seconds: float) -> dict:
    """Plain data (JSON-able): the corpus, the exports, the quality reports, the stages."""
    facts: dict = {"workdir": str(workdir), "seconds": seconds, "corpus": {"path": str(corpus)}}
    manifest_file = corpus / "_corpus_manifest.json"
    if manifest_file.is_file():
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        shards = manifest.get("shards", [])
        facts["corpus"].update(
            {
                "rows": manifest.get("rows", 0),
                "shards": len(shards),
                "bytes": sum(int(s.get("bytes", 0)) for s in shards),
                "by_category": manifest.get("counts", {}).get("category", {}),
                "by_format": manifest.get("counts", {}).get("format", {}),
            }
        )
    if "export" in stages:
        facts["exports"] = {"path": stages["export"].get("output", ""), "files": stages["export"].get("stats", {}).get("files", {})}
    if "validate" in stages:
        reports = stages["validate"].get("stats", {}).get("reports", [])
        facts["quality"] = {"path": stages["validate"].get("output", ""), "reports": [r.get("summary", "") for r in reports]}
    facts["stages"] = {
        name: {
            "skipped": bool(s.get("skipped")),
            "seconds": s.get("seconds"),
            "rows_in": sum(s.get("rows_in", {}).values()),
            "rows_made": sum((s.get("rows_made") or {}).values()),
            "rows_rejected": sum(s.get("rows_rejected", {}).values()),
            "rows_out": sum(s.get("rows_out", {}).values()),
        }
        for name, s in stages.items()
    }
    return facts


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _counts(counts: dict) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items()) or "-"


def as_text(facts: dict, title: str = "build-corpus") -> str:
    stages = facts.get("stages", {})
    skipped = [name for name, s in stages.items() if s["skipped"]]
    ran = len(stages) - len(skipped)
    lines = [f"{title} finished in {facts['seconds']} s: {ran} stage(s) run, {len(skipped)} skipped (already done)"]
    corpus = facts["corpus"]
    if "rows" in corpus:
        lines.append(f"corpus: {corpus['path']}  {corpus['rows']:,} rows in {corpus['shards']} shard(s), {_size(corpus['bytes'])}")
        lines.append(f"  by category: {_counts(corpus['by_category'])}")
        lines.append(f"  by format:   {_counts(corpus['by_format'])}")
    else:
        lines.append(f"corpus: {corpus['path']}")
    if facts.get("exports"):
        lines.append(f"exports: {facts['exports']['path']}  {_counts(facts['exports']['files'])}")
    if facts.get("quality"):
        lines.append(f"quality: {facts['quality']['path']}  {'; '.join(facts['quality']['reports']) or '-'}")
    lines.append(f"stages: {facts['workdir']}/stages  (rejected rows with reasons in <stage>/rejected/)")
    return "\n".join(lines)


def as_markdown(facts: dict, title: str = "Corpus build") -> str:
    corpus = facts["corpus"]
    out = [f"# {title}", "", f"Finished in **{facts['seconds']} s** in `{facts['workdir']}`.", ""]
    if "rows" in corpus:
        out += [
            f"**Corpus**: `{corpus['path']}`: {corpus['rows']:,} rows in {corpus['shards']} shard(s), {_size(corpus['bytes'])}.",
            "",
            "| category | rows |",
            "|---|---|",
            *[f"| {k} | {v:,} |" for k, v in corpus["by_category"].items()],
            "",
            f"Formats: {_counts(corpus['by_format'])}.",
            "",
        ]
    if facts.get("exports"):
        out += [f"**Exports**: `{facts['exports']['path']}`: {_counts(facts['exports']['files'])}.", ""]
    if facts.get("quality"):
        out += [f"**Quality**: `{facts['quality']['path']}`: {'; '.join(facts['quality']['reports']) or '-'}.", ""]
    out += ["| stage | rows in | made | rejected | written | seconds | |", "|---|---|---|---|---|---|---|"]
    for name, s in facts.get("stages", {}).items():
        seconds = "-" if s["seconds"] is None else s["seconds"]
        out.append(f"| {name} | {s['rows_in']:,} | {s.get('rows_made', 0):,} | {s['rows_rejected']:,} | {s['rows_out']:,} | {seconds} "
                   f"| {'skipped: already done' if s['skipped'] else ''} |")
    return "\n".join(out)
