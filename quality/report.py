"""The corpus report: what a build did, from the manifests and datasets it left on disk.

`build_figures(workdir)` gathers the figures (the funnel of counts through the stages, rejection
reasons, validation results, length histograms, the category mix, the sampling curve, dedup
cluster sizes, top sources) as plain data; `write_report` renders them as one self-contained
HTML page with inline SVG charts; `artifact_tables` / `artifact_markdown` give the same figures
in the shapes Prefect artifacts take (the flows publish them; nothing here imports Prefect).
"""
from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.dataset import MANIFEST, kind_files

CORPUS_MANIFEST = "_corpus_manifest.json"
STAGE_ORDER = ("crawl", "ingest", "clean", "select", "dedup", "decontaminate", "convert", "sample", "validate", "export")
COLORS = {"web": "#4e79a7", "literature": "#f28e2b", "encyclopedia": "#59a14f", "books": "#b07aa1", "sft": "#e15759"}
OTHER_COLOR = "#9c9c9c"
LENGTH_EDGES = [0, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000]
CLUSTERS = "clusters"
TOP_SOURCES = 20


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def build_figures(workdir: str | Path, corpus_conflicts: dict | None = None) -> dict:
    """The report's figures from a build folder. `corpus_conflicts`: prompts the corpus answers in
    several ways ({"prompts", "rows", "examples"}, `transforms.select.conflicts.corpus_conflicts`), which
    the flows compute; the select stage's own count comes from its manifest."""
    workdir = Path(workdir)
    stages = workdir / "stages"
    corpus = workdir / "corpus"
    manifests = {}
    for stage in STAGE_ORDER:
        folder = corpus if stage == "sample" else stages / stage
        manifest = _json(folder / MANIFEST)
        if manifest:
            manifests[stage] = manifest
    corpus_manifest = _json(corpus / CORPUS_MANIFEST) or {}
    return {
        "workdir": str(workdir),
        "funnel": funnel(manifests),
        "rejections": rejections(manifests),
        "validation": validation(workdir),
        "lengths": length_histograms(corpus) if corpus.is_dir() else {},
        "category_mix": corpus_manifest.get("counts", {}).get("category", {}),
        "items_by_category": corpus_manifest.get("counts", {}).get("items_by_category", {}),
        "tokens": corpus_manifest.get("tokens", {}),
        "sampling": corpus_manifest.get("sampling", {}),
        "sampling_curve": corpus_manifest.get("sampling_curve", []),
        "top_sources": sorted(corpus_manifest.get("counts", {}).get("source", {}).items(), key=lambda kv: -kv[1])[:TOP_SOURCES],
        "dedup": dedup_clusters(stages / "dedup", manifests.get("dedup")),
        "conflicting_answers": {
            "select": (_json(stages / "select" / MANIFEST) or {}).get("stats", {}).get("conflicting_answers"),
            "corpus": corpus_conflicts,
        },
        "shards": corpus_manifest.get("shards", []),
        "rows": corpus_manifest.get("rows", 0),
    }


def funnel(manifests: dict[str, dict]) -> list[dict]:
    """Rows in, made (from rows of another kind: convert's conversations from documents), kept,
    rejected and written per stage and record kind, in build order; in + made = kept + rejected."""
    rows = []
    for stage, manifest in manifests.items():
        kinds = list(dict.fromkeys([*manifest.get("rows_in", {}), *manifest.get("rows_made", {}), *manifest.get("rows_out", {})]))
        for kind in kinds:
            rows.append(
                {
                    "stage": stage,
                    "kind": kind,
                    "in": manifest.get("rows_in", {}).get(kind, 0),
                    "made": manifest.get("rows_made", {}).get(kind, 0),
                    "kept": manifest.get("rows_kept", {}).get(kind, 0),
                    "rejected": manifest.get("rows_rejected", {}).get(kind, 0),
                    "out": manifest.get("rows_out", {}).get(kind, 0),
                    "seconds": manifest.get("timings", {}).get("seconds", 0),
                }
            )
    return rows


def rejections(manifests: dict[str, dict]) -> list[dict]:
    rows = []
    for stage, manifest in manifests.items():
        for reason, count in sorted(manifest.get("rejected_by_reason", {}).items(), key=lambda kv: -kv[1]):
            rows.append({"stage": stage, "reason": reason, "rows": count})
    return rows


def validation(workdir: Path) -> list[dict]:
    """The suites' results on each stage's output (WORKDIR/quality/<stage>) and on the corpus."""
    found = []
    folders = sorted((workdir / "quality").glob("*/"), key=lambda p: STAGE_ORDER.index(p.name) if p.name in STAGE_ORDER else 99)
    for folder in [*folders, workdir / "stages" / "validate"]:
        manifest = _json(folder / MANIFEST)
        if not manifest:
            continue
        for report in manifest.get("stats", {}).get("reports", []):
            stage = "corpus" if folder.name == "validate" else folder.name
            found.append({"stage": stage, **{k: report.get(k) for k in ("kind", "rows", "success", "warnings", "seconds", "summary")}})
    return found


def row_chars(table) -> np.ndarray:
    """Characters per corpus row: its text, or all its turns."""
    text = pc.fill_null(pc.utf8_length(table.column("text")), 0).to_numpy(zero_copy_only=False)
    messages = table.column("messages").combine_chunks()
    contents = pc.fill_null(pc.utf8_length(pc.struct_field(pc.list_flatten(messages), "content")), 0)
    owners = pc.list_parent_indices(messages).to_numpy(zero_copy_only=False)
    return text + np.bincount(owners, weights=contents.to_numpy(zero_copy_only=False), minlength=table.num_rows).astype(np.int64)


def length_histograms(corpus: Path) -> dict:
    """Rows per length bin (characters), for chat rows and for text rows, read shard by shard."""
    edges = np.array(LENGTH_EDGES + [np.iinfo(np.int64).max])
    counts = {"chat": np.zeros(len(LENGTH_EDGES), dtype=np.int64), "text": np.zeros(len(LENGTH_EDGES), dtype=np.int64)}
    stats = {"chat": [], "text": []}
    for file in kind_files(corpus, "corpus"):
        parquet = pq.ParquetFile(file)
        for batch in parquet.iter_batches(columns=["format", "text", "messages"], batch_size=8192):
            table = pa.Table.from_batches([batch])
            chars = row_chars(table)
            formats = np.array(table.column("format").to_pylist())
            for fmt in counts:
                chosen = chars[formats == fmt]
                counts[fmt] += np.histogram(chosen, bins=edges)[0]
                stats[fmt].append(chosen)
    labels = [f"{lo}-{hi - 1}" for lo, hi in zip(LENGTH_EDGES[:-1], LENGTH_EDGES[1:])] + [f"{LENGTH_EDGES[-1]}+"]
    result = {}
    for fmt, values in stats.items():
        joined = np.concatenate(values) if values else np.zeros(0)
        if len(joined):
            result[fmt] = {
                "bins": labels,
                "rows": counts[fmt].tolist(),
                "median": float(np.median(joined)),
                "p95": float(np.percentile(joined, 95)),
                "max": int(joined.max()),
            }
    return result


def dedup_clusters(folder: Path, manifest: dict | None) -> dict:
    """Sizes of duplicate clusters: from a `clusters` dataset when the dedup stage wrote one
    (a `size` column, or one row per member with a cluster id), else the groups it counted."""
    found: dict = {}
    if manifest:
        found["groups"] = manifest.get("stats", {}).get("duplicate_groups")
        found["rejected"] = manifest.get("rows_rejected", {})
    files = sorted((folder / CLUSTERS).glob("*.parquet")) if (folder / CLUSTERS).is_dir() else []
    if not files:
        return found
    sizes, members_by_match = Counter(), Counter()
    for file in files:
        names = pq.read_schema(file).names
        if "match" in names:  # how each member was found: exact key or near (MinHash)
            members_by_match.update(pq.read_table(file, columns=["match"]).column("match").to_pylist())
        if "size" in names:
            sizes.update(pq.read_table(file, columns=["size"]).column("size").to_pylist())
        else:
            key = next((n for n in ("cluster_id", "cluster", "group_id", "group") if n in names), None)
            if key is None:
                continue
            per_cluster = Counter(pq.read_table(file, columns=[key]).column(key).to_pylist())
            sizes.update(per_cluster.values())
    found["cluster_sizes"] = {str(size): count for size, count in sorted(sizes.items())}
    if members_by_match:
        found["members_by_match"] = {str(k): v for k, v in sorted(members_by_match.items(), key=lambda kv: str(kv[0]))}
    return found


# -- rendering --------------------------------------------------------------------------------


def _color(name: str) -> str:
    return COLORS.get(name, OTHER_COLOR)


def curve_svg(curve: list[dict[str, float]], width: int = 640, height: int = 240) -> str:
    """The sampling curve as stacked areas: share of each category across training positions."""
    if not curve:
        return "<p>No sampling curve.</p>"
    names = [n for n in COLORS if any(n in bucket for bucket in curve)] + sorted({n for b in curve for n in b} - set(COLORS))
    left, bottom = 40, 24
    plot_w, plot_h = width - left - 10, height - bottom - 10
    step = plot_w / max(1, len(curve) - 1) if len(curve) > 1 else plot_w
    base = [0.0] * len(curve)
    parts = []
    for name in names:
        top = [b + bucket.get(name, 0.0) for b, bucket in zip(base, curve)]
        upper = [(left + i * step, 10 + plot_h * (1 - t)) for i, t in enumerate(top)]
        lower = [(left + i * step, 10 + plot_h * (1 - b)) for i, b in reversed(list(enumerate(base)))]
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in upper + lower)
        parts.append(f'<polygon points="{points}" fill="{_color(name)}" fill-opacity="0.85"><title>{html.escape(name)}</title></polygon>')
        base = top
    axes = [
        f'<line x1="{left}" y1="{10 + plot_h}" x2="{left + plot_w}" y2="{10 + plot_h}" stroke="#333"/>',
        f'<line x1="{left}" y1="10" x2="{left}" y2="{10 + plot_h}" stroke="#333"/>',
        f'<text x="{left - 4}" y="14" font-size="10" text-anchor="end">100%</text>',
        f'<text x="{left - 4}" y="{10 + plot_h}" font-size="10" text-anchor="end">0%</text>',
        f'<text x="{left}" y="{height - 6}" font-size="10">first 1% of positions</text>',
        f'<text x="{left + plot_w}" y="{height - 6}" font-size="10" text-anchor="end">last 1%</text>',
    ]
    legend = "".join(
        f'<span style="display:inline-block;margin-right:12px"><span style="display:inline-block;width:10px;height:10px;'
        f'background:{_color(n)}"></span> {html.escape(n)}</span>'
        for n in names
    )
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="sampling curve">{"".join(parts + axes)}</svg><div>{legend}</div>'


def bars_svg(labels: list[str], values: list[float], colors: list[str] | None = None, width: int = 640) -> str:
    """Horizontal bars, one per label, with its value written beside it."""
    if not values:
        return "<p>None.</p>"
    row, label_w = 18, 150
    height = row * len(values) + 4
    peak = max(values) or 1
    parts = []
    for i, (label, value) in enumerate(zip(labels, values)):
        length = (width - label_w - 80) * value / peak
        color = colors[i] if colors else "#4e79a7"
        y = i * row + 2
        parts.append(f'<text x="{label_w - 6}" y="{y + 12}" font-size="11" text-anchor="end">{html.escape(str(label))}</text>')
        parts.append(f'<rect x="{label_w}" y="{y}" width="{length:.1f}" height="{row - 4}" fill="{color}"/>')
        parts.append(f'<text x="{label_w + length + 4:.1f}" y="{y + 12}" font-size="11">{_number(value)}</text>')
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">{"".join(parts)}</svg>'


def _number(value) -> str:
    return f"{value:,.0f}" if isinstance(value, (int, float)) and float(value).is_integer() else f"{value:,.2f}"


def _table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "<p>None.</p>"
    columns = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_number(r.get(c)) if isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool) else str(r.get(c, '')))}</td>" for c in columns) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:980px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
.bad{color:#b00}.ok{color:#070}"""


def render_html(figures: dict) -> str:
    sections = [f"<h1>Corpus report</h1><p>Build folder <code>{html.escape(figures['workdir'])}</code>: "
                f"{_number(figures['rows'])} rows in {len(figures['shards'])} shard(s).</p>"]
    sections.append("<h2>Funnel</h2>" + _table(figures["funnel"], ["stage", "kind", "in", "made", "kept", "rejected", "out", "seconds"]))
    sections.append("<h2>Rejection reasons</h2>" + _table(figures["rejections"], ["stage", "reason", "rows"]))
    checks = [{**r, "result": "passed" if r["success"] else "FAILED"} for r in figures["validation"]]
    sections.append("<h2>Validation</h2>" + _table(checks, ["stage", "kind", "rows", "result", "warnings", "summary"]))
    mix = figures["category_mix"]
    sections.append("<h2>Category mix</h2>" + bars_svg(list(mix), list(mix.values()), [_color(n) for n in mix])
                    + _table([{"category": c, "rows": n, "items": figures["items_by_category"].get(c, 0),
                               "tokens": figures["tokens"].get("by_category", {}).get(c, 0)} for c, n in mix.items()]))
    tokens = figures["tokens"]
    if tokens:
        how = tokens.get("tokenizer") if tokens.get("method") == "tokenizer" else (
            f"estimated: {tokens.get('tokens_per_cjk_char')} per CJK character, 1 per {tokens.get('chars_per_token')} other characters")
        sections.append(f"<p>Tokens: {_number(tokens.get('total', 0))} ({html.escape(str(how))}).</p>")
    sampling = figures["sampling"]
    sections.append(f"<h2>Sampling curve</h2><p>Mode {html.escape(str(sampling.get('mode')))}, weights "
                    f"{html.escape(json.dumps(sampling.get('weights'), ensure_ascii=False))}, sft epochs {sampling.get('sft_epochs')}, "
                    f"seed {sampling.get('seed')}. Share of each category in each 1% of training positions.</p>"
                    + curve_svg(figures["sampling_curve"]))
    for fmt, hist in figures["lengths"].items():
        sections.append(f"<h2>Lengths of {fmt} rows (characters)</h2><p>median {_number(hist['median'])}, "
                        f"95th percentile {_number(hist['p95'])}, longest {_number(hist['max'])}</p>" + bars_svg(hist["bins"], hist["rows"]))
    dedup = figures["dedup"]
    if dedup:
        text = f"<p>Exact duplicate groups: {html.escape(json.dumps(dedup.get('groups'), ensure_ascii=False))}; rows removed: {html.escape(json.dumps(dedup.get('rejected'), ensure_ascii=False))}.</p>"
        if dedup.get("cluster_sizes"):
            sizes = dedup["cluster_sizes"]
            text += "<p>Clusters by size (members, the kept row included):</p>" + bars_svg([f"size {s}" for s in sizes], list(sizes.values()))
        if dedup.get("members_by_match"):
            text += "<p>Members by how they matched:</p>" + bars_svg(list(dedup["members_by_match"]), list(dedup["members_by_match"].values()))
        sections.append("<h2>Dedup clusters</h2>" + text)
    conflicts = figures.get("conflicting_answers") or {}
    if conflicts.get("select") or conflicts.get("corpus"):
        sections.append("<h2>Conflicting answers</h2>" + "".join(f"<p>{html.escape(line)}</p>" for line in conflict_lines(conflicts))
                        + _table(conflict_rows(conflicts), ["where", "prompt", "answer", "source"]))
    sources = figures["top_sources"]
    sections.append("<h2>Top sources</h2>" + bars_svg([s for s, _ in sources], [n for _, n in sources]))
    sections.append("<h2>Shards</h2>" + _table(figures["shards"], ["path", "rows", "bytes", "tokens", "sha256"]))
    return f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Corpus report</title><style>{STYLE}</style></head><body>{"".join(sections)}</body></html>'


def conflict_lines(conflicts: dict) -> list[str]:
    """Sentences on prompts given several different answers: at select, and left in the corpus."""
    lines = []
    chosen = conflicts.get("select")
    if chosen:
        done = "dropped" if chosen["mode"] == "drop" else "kept (select.conflicting_answers = \"keep\")"
        lines.append(f"select: {chosen['prompts']} prompt(s) with several different answers, {chosen['rows']} conversation(s) {done}.")
    corpus = conflicts.get("corpus")
    if corpus is not None:
        lines.append(f"corpus: {corpus['prompts']} prompt(s) with several different answers left, in {corpus['rows']} row(s).")
    return lines


def conflict_rows(conflicts: dict) -> list[dict]:
    """One row per example answer: where it was seen, the prompt, the answer, its source."""
    rows = []
    for where in ("select", "corpus"):
        for example in (conflicts.get(where) or {}).get("examples", []):
            for answer in example["answers"]:
                rows.append({"where": where, "prompt": example["prompt"], "answer": answer["answer"], "source": answer["source"]})
    return rows


def write_report(figures: dict, path: str | Path) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_html(figures), encoding="utf-8")
    tmp.replace(path)
    return path


# -- the same figures as Prefect artifacts ----------------------------------------------------


def artifact_tables(figures: dict) -> dict[str, tuple[str, list[dict]]]:
    """Artifact key -> (description, rows) for table artifacts."""
    mix = figures["category_mix"]
    return {
        "corpus-funnel": ("Rows through the stages", figures["funnel"]),
        "corpus-rejections": ("Rows removed, by stage and reason", figures["rejections"]),
        "corpus-validation": ("Great Expectations results per stage", [{k: v for k, v in r.items() if k != "seconds"} for r in figures["validation"]]),
        "corpus-category-mix": ("Rows, items and tokens per category", [
            {"category": c, "rows": n, "items": figures["items_by_category"].get(c, 0), "tokens": figures["tokens"].get("by_category", {}).get(c, 0)}
            for c, n in mix.items()
        ]),
        "corpus-top-sources": ("Rows per source", [{"source": s, "rows": n} for s, n in figures["top_sources"]]),
        "corpus-conflicting-answers": ("Prompts given several different answers, examples", conflict_rows(figures.get("conflicting_answers") or {})),
        "corpus-sampling-curve": ("Share of each category per tenth of training positions", curve_by_tenth(figures["sampling_curve"])),
    }


def curve_by_tenth(curve: list[dict[str, float]]) -> list[dict]:
    if not curve:
        return []
    edges = np.linspace(0, len(curve), min(10, len(curve)) + 1).astype(int)
    names = list(curve[0])
    return [
        {"positions": f"{round(100 * lo / len(curve))}-{round(100 * hi / len(curve))}%",
         **{n: round(float(np.mean([b.get(n, 0) for b in curve[lo:hi]])), 3) for n in names}}
        for lo, hi in zip(edges[:-1], edges[1:])
    ]


def artifact_markdown(figures: dict) -> str:
    lines = [f"# Corpus report\n\n{figures['rows']} rows in {len(figures['shards'])} shard(s); full report: `{figures['workdir']}/report.html`.\n"]
    tenths = curve_by_tenth(figures["sampling_curve"])
    if tenths:
        names = [k for k in tenths[0] if k != "positions"]
        lines += ["## Sampling curve (share per tenth of positions)\n", "| positions | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        lines += [f"| {row['positions']} | " + " | ".join(f"{row[n]:.3f}" for n in names) + " |" for row in tenths]
    conflict_text = conflict_lines(figures.get("conflicting_answers") or {})
    if conflict_text:
        lines += ["\n## Conflicting answers\n", *[f"- {line}" for line in conflict_text]]
    failed = [r for r in figures["validation"] if not r["success"]]
    lines.append(f"\n## Validation\n\n{len(figures['validation']) - len(failed)} of {len(figures['validation'])} datasets passed.")
    lines += [f"- {r['stage']}: {r['summary']}" for r in failed]
    return "\n".join(lines)
