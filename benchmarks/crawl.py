"""Crawl throughput on a loopback site: a few hundred generated Chinese pages, each linking to
a handful of others, served by crawlers.localsite and crawled by the real crawl (child process,
Scrapy, journal, dataset), with AutoThrottle off. Run by hand:

    .venv/bin/python benchmarks/crawl.py [--pages 300] [--concurrency 16]

Prints pages kept, the crawl's own elapsed time (Scrapy's clock, without the child's start),
the wall time of run_crawl, and pages per second for both."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crawlers.localsite import serve_folder  # noqa: E402
from crawlers.run import run_crawl  # noqa: E402
from schemas.dataset import StageManifest  # noqa: E402

PARAGRAPH = "黄芪味甘，性微温，归脾经、肺经，能补气升阳、益卫固表、利水消肿、托毒生肌。"


def write_site(folder: Path, pages: int) -> None:
    for number in range(pages):
        links = "".join(f'<li><a href="/p/{(number * 7 + k) % pages}.html">第{(number * 7 + k) % pages}篇</a></li>'
                        for k in range(1, 6))
        body = "".join(f"<p>{PARAGRAPH}（第{number}篇，第{i}段）</p>" for i in range(12))
        page = (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>第{number}篇</title></head><body>'
                f'<nav><ul>{links}</ul></nav><article><h1>第{number}篇</h1>{body}</article>'
                f'<footer>版权所有</footer></body></html>')
        (folder / "p").mkdir(exist_ok=True)
        (folder / "p" / f"{number}.html").write_text(page, encoding="utf-8")
    (folder / "robots.txt").write_text("User-agent: *\nAllow: /\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tcm-crawl-bench-") as tmp:
        site = Path(tmp) / "site"
        site.mkdir()
        write_site(site, args.pages)
        settings = {"autothrottle": False, "concurrency": args.concurrency,
                    "concurrency_per_domain": args.concurrency, "state_dir": str(Path(tmp) / "state")}
        with serve_folder(site) as base:
            source = {"name": "bench", "category": "web", "start_urls": [base + "p/0.html"],
                      "max_depth": 1000, "max_pages": args.pages + 10}
            started = time.perf_counter()
            manifest = run_crawl([source], Path(tmp) / "pages", StageManifest(stage="crawl"), settings)
            wall = time.perf_counter() - started
    kept = manifest.rows_out.get("pages", 0)
    elapsed = manifest.stats["crawl"].get("elapsed_time_seconds") or wall
    print(f"pages kept: {kept} of {args.pages} (rejected {manifest.rows_rejected.get('pages', 0)})")
    print(f"crawl elapsed: {elapsed:.2f} s -> {kept / elapsed:.1f} pages/s (Scrapy's clock)")
    print(f"run_crawl wall: {wall:.2f} s -> {kept / wall:.1f} pages/s (child start and dataset write included)")


if __name__ == "__main__":
    main()
