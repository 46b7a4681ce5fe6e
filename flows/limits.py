"""A Prefect global concurrency limit on LLM calls, shared by every flow run of the house.

    slot = llm_slot(cfg.operations.llm)        # creates the limit if it is missing
    async with slot():                         # one request to the LLM endpoint
        ...

Two builds converting at the same time share the same slots, so the endpoint never sees more
than `slots` requests at once. The limit lives on the Prefect server: the UI (Concurrency)
shows it, and it or `prefect gcl update NAME --limit N` changes it while runs go on.
"""
from __future__ import annotations

import logging
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Optional

from .config import LLMLimitConfig

logger = logging.getLogger("tcm_corpus.limits")


def ensure_limit(name: str, slots: int) -> int:
    """Create the global concurrency limit `name` with `slots` if missing; return its limit.

    An existing limit keeps the value an operator gave it (UI, `prefect gcl update`)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
                logger.info("created global concurrency limit %s with %d slots", name, slots)
                return slots
            except ObjectAlreadyExists:  # another run created it first
                existing = client.read_global_concurrency_limit_by_name(name)
        if existing.limit != slots:
            logger.info("global concurrency limit %s has %d slots (config says %d; the server's value is kept)", name, existing.limit, slots)
        return existing.limit


@dataclass(frozen=True)
class LLMSlot:
    """A picklable factory of `async with` blocks that each hold one slot of the limit."""

    limit_name: str
    wait_seconds: Optional[float] = None

    def __call__(self) -> AbstractAsyncContextManager[None]:
        from prefect.concurrency.asyncio import concurrency

        # strict: a limit deleted while runs go on fails the call instead of lifting the limit.
        return concurrency(self.limit_name, occupy=1, timeout_seconds=self.wait_seconds, strict=True)


def llm_slot(config: LLMLimitConfig) -> LLMSlot:
    """The `slot=` factory for the LLM client, after making sure the limit exists."""
    ensure_limit(config.concurrency_limit, config.slots)
    return LLMSlot(config.concurrency_limit, config.wait_seconds)
