"""HuatuoGPT-II's one-stage unification over a stream of documents: each passage of a chosen
document becomes a question it fully answers and an answer drawn from it, checked before it is
kept. Documents stream through a bounded queue, so memory stays flat however many there are.

Every passage sent to the LLM ends as one conversation candidate: kept, or rejected with its
reason and the raw reply. A passage not converted (rejected, or its request given up on) stays
as a text row when `keep_text`; a passage the budget left unsent always stays as a text row, so
nothing is lost, and a later run with budget left converts it from where the cache ends.
"""
from __future__ import annotations

import asyncio
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import pyarrow as pa

from schemas import DOCUMENTS, conform, content_id, conversation_id, dumps_meta, loads_meta

from transforms.convert.conversion import ConversionSink, convert_documents, document_kind
from .cache import ResponseCache
from .client import BudgetExhausted, ChatClient, ClientSettings, RequestFailed, Slot
from .passages import Passage, split_passages
from .prompts import PromptSet, load_prompts
from .verify import Checks, Unreadable, judge_verdict, read_field

PROVENANCE = ("title", "url")
META_PROVENANCE = ("book", "chapter", "volume", "name", "term", "file")


class ConvertError(Exception):
    """A convert configuration that cannot run (no API key in the environment, bad prompt set)."""


def api_key_from_env(params: dict) -> str:
    name = params.get("api_key_env") or "OPENAI_API_KEY"
    key = os.environ.get(name)
    if not key:
        raise ConvertError(f"convert.api_key_env: the environment variable {name} is not set")
    return key


def client_settings(params: dict, api_key: str) -> ClientSettings:
    names = ClientSettings.__dataclass_fields__
    values = {k: params[k] for k in names if k in params and params[k] is not None and k not in ("api_key",)}
    return ClientSettings(api_key=api_key, **values)


def default_cache_dir(output: str | Path) -> Path:
    """Beside the stage output, outside its temporary folder, so it survives any run."""
    output = Path(output)
    return output.with_name(f"{output.name}.cache")


@dataclass
class DocumentState:
    row: dict
    meta: dict
    passages: int
    pending: int
    converted: int = 0
    text_rows: int = 0
    reasons: Counter = field(default_factory=Counter)


@dataclass
class Outcome:
    conversation: Optional[dict] = None
    reason: Optional[str] = None  # a rejection
    raw: str = ""
    question: Optional[str] = None
    answer: Optional[str] = None
    unsent: bool = False  # the budget was spent before this passage's requests


class _CacheOnly:
    """A reservation of nothing: a cache miss is refused as over budget."""

    left = 0

    def take(self) -> None:
        raise BudgetExhausted()


_CACHE_ONLY = _CacheOnly()


class Unifier:
    """The per-passage method: question, checks, answer, checks, optional judge."""

    def __init__(self, client: ChatClient, prompts: PromptSet, checks: Checks, judge: bool, system_prompt: Optional[str]):
        self.client, self.prompts, self.checks, self.judge, self.system_prompt = client, prompts, checks, judge, system_prompt

    async def _ask(self, step: str, passage: Passage, reservation, **fields) -> str:
        messages = self.prompts.messages(step, passage=passage.text, **fields)
        if reservation is None:
            reservation = _CACHE_ONLY
        completion = await self.client.complete(messages, step=step, prompt_version=self.prompts.version,
                                                passage_hash=passage.digest, reservation=reservation)
        return completion.content

    async def passage(self, passage: Passage, title: str) -> Outcome:
        # All of a passage's requests are reserved at once: none is started that cannot finish.
        # Without budget left, a passage is still served when all its replies are in the cache.
        reservation = self.client.reserve(3 if self.judge else 2)
        try:
            return await self._passage(passage, title, reservation)
        finally:
            if reservation is not None:
                reservation.close()

    async def _passage(self, passage: Passage, title: str, reservation) -> Outcome:
        outcome = Outcome()
        try:
            outcome.raw = await self._ask("question", passage, reservation, title=title or "中医药知识",
                                          max_question_chars=self.checks.max_question_chars)
            try:
                outcome.question = read_field(outcome.raw, "question")
            except Unreadable:
                outcome.reason = "malformed_response:question"
                return outcome
            outcome.reason = self.checks.question(outcome.question, passage.text)
            if outcome.reason:
                return outcome
            outcome.raw = await self._ask("answer", passage, reservation, title=title or "中医药知识", question=outcome.question)
            try:
                outcome.answer = read_field(outcome.raw, "answer")
            except Unreadable:
                outcome.reason = "malformed_response:answer"
                return outcome
            outcome.reason = self.checks.answer(outcome.answer, passage.text)
            if outcome.reason or not self.judge:
                return outcome
            outcome.raw = await self._ask("judge", passage, reservation, question=outcome.question, answer=outcome.answer)
            try:
                outcome.reason = judge_verdict(outcome.raw)
            except Unreadable:
                outcome.reason = "malformed_response:judge"
            return outcome
        except BudgetExhausted:
            return Outcome(unsent=True, question=outcome.question)
        except RequestFailed as exc:
            outcome.reason = f"request_failed:{exc.reason}"
            return outcome


class LLMConversion:
    """Runs the unification over record batches of documents and writes through a sink."""

    def __init__(self, sink: ConversionSink, params: dict, client: ChatClient, prompts: PromptSet,
                 progress: Optional[Callable[[str, int], None]] = None):
        self.sink, self.params, self.client, self.prompts, self.progress = sink, params, client, prompts, progress
        self.checks = Checks.from_params(params)
        self.unifier = Unifier(client, prompts, self.checks, bool(params.get("judge")), params.get("system_prompt"))
        self.categories = set(params.get("llm_categories") or [])
        self.kinds = set(params.get("llm_kinds") or [])
        self.min_chars = int(params.get("min_passage_chars", 80))
        self.max_chars = int(params.get("max_passage_chars", 1000))
        self.keep_text = params.get("keep_text", True)
        self.counts: Counter = Counter()
        self.schema: Optional[pa.Schema] = None

    def chosen(self, row: dict, meta: dict) -> bool:
        if self.categories and row["category"] not in self.categories:
            return False
        return not self.kinds or document_kind(meta, row.get("url")) in self.kinds

    async def run(self, batches: Iterable[pa.RecordBatch]) -> None:
        workers_n = max(1, 2 * self.client.settings.concurrency)
        queue: asyncio.Queue = asyncio.Queue(maxsize=workers_n * 2)

        async def worker() -> None:
            while True:
                job = await queue.get()
                if job is None:
                    return
                state, passage = job
                outcome = await self.unifier.passage(passage, state.row.get("title") or state.meta.get("book") or "")
                self._record(state, passage, outcome)

        async def produce() -> None:
            for batch in batches:
                table = conform(batch, DOCUMENTS)
                self.schema = table.schema
                chosen_rows, rest = [], []
                for number, row in enumerate(table.to_pylist()):
                    meta = loads_meta(row.get("meta"))
                    (chosen_rows if self.chosen(row, meta) else rest).append((number, row, meta))
                if rest:
                    self.sink.template_result(convert_documents(table.take([n for n, _, _ in rest]), self.params))
                    if self.progress:
                        self.progress(DOCUMENTS, len(rest))
                for _, row, meta in chosen_rows:
                    self.sink.counts["documents_in"] += 1
                    passages = split_passages(row["text"], self.min_chars, self.max_chars)
                    if not passages or len(row["text"].strip()) < self.min_chars:
                        self.counts["documents_too_short_for_llm"] += 1
                        self._finish_as_text(row)
                        continue
                    state = DocumentState(row, meta, len(passages), len(passages))
                    self.counts["passages"] += len(passages)
                    self.counts.update(f"passages_cut_at_{p.cut}" for p in passages if p.cut in ("comma", "hard"))
                    for passage in passages:
                        await queue.put((state, passage))
            for _ in range(workers_n):
                await queue.put(None)

        tasks = [asyncio.create_task(produce())] + [asyncio.create_task(worker()) for _ in range(workers_n)]
        try:
            # The first failure (an endpoint refusing every request) stops the run at once.
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _finish_as_text(self, row: dict) -> None:
        if self.keep_text:
            self.sink.counts["documents_left_as_text"] += 1
            self.sink.text([row], self.schema)
        else:
            self.sink.reject_documents([{**row, "reason": "not_converted:backend=openai:too_short_for_llm"}])
        if self.progress:
            self.progress(DOCUMENTS, 1)

    def _provenance(self, state: DocumentState, passage: Passage) -> dict:
        meta = {k: state.row.get(k) for k in PROVENANCE if state.row.get(k)}
        meta.update({k: state.meta[k] for k in META_PROVENANCE if state.meta.get(k) is not None})
        return {**meta, "passage": passage.index, "passages": state.passages, "passage_hash": passage.digest, "cut": passage.cut}

    def _record(self, state: DocumentState, passage: Passage, outcome: Outcome) -> None:
        row = state.row
        converter = {"converter": "openai", "model": self.client.settings.model, "prompt_version": self.prompts.version}
        if outcome.unsent:
            self.counts["passages_unsent_budget"] += 1
        elif outcome.reason is None:
            system = self.params.get("system_prompt")
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": outcome.question},
                {"role": "assistant", "content": outcome.answer},
            ]
            self.sink.produced([{
                "id": conversation_id(row["source"], messages), "messages": messages, "source": row["source"],
                "category": row["category"], "origin_id": row["id"],
                "meta": dumps_meta({**converter, **self._provenance(state, passage)}),
            }])
            self.counts["passages_converted"] += 1
            state.converted += 1
        else:
            self.counts["passages_rejected"] += 1
            state.reasons[outcome.reason.split(":", 1)[0]] += 1
            messages = [{"role": "user", "content": outcome.question}] if outcome.question else []
            if outcome.answer:
                messages.append({"role": "assistant", "content": outcome.answer})
            self.sink.reject_conversations([{
                "id": content_id("candidate", row["id"], str(passage.index)), "messages": messages,
                "source": row["source"], "category": row["category"], "origin_id": row["id"],
                "meta": dumps_meta({**converter, **self._provenance(state, passage), "passage_text": passage.text,
                                    "raw_response": outcome.raw}),
                "reason": outcome.reason,
            }])
        if outcome.reason is not None or outcome.unsent:
            if self.keep_text or outcome.unsent:
                left = "budget" if outcome.unsent else outcome.reason.split(":", 1)[0]
                self.sink.text([{
                    **row, "id": content_id("passage", row["id"], str(passage.index)), "text": passage.text,
                    "meta": dumps_meta({**state.meta, "origin_id": row["id"], **self._provenance(state, passage),
                                        "left_as_text": left}),
                }], self.schema)
                state.text_rows += 1
                self.counts["passages_left_as_text"] += 1
        state.pending -= 1
        if state.pending == 0:
            self._document_done(state)

    def _document_done(self, state: DocumentState) -> None:
        counts = self.sink.counts
        if state.converted:
            counts["documents_converted"] += 1
            counts["documents_converted_by_llm"] += 1
        elif state.text_rows:
            counts["documents_left_as_text"] += 1
        else:
            reasons = ",".join(f"{k}={v}" for k, v in sorted(state.reasons.items()))
            self.sink.reject_documents([{**state.row, "reason": f"not_converted:backend=openai:{reasons}"}])
        if self.progress:
            self.progress(DOCUMENTS, 1)


def usage_report(client: ChatClient, params: dict) -> dict:
    """Token usage and an estimated cost of the requests this run paid for."""
    stats = client.stats.as_dict()
    prompt_price = float(params.get("price_prompt_per_1k") or 0)
    completion_price = float(params.get("price_completion_per_1k") or 0)
    usage = stats["usage"]
    stats["estimated_cost"] = round(usage["prompt_tokens"] / 1000 * prompt_price + usage["completion_tokens"] / 1000 * completion_price, 6)
    saved = stats["usage_served_from_cache"]
    stats["estimated_cost_saved_by_cache"] = round(saved["prompt_tokens"] / 1000 * prompt_price + saved["completion_tokens"] / 1000 * completion_price, 6)
    stats["budget"] = {"max_requests": client.budget.max_requests, "max_total_tokens": client.budget.max_tokens,
                       "exhausted": client.budget.exhausted}
    return stats


def convert_with_llm(batches: Iterable[pa.RecordBatch], sink: ConversionSink, params: dict, cache_dir: Path,
                     slot: Optional[Slot] = None, progress=None) -> dict:
    """Run the unification over `batches`; returns the stage's LLM statistics for the manifest."""
    api_key = api_key_from_env(params)
    try:
        prompts = load_prompts(params.get("prompt_version") or "unify-1", params.get("prompt_file"))
    except (ValueError, OSError) as exc:
        raise ConvertError(f"convert.prompt_version: {exc}") from None
    cache = ResponseCache(Path(cache_dir) / "responses.sqlite")

    async def main() -> dict:
        client = ChatClient(client_settings(params, api_key), cache=cache, slot=slot)
        try:
            conversion = LLMConversion(sink, params, client, prompts, progress)
            await conversion.run(batches)
            return {**dict(conversion.counts), "llm": usage_report(client, params), "prompt_version": prompts.version,
                    "cache": {"path": str(cache.path), "responses": len(cache)}}
        finally:
            await client.close()

    try:
        return asyncio.run(main())
    finally:
        cache.close()
