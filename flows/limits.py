"""A Prefect global concurrency limit on LLM calls, shared by every flow run of the house.

    slot = llm_slot(cfg.operations.llm)        # creates the limit if it is missing
    leases = slot.leases(most=16)              # in the event loop of one client
    async with leases():                       # one request to the LLM endpoint
        ...
    await leases.aclose()                      # every slot goes back to the limit

Two builds converting at the same time share the same slots, so the endpoint never sees more
than `slots` requests at once. The limit lives on the Prefect server: the UI (Concurrency)
shows it, and it or `prefect gcl update NAME --limit N` changes it while runs go on.

A slot is paid for once per lease, not once per request: a client takes a slot of the limit
(one Prefect lease, renewed by Prefect while held) when a request finds none of its own free,
keeps it for the requests that follow, and gives it back after `hold_seconds` of holding (the
request using it finishes first) or when the client closes. So a run asks the Prefect API about
`min(concurrency, slots)` times per `hold_seconds`, other runs get their turn at least that
often (a chance to take a slot), and a limit lowered by an operator applies within `hold_seconds`. A request runs only
while its client holds a lease for it, so the requests in flight across all runs never exceed
the limit. A killed run's leases expire on the server after `lease_seconds`.
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Optional

from .config import LLMLimitConfig

logger = logging.getLogger("tcm_corpus.limits")

# How long the server keeps a slot of a run that stopped renewing it (a killed run); Prefect
# renews a held lease at three quarters of this.
LEASE_SECONDS = 300.0


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
    """Picklable description of the shared limit; `leases(most)` opens a client's holding of it.

    `slots`: the limit's size when the run started (no client holds more); `wait_seconds`: how
    long asking for a slot may take before the request fails (None: as long as it takes);
    `hold_seconds`: how long a lease is kept before it goes back to the limit."""

    limit_name: str
    slots: int
    wait_seconds: Optional[float] = None
    hold_seconds: float = 60.0

    def leases(self, most: int) -> "SlotLeases":
        """A client's holding of at most `most` slots (capped at `slots`); create it in the event
        loop that sends the requests and `aclose()` it there."""
        return SlotLeases(self, max(1, min(most, self.slots)))


class _Lease:
    """One slot held through one Prefect lease by a holder task."""

    def __init__(self) -> None:
        self.granted_at = time.monotonic()
        self.give_back = asyncio.Event()
        self.lost = False  # renewal failed or the lease was given back: never reused


class SlotLeases:
    """Slots of the limit held by one client: `async with leases():` around each request.

    Raises, from `async with`: `TimeoutError` (Prefect's AcquireConcurrencySlotTimeoutError)
    when no slot came within `wait_seconds`, and ConcurrencySlotAcquisitionError when the limit
    was deleted (strict: a missing limit never lifts the limit) - each once this client holds no
    slot to go on with."""

    def __init__(self, limit: LLMSlot, most: int):
        self.limit, self.most = limit, most
        self._free: list[_Lease] = []
        self._held = 0  # leases granted and not yet given back (free or in use)
        self._asking = 0  # acquisitions under way
        self._holders: dict[asyncio.Task, Optional[_Lease]] = {}  # holder -> its lease, None while asking
        self._changed = asyncio.Condition()
        self._failure: Optional[BaseException] = None
        self._closing = False
        self.leases_taken = 0

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[None]:
        lease = await self._take()
        try:
            yield
        finally:
            await self._return(lease)

    async def _take(self) -> _Lease:
        async with self._changed:
            while True:
                if self._closing:
                    raise RuntimeError("the LLM slot leases are closed")
                if self._free:
                    return self._free.pop()
                if self._failure is not None and self._held == 0 and self._asking == 0:
                    raise self._failure
                if self._held + self._asking < self.most:
                    self._asking += 1
                    self._failure = None
                    holder = asyncio.get_running_loop().create_task(self._hold())
                    self._holders[holder] = None
                    holder.add_done_callback(lambda done: self._holders.pop(done, None))
                await self._changed.wait()

    async def _return(self, lease: _Lease) -> None:
        if lease.lost:
            return
        if self._closing or time.monotonic() - lease.granted_at >= self.limit.hold_seconds:
            lease.lost = True
            lease.give_back.set()  # the holder gives the slot back; the next request asks anew
            return
        async with self._changed:
            self._free.append(lease)
            self._changed.notify()

    async def _hold(self) -> None:
        """Take one slot as one Prefect lease, offer it to the requests, keep it until told to
        give it back (or until Prefect cancels this task because renewing the lease failed)."""
        from prefect.concurrency.asyncio import concurrency

        lease: Optional[_Lease] = None
        try:
            async with concurrency(self.limit.limit_name, occupy=1, timeout_seconds=self.limit.wait_seconds,
                                   lease_duration=LEASE_SECONDS, strict=True):
                lease = _Lease()
                self._holders[asyncio.current_task()] = lease
                self.leases_taken += 1
                async with self._changed:
                    self._asking -= 1
                    self._held += 1
                    self._failure = None  # an earlier refusal is stale once the limit grants a slot
                    self._free.append(lease)
                    self._changed.notify()
                await lease.give_back.wait()
        except Exception as exc:  # noqa: BLE001 - handed to the requests waiting for a slot
            if lease is None:
                self._failure = exc
        finally:
            async with self._changed:
                if lease is None:
                    self._asking -= 1
                else:
                    lease.lost = True
                    self._held -= 1
                    if lease in self._free:
                        self._free.remove(lease)
                self._changed.notify_all()

    async def aclose(self) -> None:
        """Give every slot back to the limit and wait until the server has them."""
        self._closing = True
        async with self._changed:
            self._free.clear()
            self._changed.notify_all()
        holders = dict(self._holders)
        for holder, lease in holders.items():
            if lease is None:
                holder.cancel()  # still asking: Prefect gives back a slot granted meanwhile
            else:
                lease.lost = True  # a request still using it does not return it
                lease.give_back.set()
        await asyncio.gather(*holders, return_exceptions=True)


def llm_slot(config: LLMLimitConfig) -> LLMSlot:
    """The `slot=` of the LLM client, after making sure the limit exists."""
    slots = ensure_limit(config.concurrency_limit, config.slots)
    return LLMSlot(config.concurrency_limit, slots, config.wait_seconds, config.hold_seconds)
