"""The crawl flow: the config's web sources into a pages dataset; its task retries once, and a
retry resumes from the crawl state."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from prefect import task
from prefect.cache_policies import NONE

from schemas.dataset import StageManifest

from ..plain_flow import flow
from ..config import load_config
from .runner import DESCRIPTIONS, _run, _with_progress, retry_unless_final


@task(name="crawl-sites", task_run_name="crawl", cache_policy=NONE, retries=1, retry_delay_seconds=5, retry_condition_fn=retry_unless_final)
def _crawl_task(work: Callable[..., StageManifest], manifest: StageManifest, stage: str = "crawl", total_rows: int = 0) -> StageManifest:
    return _with_progress(stage, work, manifest, total_rows)


def site_dir_origin(source_name: str) -> str:
    """The origin a `site_dir` source's pages are recorded under: `site-dir://<source name>/`."""
    from urllib.parse import quote

    return f"site-dir://{quote(source_name, safe='')}/"


@flow(name="crawl", description=DESCRIPTIONS["crawl"])
def crawl_flow(output: str, config: Optional[str] = None, recrawl: bool = False) -> dict:
    """Crawl the config's web sources into `output`. The crawl's state (journal, stored pages)
    lives in [crawl] state_dir, or in the user's cache under a name for `output`, so a stopped
    crawl resumes and `recrawl=True` (what a schedule sets) fetches again, asking only for changes."""
    from contextlib import ExitStack

    from crawlers.localsite import serve_folder
    from crawlers.run import run_crawl
    from crawlers.state import default_state_dir

    cfg = load_config(config)
    sources = [s for s in cfg.sources if s.kind == "crawl"]
    section = {"crawl": cfg.section("crawl"), "sources": [s.model_dump(mode="json") for s in sources]}
    state_dir = cfg.crawl.state_dir or default_state_dir(output)
    settings = {**cfg.section("crawl"), "state_dir": str(state_dir)}

    def work(manifest: StageManifest) -> StageManifest:
        with ExitStack() as stack:
            specs = []
            for source in sources:
                start_urls, sitemap_urls = list(source.start_urls), list(source.sitemap_urls)
                if source.site_dir is not None:
                    base = stack.enter_context(serve_folder(source.site_dir)).rstrip("/") + "/"
                    start_urls = [base + url.lstrip("/") for url in start_urls]
                    sitemap_urls = [base + url.lstrip("/") for url in sitemap_urls]
                specs.append(
                    {
                        "name": source.name,
                        "category": source.category,
                        "start_urls": start_urls,
                        "sitemap_urls": sitemap_urls,
                        "allowed_domains": [] if source.site_dir is not None else source.allowed_domains,
                        "allow": source.allow,
                        "deny": source.deny,
                        "max_depth": source.max_depth,
                        "max_pages": source.max_pages,
                        # Pages of a served folder keep one URL from build to build, whatever the port.
                        "record_origin": {"served": base, "as": site_dir_origin(source.name)} if source.site_dir is not None else None,
                    }
                )
            return run_crawl(specs, output, manifest, settings)

    # A scheduled re-crawl runs even when the crawl is finished; it asks the sites only for changes.
    return _run("crawl", Path(output), section, [], work, task_fn=_crawl_task, run_control=cfg.operations.tasks.get("crawl"), force=recrawl)
