"""Fine-tuning records → Conversations, whatever shape each record has.

A file is a JSON list or JSON lines; the content decides, not the extension (tcm_qr.json is JSON
lines). Each record's shape is recognised on its own, so one file may mix shapes:

    OpenAI     {"messages": [{"role", "content"}, ...]}
    ShareGPT   {"conversations": [{"from": "human"|"gpt"|"system", "value"}, ...]}
    dialogue   {"dialogue" or "text": "医生：...\\n患者：..."}  a whole consultation in one string
    alpaca     {"instruction", "input"?, "output", "history"?: [[user, assistant], ...],
                "system"?}; history turns come before the final instruction/output turn;
                `instruct` stands for `instruction`; list-valued instruction/output are
                paired up turn by turn

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

import json
import re
from pathlib import Path
from typing import Any, Iterator

from .base import Imported, SourceError, conversation, read_source

USER, ASSISTANT, SYSTEM = "user", "assistant", "system"
SHAREGPT_ROLES = {
    "human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT, "chatgpt": ASSISTANT,
    "bot": ASSISTANT, "model": ASSISTANT, "system": SYSTEM,
}
PATIENT_SIDE = ("患者家属", "患者母亲", "患者父亲", "病人家属", "患者", "病人", "家长", "家属", "母亲", "父亲")
DOCTOR_SIDE = ("医生", "大夫", "医师")
# A speaker may carry a qualifier: 患者（家长）：
SPEAKER = re.compile(rf"(?m)^[ \t\u3000]*({'|'.join(PATIENT_SIDE + DOCTOR_SIDE)})(?:[（(][^）)\n]{{1,8}}[）)])?[：:]")
# Fields a shape reads; every other scalar field of a record is kept in meta.
SHAPE_FIELDS = {"messages", "conversations", "dialogue", "text", "instruction", "instruct", "input",
                "output", "history", "system", "id"}
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
    for index, record, raw_error in read_records(path, options):
        base_meta = {"file": path.name, "index": index}
        origin = _origin_id(record, path.name, index)
        if raw_error is not None:
            yield _rejected("malformed:json", raw_error, base_meta, origin, source, category, path)
            continue
        try:
            messages, extra = to_messages(record)
        except Malformed as exc:
            yield _rejected(f"malformed:{exc}", record, base_meta, origin, source, category, path)
            continue
        consumed = extra.pop(CONSUMED, [])
        kept_aside = {k: v for k, v in {**extra, **_extra_fields(record)}.items() if k not in consumed}
        kept_aside.pop("added_turns", None)  # written by the importer, not the record's content
        meta = {**base_meta, **extra, **{k: v for k, v in _extra_fields(record).items() if k not in consumed}}
        imported = conversation(messages, source, category, origin_id=origin, meta=meta)
        imported.untrained = tuple(sorted(kept_aside))
        yield imported


def read_records(path: Path, options: dict | None = None) -> Iterator[tuple[int, Any, str | None]]:
    """(index, record, None) per record, or (index, None, raw line) for a line that is not JSON.

    A file that parses as one JSON value is a list of records, one record, or a wrapping object
    holding one list of records ({"data": [...]}); any other file is read as JSON lines."""
    text = read_source(path, options).text.lstrip("\ufeff \t\r\n")
    try:
        whole = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        if text.startswith("["):
            why = "nested too deeply" if isinstance(exc, RecursionError) else exc
            raise SourceError(f"{path}: not valid JSON ({why})") from None
        for index, line in enumerate(line for line in text.splitlines() if line.strip()):
            try:
                yield index, json.loads(line), None
            except (json.JSONDecodeError, RecursionError):  # a line nested past the parser's depth is not a record either
                yield index, None, line
        return
    records = whole if isinstance(whole, list) else [whole]
    if isinstance(whole, dict) and not _has_shape(whole):
        lists = [v for v in whole.values() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)]
        records = lists[0] if len(lists) == 1 else records
    for index, record in enumerate(records):
        yield index, record, None


def to_messages(record: Any) -> tuple[list[dict], dict]:
    """A record's turns as messages, plus what meta should keep of them; raises Malformed."""
    if not isinstance(record, dict):
        raise Malformed("not_object")
    if "messages" in record:
        return _checked(_openai(record["messages"])), {}
    if "conversations" in record:
        return _checked(_sharegpt(record["conversations"])), {}
    for field in ("dialogue", "text"):
        if isinstance(record.get(field), str) and SPEAKER.search(record[field]):
            key = next((key for key in CONCLUSION_FIELDS
                        if isinstance(record.get(key), str) and record[key].strip()), None)
            messages, extra = dialogue_messages(record[field], record[key] if key else None)
            return messages, {**extra, CONSUMED: [key]} if key else extra
    instruction = record.get("instruction", record.get("instruct"))
    if instruction is None and "output" not in record:
        raise Malformed("no_shape")
    output = record.get("output")
    if output is None or (isinstance(output, (str, list)) and not _text(output)):
        raise Malformed("no_output")
    if instruction is None or (isinstance(instruction, (str, list)) and not _text(instruction)):
        raise Malformed("no_instruction")
    messages = _system(record.get("system"))
    messages += _history(record.get("history"))
    if isinstance(instruction, list) or isinstance(output, list):
        messages += _paired(instruction, output)
    else:
        messages += [_message(USER, _with_input(instruction, record.get("input"))), _message(ASSISTANT, output)]
    return _checked(messages), {}


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
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n" + content
        else:
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
    return _checked(turns), extra


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
        if turn["role"] not in (USER, ASSISTANT, SYSTEM):
            raise Malformed("unknown_role")
        result.append(_message(turn["role"], turn["content"]))
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


def _has_shape(record: dict) -> bool:
    return bool(SHAPE_FIELDS.intersection(record))


def _origin_id(record: Any, file_name: str, index: int) -> str:
    if isinstance(record, dict):
        own = record.get("id")
        if own is not None and str(own).strip():
            return str(own)
    return f"{file_name}:{index}"


def _extra_fields(record: dict) -> dict:
    return {
        key: value for key, value in record.items()
        if key not in SHAPE_FIELDS and isinstance(value, (str, int, float, bool)) and value != ""
    }


def _rejected(reason: str, raw: Any, meta: dict, origin: str, source: str, category: str, path: Path) -> Imported:
    return conversation(
        [], source, category, origin_id=origin, meta={**meta, "raw": raw}, reason=reason,
        fallback_key=(path.name, str(meta["index"])),
    )
