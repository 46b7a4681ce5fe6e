"""Conflicting answers: one prompt, several different answers.

A conversation's prompt is every turn before its final answer (system turns left out, roles
kept), its answer the final assistant turn; both are compared in match form
(`normalize.match_key`: simplified, without punctuation or spacing), so copies differing only in
form are one answer. A prompt is in conflict when the rows holding it give two or more different
answers: a model trained on both learns neither (五倍子 given the 性味 of 五味子 beside its own).

`AnswerIndex` gathers 8-byte digests of prompts and answers batch by batch (about 40 bytes a
conversation, no text kept); `conflicts()` gives the prompts in conflict with how many answers
each has. The select stage drops or keeps their rows (`[select] conflicting_answers`), and the
corpus report lists those left, with examples.
"""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from typing import Iterable

import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute in corpus_conflicts

from transforms.clean.normalize import match_key, match_keys


def prompt_and_answer(messages: list[dict] | None) -> tuple[str, str] | None:
    """(prompt, answer) of a conversation in match form; None without a final answer."""
    turns = [m for m in (messages or []) if m.get("role") != "system"]
    if len(turns) < 2 or turns[-1].get("role") != "assistant":
        return None
    prompt = "\n".join(f"{m.get('role')}:{match_key(m.get('content') or '')}" for m in turns[:-1])
    return prompt, match_key(turns[-1].get("content") or "")


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def conversation_keys(messages: Iterable[list[dict] | None]) -> list[tuple[int, int] | None]:
    """Per conversation, (prompt digest, answer digest), or None without a final answer: the
    digests of `prompt_and_answer`, with every turn of the batch put in match form by one
    `match_keys` call. Conversations whose turns are equal as written (a corpus's fine-tuning
    copies `<id>@<epoch>`, repeated prompts) are put in match form once."""
    slots: list[int | None] = []  # per conversation, its distinct conversation's number
    distinct: dict[tuple, int] = {}
    contents: list[str] = []
    for row in messages:
        turns = [m for m in (row or []) if m.get("role") != "system"]
        if len(turns) < 2 or turns[-1].get("role") != "assistant":
            slots.append(None)
            continue
        written = tuple((m.get("role"), m.get("content") or "") for m in turns)
        slot = distinct.get(written)
        if slot is None:
            slot = distinct[written] = len(distinct)
            contents.extend(content for _, content in written)
        slots.append(slot)
    forms = iter(match_keys(contents))
    found: list[tuple[int, int]] = []
    for written in distinct:  # in slot order: dicts keep insertion order
        prompt = "\n".join(f"{role}:{next(forms)}" for role, _ in written[:-1])
        found.append((_digest(prompt), _digest(next(forms))))
    return [None if slot is None else found[slot] for slot in slots]


class ConflictingRows:
    """What the select step needs to find the rows in conflict without putting every
    conversation in match form again: the conflicts, the ids of the rows passing the rules
    whose prompt is in conflict (only rows with one of these ids are keyed), and `others`: per
    such id, (id, source) of a row with the same prompt and a different answer, the first in
    read order."""

    def __init__(self, conflicts: dict[int, int], ids: set[str], others: dict[str, tuple[str, str]] | None = None):
        self.conflicts = conflicts
        self.ids = ids
        self.others = others or {}

    def __len__(self) -> int:
        return len(self.conflicts)


class AnswerIndex:
    """The distinct answers of every prompt seen, as digests."""

    def __init__(self) -> None:
        self.answers: dict[int, set[int]] = defaultdict(set)
        self.rows: Counter = Counter()  # prompt digest -> conversations holding it

    def add(self, table: pa.Table) -> None:
        self.add_keys(conversation_keys(table.column("messages").to_pylist()))

    def add_keys(self, keys: Iterable[tuple[int, int] | None]) -> None:
        """Add conversations by their `conversation_keys`."""
        for key in keys:
            if key is not None:
                self.answers[key[0]].add(key[1])
                self.rows[key[0]] += 1

    def merge(self, other: "AnswerIndex") -> None:
        for prompt, found in other.answers.items():
            self.answers[prompt] |= found
        self.rows.update(other.rows)

    def conflicts(self) -> dict[int, int]:
        """Prompt digest -> number of different answers, for prompts with two or more."""
        return {prompt: len(answers) for prompt, answers in self.answers.items() if len(answers) > 1}


def other_rows(holders: dict[int, list[tuple[int, str, str]]]) -> dict[str, tuple[str, str]]:
    """`holders`: per prompt digest, its rows in read order as (answer digest, id, source). Per
    id of a row whose prompt has another answer, (id, source) of the first row giving another:
    the row it conflicts with."""
    others: dict[str, tuple[str, str]] = {}
    for rows in holders.values():
        first_answer, first_id, first_source = rows[0]
        # The first row unlike the first answer: the first unlike any row giving the first answer.
        unlike_first = next(((o_id, o_source) for o_answer, o_id, o_source in rows if o_answer != first_answer), None)
        if unlike_first is None:
            continue
        for answer, row_id, _ in rows:
            others[row_id] = unlike_first if answer == first_answer else (first_id, first_source)
    return others


def table_other_rows(table: pa.Table, conflicts: dict[int, int], among: list[bool]) -> dict[str, tuple[str, str]]:
    """`other_rows` of the rows of a conversations table marked in `among` whose prompt is in
    `conflicts` (digests as `AnswerIndex.conflicts`)."""
    holders: dict[int, list[tuple[int, str, str]]] = {}
    keys = conversation_keys(table.column("messages").to_pylist())
    for key, row_id, source, chosen in zip(keys, table.column("id").to_pylist(), table.column("source").to_pylist(), among):
        if chosen and key is not None and key[0] in conflicts:
            holders.setdefault(key[0], []).append((key[1], row_id, source))
    return other_rows(holders)


def conflicting_rows(table: pa.Table, conflicts: dict[int, int] | ConflictingRows) -> list[int | None]:
    """Per row of a conversations table, the number of answers its prompt has when it is in
    conflict, else None. With ConflictingRows, for the rows that pass the rules (the others may
    read None): only rows with one of its ids are keyed."""
    if not conflicts:
        return [None] * table.num_rows
    if isinstance(conflicts, ConflictingRows):
        found: list[int | None] = [None] * table.num_rows
        named = [i for i, row_id in enumerate(table.column("id").to_pylist()) if row_id in conflicts.ids]
        if named:
            keys = conversation_keys(table.column("messages").take(named).to_pylist())
            for i, key in zip(named, keys):
                found[i] = None if key is None else conflicts.conflicts.get(key[0])
        return found
    return [None if key is None else conflicts.get(key[0]) for key in conversation_keys(table.column("messages").to_pylist())]


def conflict_examples(tables: Iterable[pa.Table], conflicts: dict[int, int], limit: int = 5, chars: int = 80) -> list[dict]:
    """Up to `limit` prompts in conflict with their different answers (cut to `chars`) and the
    sources giving them: [{"prompt", "answers": [{"answer", "source", "id"}]}]."""
    return keyed_conflict_examples(((table, None) for table in tables), conflicts, limit, chars)


def keyed_conflict_examples(
    tables: Iterable[tuple[pa.Table, list[tuple[int, int] | None] | None]], conflicts: dict[int, int], limit: int = 5, chars: int = 80
) -> list[dict]:
    """conflict_examples of tables given with their `conversation_keys` where known (else None):
    then only the rows in conflict are read."""
    chosen: dict[int, dict] = {}
    seen: dict[int, set[int]] = defaultdict(set)
    for table, keys in tables:
        if keys is not None:
            hits = [i for i, key in enumerate(keys) if key is not None and key[0] in conflicts]
            if not hits:
                continue
            table, keys = table.take(hits), [keys[i] for i in hits]
        messages = table.column("messages").to_pylist()
        keys = conversation_keys(messages) if keys is None else keys
        for row, key, source, row_id in zip(messages, keys, table.column("source").to_pylist(), table.column("id").to_pylist()):
            if key is None or key[0] not in conflicts:
                continue
            if key[0] not in chosen:
                if len(chosen) >= limit:
                    continue
                turns = [m for m in row if m.get("role") != "system"]
                chosen[key[0]] = {"prompt": (turns[-2].get("content") or "")[:chars], "answers": []}
            if key[1] not in seen[key[0]]:
                seen[key[0]].add(key[1])
                answer = next(m for m in reversed(row) if m.get("role") == "assistant").get("content") or ""
                chosen[key[0]]["answers"].append({"answer": answer[:chars], "source": source, "id": row_id})
    return list(chosen.values())


def corpus_conflicts(corpus, batch_rows: int = 8192, limit: int = 5) -> dict:
    """Prompts the corpus shards (`part-*.parquet` of a corpus folder) answer in two or more
    ways: {"prompts", "rows", "examples"}; fine-tuning copies of one row (`<id>@<epoch>`) give
    one answer, so they are no conflict."""
    import pyarrow.parquet as pq
    from pathlib import Path

    files = sorted(Path(corpus).glob("part-*.parquet"))

    def tables():
        for file in files:
            for batch in pq.ParquetFile(file).iter_batches(batch_size=batch_rows, columns=["id", "source", "format", "messages"]):
                table = pa.Table.from_batches([batch])
                yield table.filter(pa.compute.equal(table.column("format"), "chat"))

    # A fine-tuning row's copies (`<id>@<epoch>`) lie apart in the shuffled shards: the key of
    # each copy's turns is kept by a digest of the turns as written and found again for the next.
    copy_keys: dict[bytes, tuple[int, int] | None] = {}

    def keyed(table: pa.Table) -> list[tuple[int, int] | None]:
        messages = table.column("messages").to_pylist()
        keys: list[tuple[int, int] | None] = [None] * len(messages)
        todo: list[int] = []
        written: dict[int, bytes] = {}
        for i, (row_id, row) in enumerate(zip(table.column("id").to_pylist(), messages)):
            if row_id is not None and "@" in row_id:
                written[i] = _written_digest(row)
                if written[i] in copy_keys:
                    keys[i] = copy_keys[written[i]]
                    continue
            todo.append(i)
        for i, key in zip(todo, conversation_keys([messages[i] for i in todo])):
            keys[i] = key
            if i in written:
                copy_keys[written[i]] = key
        return keys

    index = AnswerIndex()
    for table in tables():
        index.add_keys(keyed(table))
    conflicts = index.conflicts()
    return {
        "prompts": len(conflicts),
        "rows": sum(index.rows[p] for p in conflicts),
        "examples": keyed_conflict_examples(((table, keyed(table)) for table in tables()), conflicts, limit) if conflicts else [],
    }


def _written_digest(messages: list[dict] | None) -> bytes:
    """16 bytes naming a conversation's turns as written (roles and contents, in order)."""
    text = "\x1e".join(f"{m.get('role')}\x1f{m.get('content') or ''}" for m in (messages or []))
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
