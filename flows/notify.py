"""Failure notifications, optional: a webhook and/or a Prefect notification block from config.

`notify_failure` is a Prefect flow hook (`on_failure`, `on_crashed`). It reads the run's own
`config` parameter, so a build with its own [operations.notify] section tells its own people.
With nothing configured it sends nothing. A notification that cannot be sent is logged; it
never changes the run's state.
"""
from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any, Optional

from .config import ConfigError, NotifyConfig, load_config

logger = logging.getLogger("tcm_corpus.notify")


def failure_message(flow_name: str, run_name: str, state_name: str, message: Optional[str], url: Optional[str]) -> str:
    text = f"tcm-corpus: flow run {flow_name}/{run_name} ended {state_name}"
    if message:
        text += f": {message.strip().splitlines()[0][:500]}"
    if url:
        text += f" ({url})"
    return text


def send(config: NotifyConfig, text: str, details: dict[str, Any]) -> list[str]:
    """Send `text` to every configured channel; returns the channels that took it."""
    delivered = []
    if config.webhook_url:
        body = json.dumps({"text": text, **details}, ensure_ascii=False, default=str).encode("utf-8")
        request = urllib.request.Request(
            config.webhook_url, data=body, method="POST", headers={"Content-Type": "application/json; charset=utf-8"}
        )
        try:
            with urllib.request.urlopen(request, timeout=config.timeout_seconds) as response:
                response.read()
            delivered.append("webhook")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            logger.warning("failure notification to the webhook was not delivered: %s", exc)
    if config.block:
        try:
            from prefect.blocks.core import Block

            Block.load(config.block).notify(body=text, subject="tcm-corpus run failed")
            delivered.append(f"block {config.block}")
        except Exception as exc:  # noqa: BLE001 - a missing or broken block must not mask the failure
            logger.warning("failure notification through block %s was not delivered: %s", config.block, exc)
    return delivered


def notify_failure(flow, flow_run, state) -> None:
    """Prefect hook: tell the configured channels that this flow run failed or crashed."""
    try:
        config = load_config((flow_run.parameters or {}).get("config")).operations.notify
    except ConfigError as exc:
        logger.warning("no failure notification: the run's config cannot be read (%s)", exc)
        return
    if not (config.webhook_url or config.block):
        return
    url = _run_url(flow_run)
    text = failure_message(flow.name, flow_run.name, state.name, state.message, url)
    details = {"flow": flow.name, "flow_run": flow_run.name, "flow_run_id": str(flow_run.id), "state": state.name, "url": url}
    delivered = send(config, text, details)
    if delivered:
        logger.info("failure notification sent (%s)", ", ".join(delivered))


def _run_url(flow_run) -> Optional[str]:
    try:
        from prefect.settings import PREFECT_UI_URL

        base = PREFECT_UI_URL.value()
    except Exception:  # noqa: BLE001 - a link is a convenience
        return None
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run.id}" if base else None


FAILURE_HOOKS = {"on_failure": [notify_failure], "on_crashed": [notify_failure]}
