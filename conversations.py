"""Read dialogue files and turn every record into a checked list of chat messages.

    from conversations import read_conversations
    rows = list(read_conversations(["raw.jsonl"]))   # {"source": "raw.jsonl:3", "messages": [...], "error": None}

Accepted record shapes (detected per line unless forced):
    {"messages": [{"role": "system"|"user"|"assistant", "content": ..., "weight": 0|1}, ...]}   OpenAI chat
    {"conversations": [{"from": "human"|"gpt"|"system", "value": ...}, ...]}                    ShareGPT
    {"context": str | [user, assistant, ..., user], "response": str}
    {"prompt": ..., "completion": ...}
    {"instruction": ..., "input": ..., "output": ...}                                            Alpaca
The simple shapes may carry a "system" string; field_map renames other keys onto these (q=prompt
a=completion). A bad record never raises: its row carries the reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}
FORMATS = ("messages", "sharegpt", "context_response", "prompt_completion", "alpaca")


class InvalidRecord(ValueError):
    """A record that cannot become a conversation; the message is the reason shown to the user."""


def read_conversations(paths, input_format: str = "auto", system_prompt: str | None = None,
                       field_map: dict[str, str] | None = None) -> Iterator[dict]:
    """Yield one row per record of every file: source, messages (empty when invalid) and error."""
    for path in paths:
        for line, record in read_records(path):
            try:
                if isinstance(record, InvalidRecord):
                    raise record
                messages, error = to_messages(record, input_format, system_prompt, field_map), None
            except InvalidRecord as invalid:
                messages, error = [], str(invalid)
            yield {"source": f"{path}:{line}", "messages": messages, "error": error}


def read_records(path) -> Iterator[tuple[int, object]]:
    """Yield (line number, parsed JSON or InvalidRecord) for each record of a .jsonl or .json file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".json":
        yield from _json_array_records(path)
        return
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            text = _decode(raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw)
            if isinstance(text, InvalidRecord) or text.strip():
                yield number, text if isinstance(text, InvalidRecord) else _parse_json(text.rstrip("\r\n"))


def _decode(raw: bytes) -> str | InvalidRecord:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return InvalidRecord(f"not valid UTF-8: byte 0x{raw[error.start]:02x} at column {error.start + 1}")


def _parse_json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        return InvalidRecord(f"invalid JSON: {error.msg} (column {error.colno})")


def _json_array_records(path: Path) -> Iterator[tuple[int, object]]:
    """A .json file holds one list of records; each record is reported at the line where it starts."""
    text = _decode(path.read_bytes().removeprefix(b"\xef\xbb\xbf"))
    if isinstance(text, InvalidRecord):
        yield 1, text
        return
    decoder = json.JSONDecoder()
    position = _skip_space(text, 0)
    if not text.startswith("[", position):
        yield _line_of(text, position), InvalidRecord("a .json file must hold a list of records")
        return
    position = _skip_space(text, position + 1)
    while position < len(text) and text[position] != "]":
        try:
            record, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            yield error.lineno, InvalidRecord(f"invalid JSON: {error.msg} (column {error.colno})")
            return
        yield _line_of(text, position), record
        position = _skip_space(text, end)
        if text.startswith(",", position):
            position = _skip_space(text, position + 1)


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _line_of(text: str, position: int) -> int:
    return text.count("\n", 0, position) + 1


def to_messages(record, input_format: str = "auto", system_prompt: str | None = None,
                field_map: dict[str, str] | None = None) -> list[dict]:
    """The record as checked messages {role, content, weight}; raises InvalidRecord with the reason.

    field_map renames a record's own keys first, e.g. {"q": "prompt", "a": "completion"}.
    """
    if not isinstance(record, dict):
        raise InvalidRecord(f"expected a JSON object, got {_type_name(record)}")
    if field_map:
        record = {field_map.get(key, key): value for key, value in record.items()}
    shape = detect_format(record) if input_format == "auto" else input_format
    if shape not in FORMATS:
        raise ValueError(f"input_format must be auto or one of {', '.join(FORMATS)}, got {shape!r}")
    messages = globals()[f"_from_{shape}"](record)
    if system_prompt and messages and messages[0]["role"] != "system":
        messages.insert(0, _message("system", system_prompt))
    _check_order(messages)
    return messages


def detect_format(record: dict) -> str:
    """Which of FORMATS a record is, from its keys."""
    for shape, keys in (("messages", {"messages"}), ("sharegpt", {"conversations"}),
                        ("context_response", {"context", "response"}),
                        ("prompt_completion", {"prompt", "completion"}),
                        ("alpaca", {"instruction", "output"})):
        if keys & record.keys():
            return shape
    raise InvalidRecord(f"unknown record shape with keys {sorted(record)}: expected messages, conversations, "
                        "context+response, prompt+completion or instruction+output")


def _from_messages(record: dict) -> list[dict]:
    return [_message(_field(m, "role", f"message {i + 1}"), _field(m, "content", f"message {i + 1}"),
                     m.get("weight"), f"message {i + 1}")
            for i, m in enumerate(_list_field(record, "messages"))]


def _from_sharegpt(record: dict) -> list[dict]:
    messages = []
    for i, turn in enumerate(_list_field(record, "conversations")):
        where = f"turn {i + 1}"
        speaker = _field(turn, "from", where)
        if speaker not in SHAREGPT_ROLES:
            raise InvalidRecord(f"{where}: unknown speaker {speaker!r} (expected human, gpt or system)")
        messages.append(_message(SHAREGPT_ROLES[speaker], _field(turn, "value", where), turn.get("weight"), where))
    return messages


def _from_context_response(record: dict) -> list[dict]:
    context = record.get("context")
    turns = [context] if not isinstance(context, list) else context
    if not turns:
        raise InvalidRecord("field 'context' is an empty list")
    texts = [_field({"context": t}, "context", f"context turn {i + 1}") for i, t in enumerate(turns)]
    roles = ["user" if i % 2 == 0 else "assistant" for i in range(len(texts))]
    if roles[-1] != "user":
        raise InvalidRecord("field 'context' must end with a user turn (it alternates user, assistant, ..., user)")
    return _with_system(record, [_message(r, t) for r, t in zip(roles, texts)]
                        + [_message("assistant", _field(record, "response"))])


def _from_prompt_completion(record: dict) -> list[dict]:
    if isinstance(record.get("prompt"), list) or isinstance(record.get("completion"), list):
        return _from_messages({"messages": _list_field(record, "prompt") + _list_field(record, "completion")})
    return _with_system(record, [_message("user", _field(record, "prompt")),
                                 _message("assistant", _field(record, "completion"))])


def _from_alpaca(record: dict) -> list[dict]:
    prompt = _field(record, "instruction")
    extra = record.get("input", "")
    if not isinstance(extra, str):
        raise InvalidRecord(f"field 'input' must be a string, got {_type_name(extra)}")
    if extra.strip():
        prompt = f"{prompt}\n\n{extra}"
    return _with_system(record, [_message("user", prompt), _message("assistant", _field(record, "output"))])


def _with_system(record: dict, messages: list[dict]) -> list[dict]:
    if "system" in record:
        messages.insert(0, _message("system", _field(record, "system")))
    return messages


def _message(role: str, content: str, weight=None, where: str = "") -> dict:
    if role not in ("system", "user", "assistant"):
        raise InvalidRecord(f"{where}: unknown role {role!r} (expected system, user or assistant)")
    if weight is None:
        weight = int(role == "assistant")
    elif weight not in (0, 1) or isinstance(weight, float):
        raise InvalidRecord(f"{where}: weight must be 0 or 1, got {weight!r}")
    elif weight == 1 and role != "assistant":
        raise InvalidRecord(f"{where}: weight 1 is only allowed on assistant messages")
    return {"role": role, "content": content, "weight": int(weight)}


def _field(record, key: str, where: str = "") -> str:
    prefix = f"{where}: " if where else ""
    if not isinstance(record, dict):
        raise InvalidRecord(f"{prefix}expected an object, got {_type_name(record)}")
    if key not in record:
        raise InvalidRecord(f"{prefix}missing field '{key}'")
    value = record[key]
    if not isinstance(value, str):
        raise InvalidRecord(f"{prefix}field '{key}' must be a string, got {_type_name(value)}")
    if not value.strip():
        raise InvalidRecord(f"{prefix}field '{key}' is empty")
    return value


def _list_field(record: dict, key: str) -> list:
    value = record.get(key)
    if key not in record:
        raise InvalidRecord(f"missing field '{key}'")
    if not isinstance(value, list) or not value:
        raise InvalidRecord(f"field '{key}' must be a non-empty list, got {_type_name(value)}")
    return value


def _check_order(messages: list[dict]) -> None:
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    for i, message in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            position = i + len(messages) - len(body) + 1
            raise InvalidRecord(f"roles out of order: message {position} is {message['role']!r}, "
                                f"expected {expected!r} (system first, then user and assistant alternating)")
    if not body or body[-1]["role"] != "assistant":
        raise InvalidRecord("no assistant turn at the end: the last message must be the assistant's")


def _type_name(value) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)
