"""A Prefect global concurrency limit on LLM calls, shared by every flow run of the house.

    slot = llm_slot(cfg.operations.llm)        # creates the limit if it is missing
    leases = slot.leases(most=16)              # in the event loop of one client
    async with leases():                       # one request to the LLM endpoint
        ...
    await leases.aclose()                      # every slot goes back to the limit

Two builds converting at the same time share the same slots, so the endpoint never sees more
than `slots` requests at once. The limit lives on the Prefect server: the UI (Concurrency)
shows it, and it or `prefect gcl update NAME --limit N` changes it while runs go on.

Slots are paid for once per lease, not once per request. A client's first ask is for every
slot it may hold (min(concurrency, slots)) as one Prefect lease, if the limit has them free at
that moment; after that (or if they were not free), a request that finds no slot of its client
free makes the client ask for one more slot as its own lease, asking again after the server's
Retry-After while the limit has none free. A client keeps its slots for the requests that follow
and gives a lease back after `hold_seconds` of holding (its requests in flight finish first:
the first lease's slots come back together, once, each later slot on its own) or when the client
closes. So a run asks the Prefect API about `min(concurrency, slots)` times per `hold_seconds`,
other runs get their turn at least that often (a chance to take a slot), and a limit lowered by
an operator applies within `hold_seconds`. A request runs only while its client holds a slot for
it, so the requests in flight across all runs never exceed the limit. A killed run's leases
expire on the server after `LEASE_SECONDS`.

The leases are taken, renewed and given back through the Prefect client's lease endpoints, by
one API client in the client's own event loop, one ask at a time. Prefect's
`prefect.concurrency.asyncio.concurrency` starts a renewal thread and a new API client for each
lease and logs an error for an ask refused without waiting: on a 30 ms endpoint a run took
about 0.3 s and half a CPU-second to reach 8 slots that way.
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

# How long the server keeps a slot of a run that stopped renewing it (a killed run); a held
# lease is renewed at three quarters of this.
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
    """`slots` slots of the limit held through one Prefect lease by a holder task."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.in_use = 0  # requests using one of its slots now
        self.granted_at = time.monotonic()
        self.give_back = asyncio.Event()
        self.returning = False  # due, closing or no longer renewed: lends no slot any more


class SlotLeases:
    """Slots of the limit held by one client: `async with leases():` around each request.

    Raises, from `async with`: `TimeoutError` (Prefect's AcquireConcurrencySlotTimeoutError)
    when no slot came within `wait_seconds`, and Prefect's ConcurrencySlotAcquisitionError when
    the limit was deleted (a missing limit never lifts the limit) or the Prefect API failed -
    each once this client holds no slot to go on with."""

    def __init__(self, limit: LLMSlot, most: int):
        self.limit, self.most = limit, most
        self._leases: list[_Lease] = []  # granted and not yet given back
        self._held = 0  # slots of those leases
        self._asking = 0  # slots asked for and not yet granted or refused
        self._holders: dict[asyncio.Task, Optional[_Lease]] = {}  # holder -> its lease, None while asking
        self._changed = asyncio.Condition()
        self._failure: Optional[BaseException] = None
        self._closing = False
        self._api = None  # one Prefect client for every lease of this holding, opened in its loop
        self._api_opening = asyncio.Lock()
        # One ask at a time: the Prefect server's database takes one write at a time, and asks
        # side by side come back "locked" and are retried seconds later.
        self._one_ask = asyncio.Lock()
        self._bundled = False  # the first ask, for every slot at once, is made
        self._orphans: set[asyncio.Task] = set()  # releases of slots granted to a cancelled ask
        self.leases_taken = 0  # Prefect leases granted
        self.slots_taken = 0  # slots those leases held

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
                for lease in self._leases:
                    if not lease.returning and lease.in_use < lease.slots:
                        lease.in_use += 1
                        return lease
                if self._failure is not None and self._held == 0 and self._asking == 0:
                    raise self._failure
                missing = self.most - self._held - self._asking
                if missing > 0:
                    # The first ask is for every slot at once (one round trip where eight would
                    # come one after another) if the limit has them free now; after it, one slot
                    # per waiting request, each given back on its own after `hold_seconds`.
                    self._ask(1 if self._bundled else missing)
                    self._bundled = True
                await self._changed.wait()

    def _ask(self, slots: int) -> None:
        self._asking += slots
        self._failure = None
        holder = asyncio.get_running_loop().create_task(self._hold(slots))
        self._holders[holder] = None
        holder.add_done_callback(lambda done: self._holders.pop(done, None))

    async def _return(self, lease: _Lease) -> None:
        async with self._changed:
            lease.in_use -= 1
            if self._closing or time.monotonic() - lease.granted_at >= self.limit.hold_seconds:
                lease.returning = True
            if not lease.returning:
                self._changed.notify()
            elif lease.in_use == 0:
                lease.give_back.set()  # its last request is done; the next request asks anew

    async def _hold(self, slots: int) -> None:
        """Take `slots` slots as one Prefect lease, lend them to the requests, renew the lease
        while it is held and give it back when told to. More than one slot is asked for only if
        the limit has them free now; refused, this asks for one and waits its turn."""
        me, lease_id = asyncio.current_task(), None
        try:
            api = await self._prefect()
            if slots > 1:
                lease_id = await self._acquire(api, slots, wait=False)
                if lease_id is None:
                    async with self._changed:
                        self._asking -= slots - 1
                        slots = 1
                        self._changed.notify_all()  # the other waiting requests ask for theirs
            if lease_id is None:
                lease_id = await self._acquire(api, 1, wait=True)
            lease = self._holders[me] = _Lease(slots)
            self.leases_taken += 1
            self.slots_taken += slots
            async with self._changed:
                self._asking -= slots
                self._held += slots
                self._failure = None  # an earlier refusal is stale once the limit grants a slot
                self._leases.append(lease)
                self._changed.notify_all()
            await self._keep(api, lease, lease_id)
        except Exception as exc:  # noqa: BLE001 - handed to the requests waiting for a slot
            if self._holders.get(me) is None:
                self._failure = exc
        finally:
            if lease_id is not None:
                await self._release(lease_id)
            async with self._changed:
                lease = self._holders.get(me)
                if lease is None:
                    self._asking -= slots
                else:
                    lease.returning = True
                    self._held -= lease.slots
                    self._leases.remove(lease)
                self._changed.notify_all()

    async def _prefect(self):
        async with self._api_opening:
            if self._api is None:
                from prefect.client.orchestration import get_client

                api = get_client()
                await api.__aenter__()
                self._api = api
        return self._api

    async def _acquire(self, api, slots: int, wait: bool):
        """The id of a new lease of `slots` slots; None when the limit has not that many free
        and this is not to `wait`. Waiting, it asks again after the server's Retry-After."""
        from prefect.concurrency.asyncio import AcquireConcurrencySlotTimeoutError, ConcurrencySlotAcquisitionError

        name = self.limit.limit_name
        waited_until = None if self.limit.wait_seconds is None else time.monotonic() + self.limit.wait_seconds
        while True:
            try:
                response = await self._ask_once(api, slots)
            except Exception as exc:  # noqa: BLE001 - sorted below
                status = getattr(getattr(exc, "response", None), "status_code", None)
                if status != 423:
                    raise ConcurrencySlotAcquisitionError(f"Unable to acquire concurrency slots on {name!r}: {exc}") from exc
                if not wait:
                    return None
                delay = _seconds(exc.response.headers.get("Retry-After"))
                if waited_until is not None and time.monotonic() + delay > waited_until:
                    raise AcquireConcurrencySlotTimeoutError(
                        f"Attempt to acquire concurrency slots timed out after {self.limit.wait_seconds} second(s)") from None
                await asyncio.sleep(delay)
                continue
            granted = response.json()
            if not granted.get("limits"):  # strict: a deleted limit must not lift the limit
                if granted.get("lease_id"):
                    await self._release(granted["lease_id"])
                raise ConcurrencySlotAcquisitionError(f"Concurrency limits {[name]!r} must be created before acquiring slots")
            return granted["lease_id"]

    async def _ask_once(self, api, slots: int):
        async with self._one_ask:
            ask = asyncio.ensure_future(api.increment_concurrency_slots_with_lease(
                names=[self.limit.limit_name], slots=slots, mode="concurrency", lease_duration=LEASE_SECONDS))
            try:
                return await asyncio.shield(ask)
            except asyncio.CancelledError:
                ask.add_done_callback(self._give_back_orphan)  # slots granted meanwhile go back
                raise

    def _give_back_orphan(self, ask: asyncio.Future) -> None:
        if ask.cancelled() or ask.exception() is not None:
            return
        lease_id = ask.result().json().get("lease_id")
        if lease_id:
            release = asyncio.get_running_loop().create_task(self._release(lease_id))
            self._orphans.add(release)
            release.add_done_callback(self._orphans.discard)

    async def _keep(self, api, lease: _Lease, lease_id) -> None:
        """Renew the lease every three quarters of `LEASE_SECONDS` until it is to go back; a lease
        that cannot be renewed lends no more slots (its requests in flight finish)."""
        while True:
            try:
                await asyncio.wait_for(lease.give_back.wait(), LEASE_SECONDS * 0.75)
                return
            except asyncio.TimeoutError:
                pass
            for attempt in range(5):
                try:
                    await api.renew_concurrency_lease(lease_id, LEASE_SECONDS)
                    break
                except Exception as exc:  # noqa: BLE001 - retried, then the lease is let go
                    logger.warning("renewing the lease of %d LLM slot(s) failed (%s)", lease.slots, exc)
                    await asyncio.sleep(2 ** attempt)
            else:
                lease.returning = True
                return

    async def _release(self, lease_id) -> None:
        try:
            await self._api.release_concurrency_slots_with_lease(lease_id)
        except Exception as exc:  # noqa: BLE001 - the server frees it when the lease expires
            logger.warning("giving back LLM slots failed (%s); they come free within %.0f s", exc, LEASE_SECONDS)

    async def aclose(self) -> None:
        """Give every slot back to the limit and wait until the server has them."""
        self._closing = True
        async with self._changed:
            for lease in self._leases:
                lease.returning = True  # a request still using it does not hold it back
                lease.give_back.set()
            self._changed.notify_all()
        holders = dict(self._holders)
        for holder, lease in holders.items():
            if lease is None:
                holder.cancel()  # still asking: a slot granted meanwhile goes back
        await asyncio.gather(*holders, return_exceptions=True)
        await asyncio.gather(*self._orphans, return_exceptions=True)
        if self._api is not None:
            api, self._api = self._api, None
            await api.__aexit__(None, None, None)


def _seconds(retry_after: Optional[str]) -> float:
    try:
        return max(0.0, float(retry_after))
    except (TypeError, ValueError):
        return 1.0


def llm_slot(config: LLMLimitConfig) -> LLMSlot:
    """The `slot=` of the LLM client, after making sure the limit exists."""
    slots = ensure_limit(config.concurrency_limit, config.slots)
    return LLMSlot(config.concurrency_limit, slots, config.wait_seconds, config.hold_seconds)
