"""Records of any common shape → Conversations (or Documents, for text records).

A file is any format `records.read_records` reads (JSON, JSON lines, CSV, TSV, Parquet, Arrow,
datasets folders; compressed or not). Each record's shape is recognised on its own, so one file
may mix shapes:

    OpenAI     {"messages": [{"role", "content"}, ...]}
    ShareGPT   {"conversations": [{"from": "human"|"gpt"|"system", "value"}, ...]}
    dialogue   {"dialogue", "text" or "content": "医生：...\\n患者：..."}  a consultation in one string
    Q&A        a question field (instruction, instruct, question, query, prompt), an answer
               field (output, answer, response, completion), "input"? (appended to the
               question; alone with an answer it is the question), "history"?: [[user,
               assistant], ...] before the final turn, "system"?; list-valued question and
               answer are paired up turn by turn
    text       {"text" or "content": "..."} with none of the above, or a bare string (a JSON
               list of strings): a Document, `title` kept

A source's `fields` maps shape names (question, answer, input, system, history, messages,
conversations, text, title, id) to its own field names: {"question": "问题", "answer": "回答"}.

Dialogues are repaired rather than lost: consecutive turns of one role are joined, an opening
assistant turn and a last user turn with no reply go to meta ("opening", "unanswered"), and
meta["repairs"] counts what was done.

A dialogue's speakers: 患者 and those speaking for the patient (家长, 患者家属 ...) are the user,
医生/大夫 the assistant; consecutive turns of one speaker are merged. A doctor who speaks first
("姜先生哪里不舒服？慢慢说。") answers a patient's greeting, OPENING_PROMPT, the one turn the
importer writes (meta["added_turns"] names it). A dialogue record's `answer` (the expert's
conclusion on the consultation, as MTCMB gives: 疾病诊断, 证候诊断, 治法, 方剂, 药物组成) becomes a
last turn: the patient's last unanswered words, if any, then a request for the conclusion,
naming the headings the answer has (CONCLUSION_PROMPT), answered by it. Without an answer, a
patient's last words with no reply go to meta["unanswered"].

Every non-empty string of a record lands in a message, or in a meta key listed in
`Imported.untrained` (counted per source in the ingest manifest's stats.untrained_meta), or, for
the record's `id`, in the origin_id column.

A record that cannot be read is rejected with a reason (`malformed:json`, `malformed:no_output`,
...), its original in meta["raw"], and the rest of the file still imports.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

from .base import Imported, SourceError, conversation, document

USER, ASSISTANT, SYSTEM = "user", "assistant", "system"
SHAREGPT_ROLES = {
    "human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT, "chatgpt": ASSISTANT,
    "bot": ASSISTANT, "model": ASSISTANT, "system": SYSTEM,
}
PATIENT_SIDE = ("患者家属", "患者母亲", "患者父亲", "病人家属", "患者", "病人", "家长", "家属", "母亲", "父亲")
DOCTOR_SIDE = ("医生", "大夫", "医师")
# A speaker may carry a qualifier: 患者（家长）：
SPEAKER = re.compile(rf"(?m)^[ \t\u3000]*({'|'.join(PATIENT_SIDE + DOCTOR_SIDE)})(?:[（(][^）)\n]{{1,8}}[）)])?[：:]")
QUESTION_KEYS = ("instruction", "instruct", "question", "query", "prompt")
ANSWER_KEYS = ("output", "answer", "response", "completion")
TEXT_KEYS = ("text", "content")
# The names a source's `fields` may map, and the field each stands for here.
FIELD_NAMES = {
    "question": "instruction", "instruction": "instruction", "input": "input", "answer": "output",
    "output": "output", "system": "system", "history": "history", "messages": "messages",
    "conversations": "conversations", "text": "text", "title": "title", "id": "id",
}
# Fields a shape reads; every other scalar field of a record is kept in meta.
SHAPE_FIELDS = {"messages", "conversations", "dialogue", "text", "input", "history", "system", "id",
                *QUESTION_KEYS, *ANSWER_KEYS}
DOCUMENT_FIELDS = SHAPE_FIELDS | {"content", "title"}
# A dialogue record's field holding the expert's conclusion on the consultation.
CONCLUSION_FIELDS = ("answer", "diagnosis", "诊断")
CONSUMED = "_consumed"  # fields a shape took into messages beyond SHAPE_FIELDS
OPENING_PROMPT = "医生您好。"
CONCLUSION_PROMPT = "请根据以上问诊，给出{headings}。"
CONCLUSION_GENERIC = "请根据以上问诊，给出诊断和治疗意见。"
# `中医疾病诊断：痹证`: a heading of a structured conclusion, at the start of a line.
CONCLUSION_HEADING = re.compile(r"(?m)^([^\n：:]{2,24})[：:]")


class Malformed(Exception):
    """A record that is not a conversation; the message is the reason's detail."""


def import_instructions(path: Path, source: str, category: str, options: dict | None = None) -> Iterator[Imported]:
    """Every record of a records file (any format `records.read_records` reads) as a Conversation,
    or a Document for a text record; `options["fields"]` maps shape names to the file's own.
    SourceError (after the last record) when a field `fields` names is in no record of the file."""
    fields = field_map((options or {}).get("fields"))
    unseen = set(fields.values())  # the file's own names `fields` gives, until a record has each
    names_read: dict[str, None] = {}  # the records' field names, in order of first sight
    for index, record, raw_error in read_records(path, options):
        base_meta = {"file": path.name, "index": index}
        origin = _origin_id(record, path.name, index)
        if raw_error is not None:
            yield _rejected("malformed:json", raw_error, base_meta, origin, source, category, path)
            continue
        if isinstance(record, dict) and fields:
            if unseen:
                unseen.difference_update(record)
                names_read.update(dict.fromkeys(record))
            record = _renamed(record, fields)
        if isinstance(record, str) or (isinstance(record, dict) and _is_text_record(record)):
            yield _text_document(record, base_meta, source, category, path)
            continue
        try:
            messages, extra = to_messages(record)
        except Malformed as exc:
            yield _rejected(f"malformed:{exc}", record, base_meta, origin, source, category, path)
            continue
        consumed = extra.pop(CONSUMED, [])
        kept_aside = {k: v for k, v in {**extra, **_extra_fields(record)}.items() if k not in consumed}
        kept_aside.pop("added_turns", None)  # written by the importer, not the record's content
        kept_aside.pop("repairs", None)
        meta = {**base_meta, **extra, **{k: v for k, v in _extra_fields(record).items() if k not in consumed}}
        imported = conversation(messages, source, category, origin_id=origin, meta=meta)
        imported.untrained = tuple(sorted(kept_aside))
        yield imported
    if unseen and names_read:
        raise SourceError(_unseen_fields(path, source, (options or {}).get("fields") or {}, unseen, list(names_read)))


def _unseen_fields(path: Path, source: str, given: dict, unseen: set[str], names: list[str]) -> str:
    """One line: the `fields` entries naming a field no record of `path` has, the fields its
    records do have, and what to write instead."""
    wrong = ", ".join(f'{name} = "{own}"' for name, own in given.items() if own in unseen)
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return (f"source {source}: {path}: fields {{{wrong}}} names a field no record of the file has "
            f"(its records' fields: {shown}); write the file's own field names there, or leave fields out "
            f"to read the common shapes")


def read_records(path: Path, options: dict | None = None) -> Iterator[tuple[int, Any, str | None]]:
    """(index, record, None) per record, or (index, None, raw line) for a line that is not JSON;
    every format of `records.read_records`."""
    from .records import read_records as read_any

    return read_any(path, options)


def field_map(fields: dict | None) -> dict[str, str]:
    """A source's `fields` ({shape name: the file's field name}) checked, with the shape names
    made the importer's own (question -> instruction, answer -> output). ValueError names a key
    that is not a shape name."""
    if not fields:
        return {}
    mapped = {}
    for name, own in fields.items():
        if name not in FIELD_NAMES:
            raise ValueError(f"fields: unknown name {name!r} (names: {', '.join(FIELD_NAMES)})")
        if not isinstance(own, str) or not own:
            raise ValueError(f"fields.{name}: give the file's field name as a string")
        mapped[FIELD_NAMES[name]] = own
    return mapped


def to_messages(record: Any) -> tuple[list[dict], dict]:
    """A record's turns as messages, plus what meta should keep of them (the repairs made:
    joined turns, a dropped opening or unanswered last turn); raises Malformed."""
    if not isinstance(record, dict):
        raise Malformed("not_object")
    if "messages" in record:
        return repaired(_openai(record["messages"]))
    if "conversations" in record:
        return repaired(_sharegpt(record["conversations"]))
    for field in ("dialogue", "text", "content"):
        if isinstance(record.get(field), str) and SPEAKER.search(record[field]):
            key = next((key for key in CONCLUSION_FIELDS
                        if isinstance(record.get(key), str) and record[key].strip()), None)
            messages, extra = dialogue_messages(record[field], record[key] if key else None)
            return messages, {**extra, CONSUMED: [key]} if key else extra
    question_key = next((key for key in QUESTION_KEYS if key in record), None)
    answer_key = next((key for key in ANSWER_KEYS if key in record), None)
    extra_input = record.get("input")
    if question_key is None and answer_key is not None and "input" in record:
        question_key, extra_input = "input", None  # {"input", "output"}: the input is the question
    if question_key is None and answer_key is None:
        raise Malformed("no_shape")
    output = record.get(answer_key) if answer_key else None
    if output is None or (isinstance(output, (str, list)) and not _text(output)):
        raise Malformed("no_output")
    instruction = record.get(question_key) if question_key else None
    if instruction is None or (isinstance(instruction, (str, list)) and not _text(instruction)):
        raise Malformed("no_instruction")
    messages = _system(record.get("system"))
    messages += _history(record.get("history"))
    if isinstance(instruction, list) or isinstance(output, list):
        messages += _paired(instruction, output)
    else:
        messages += [_message(USER, _with_input(instruction, extra_input)), _message(ASSISTANT, output)]
    return repaired(messages)


def repaired(messages: list[dict]) -> tuple[list[dict], dict]:
    """Messages made to alternate, then checked: consecutive turns of one role are joined (one
    turn a line), an opening assistant turn goes to meta["opening"] and an unanswered last user
    turn to meta["unanswered"]; meta["repairs"] counts each kind. Raises Malformed when nothing
    answerable is left."""
    system = messages[:1] if messages and messages[0]["role"] == SYSTEM else []
    body: list[dict] = []
    repairs: dict[str, int] = {}
    for message in messages[len(system):]:
        if body and body[-1]["role"] == message["role"] and message["role"] != SYSTEM:
            body[-1] = {**body[-1], "content": f"{body[-1]['content']}\n{message['content']}".strip()}
            repairs["joined_turns"] = repairs.get("joined_turns", 0) + 1
        else:
            body.append(message)
    extra: dict = {}
    if body and body[0]["role"] == ASSISTANT and len(body) > 1:
        extra["opening"] = body.pop(0)["content"]
        repairs["dropped_opening"] = 1
    if body and body[-1]["role"] == USER and any(m["role"] == ASSISTANT for m in body):
        extra["unanswered"] = body.pop()["content"]
        repairs["dropped_unanswered"] = 1
    if repairs:
        extra["repairs"] = repairs
    return _checked(system + body), extra


def dialogue_messages(text: str, conclusion: str | None = None) -> tuple[list[dict], dict]:
    """Messages of a consultation written as one text with 医生：/患者： turns; `conclusion`: the
    expert's conclusion on it, which becomes the last turn (see the module doc)."""
    parts = SPEAKER.split(text)
    turns: list[dict] = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        role = ASSISTANT if speaker in DOCTOR_SIDE else USER
        content = content.strip()
        if not content:
            continue
        turns.append({"role": role, "content": content})
    extra: dict = {}
    added: list[str] = []
    preamble = parts[0].strip()
    if preamble:
        extra["preamble"] = preamble
    if turns and turns[0]["role"] == ASSISTANT:
        turns.insert(0, {"role": USER, "content": OPENING_PROMPT})
        added.append(OPENING_PROMPT)
    conclusion = (conclusion or "").strip()
    if conclusion:
        request = conclusion_request(conclusion)
        added.append(request)
        if turns and turns[-1]["role"] == USER:
            turns[-1]["content"] += "\n" + request
        else:
            turns.append({"role": USER, "content": request})
        turns.append({"role": ASSISTANT, "content": conclusion})
    elif turns and turns[-1]["role"] == USER:
        extra["unanswered"] = turns.pop()["content"]
    if added:
        extra["added_turns"] = added
    if not turns:
        raise Malformed("no_turns")
    messages, repairs = repaired(turns)
    return messages, {**extra, **repairs}


def conclusion_request(conclusion: str) -> str:
    """The patient's request for a conclusion, naming its headings in order: 「请根据以上问诊，
    给出中医疾病诊断、中医证候诊断、中医治法、方剂名称、药物组成。」"""
    headings = list(dict.fromkeys(h.strip() for h in CONCLUSION_HEADING.findall(conclusion)))
    return CONCLUSION_PROMPT.format(headings="、".join(headings)) if headings else CONCLUSION_GENERIC


def _openai(messages: Any) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise Malformed("no_turns")
    result = []
    for turn in messages:
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise Malformed("bad_turn")
        role = SHAREGPT_ROLES.get(str(turn["role"]).lower())
        if role is None:
            raise Malformed("unknown_role")
        result.append(_message(role, turn["content"]))
    return result


def _sharegpt(turns: Any) -> list[dict]:
    if not isinstance(turns, list) or not turns:
        raise Malformed("no_turns")
    result = []
    for turn in turns:
        if not isinstance(turn, dict):
            raise Malformed("bad_turn")
        speaker = turn.get("from", turn.get("role"))
        content = turn.get("value", turn.get("content"))
        role = SHAREGPT_ROLES.get(str(speaker).lower())
        if role is None:
            raise Malformed("unknown_role")
        result.append(_message(role, content))
    return result


def _system(system: Any) -> list[dict]:
    if system is None or (isinstance(system, str) and not system.strip()):
        return []
    return [_message(SYSTEM, system)]


def _history(history: Any) -> list[dict]:
    if history is None:
        return []
    if not isinstance(history, list):
        raise Malformed("history")
    messages = []
    for pair in history:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise Malformed("history")
        messages += [_message(USER, pair[0]), _message(ASSISTANT, pair[1])]
    return messages


def _paired(instruction: Any, output: Any) -> list[dict]:
    questions = instruction if isinstance(instruction, list) else [instruction]
    answers = output if isinstance(output, list) else [output]
    if len(questions) != len(answers):
        raise Malformed("unpaired_turns")
    messages = []
    for question, answer in zip(questions, answers):
        messages += [_message(USER, question), _message(ASSISTANT, answer)]
    return messages


def _with_input(instruction: Any, extra_input: Any) -> Any:
    if isinstance(instruction, str) and isinstance(extra_input, str) and extra_input.strip():
        return f"{instruction.strip()}\n{extra_input.strip()}"
    if extra_input is not None and not isinstance(extra_input, str):
        raise Malformed("not_string")
    return instruction


def _message(role: str, content: Any) -> dict:
    if not isinstance(content, str):
        raise Malformed("not_string")
    return {"role": role, "content": content.strip()}


def _checked(messages: list[dict]) -> list[dict]:
    """Messages alternate user/assistant after an optional leading system turn, start with the
    user, end with the assistant, and say something in every turn."""
    body = messages[1:] if messages and messages[0]["role"] == SYSTEM else messages
    if not body:
        raise Malformed("no_turns")
    for position, message in enumerate(body):
        if not message["content"]:
            raise Malformed("empty_turn")
        if message["role"] != (USER if position % 2 == 0 else ASSISTANT):
            raise Malformed("role_order")
    if body[-1]["role"] != ASSISTANT:
        raise Malformed("no_output")
    return messages


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "".join(v.strip() for v in value if isinstance(v, str))
    return value.strip()


def _is_text_record(record: dict) -> bool:
    """A record holding a text (`text` or `content`) and no question, answer or turns: a
    document, unless the text is a whole dialogue written with speakers."""
    if any(key in record for key in ("messages", "conversations", *QUESTION_KEYS, *ANSWER_KEYS)):
        return False
    text = next((record[key] for key in TEXT_KEYS if isinstance(record.get(key), str)), None)
    return text is not None and not SPEAKER.search(text)


def _renamed(record: dict, fields: dict[str, str]) -> dict:
    """The record with the file's own field names replaced by the shape names they stand for."""
    renamed = dict(record)
    for name, own in fields.items():
        if own in record and own != name:
            renamed.pop(own, None)
            renamed[name] = record[own]
    return renamed


def _text_document(record: Any, meta: dict, source: str, category: str, path: Path) -> Imported:
    if isinstance(record, str):
        text, title = record.strip(), None
    else:
        text = next(record[key] for key in TEXT_KEYS if isinstance(record.get(key), str)).strip()
        title = record.get("title") if isinstance(record.get("title"), str) else None
        meta = {**meta, **_extra_fields(record, DOCUMENT_FIELDS)}
    return document(
        text, source, category, title=title, meta={**meta, "kind": "text"},
        reason=None if text else "empty_text", fallback_key=(path.name, str(meta["index"])),
    )


def _origin_id(record: Any, file_name: str, index: int) -> str:
    if isinstance(record, dict):
        own = record.get("id")
        if own is not None and str(own).strip():
            return str(own)
    return f"{file_name}:{index}"


def _extra_fields(record: dict, read: set[str] | frozenset[str] = SHAPE_FIELDS) -> dict:
    """The record's scalar fields that its shape did not read, for meta."""
    return {
        key: value for key, value in record.items()
        if key not in read and isinstance(value, (str, int, float, bool)) and value != ""
    }


def _rejected(reason: str, raw: Any, meta: dict, origin: str, source: str, category: str, path: Path) -> Imported:
    return conversation(
        [], source, category, origin_id=origin, meta={**meta, "raw": raw}, reason=reason,
        fallback_key=(path.name, str(meta["index"])),
    )
