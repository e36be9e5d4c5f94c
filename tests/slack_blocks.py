"""A validator for the subset of Slack's Block Kit that notifications use.

The limits are Slack's (https://api.slack.com/reference/block-kit/blocks): at most 50
blocks in a message; a ``header``'s text is ``plain_text`` of at most 150 characters; a
``section`` has ``text`` (at most 3,000 characters) and/or ``fields`` (at most 10, each at
most 2,000 characters); a ``context`` holds at most 10 text or image elements; a
``block_id`` is at most 255 characters; text objects are ``plain_text`` (optional
``emoji``) or ``mrkdwn`` (optional ``verbatim``) with non-empty ``text``.
"""

from __future__ import annotations

from typing import Any

MAX_BLOCKS = 50
HEADER_CHARS = 150
SECTION_TEXT_CHARS = 3000
MAX_FIELDS = 10
FIELD_CHARS = 2000
MAX_CONTEXT_ELEMENTS = 10
BLOCK_ID_CHARS = 255


def problems(message: dict[str, Any]) -> list[str]:
    """Everything wrong with ``message`` as a Block Kit message; [] when it is valid."""
    found: list[str] = []
    if set(message) - {"text", "blocks"}:
        found.append(f"unexpected message keys {sorted(set(message) - {'text', 'blocks'})}")
    if not isinstance(message.get("text"), str) or not message["text"]:
        found.append("the message needs a non-empty fallback `text`")
    blocks = message.get("blocks")
    if not isinstance(blocks, list) or not blocks:
        return [*found, "`blocks` must be a non-empty list"]
    if len(blocks) > MAX_BLOCKS:
        found.append(f"{len(blocks)} blocks; a message holds at most {MAX_BLOCKS}")
    for index, block in enumerate(blocks):
        where = f"blocks[{index}]"
        if not isinstance(block, dict):
            found.append(f"{where} is not an object")
            continue
        if len(str(block.get("block_id", ""))) > BLOCK_ID_CHARS:
            found.append(f"{where}.block_id is over {BLOCK_ID_CHARS} characters")
        checker = _BLOCKS.get(block.get("type"))  # type: ignore[arg-type]
        if checker is None:
            found.append(f"{where}: unknown block type {block.get('type')!r}")
        else:
            found += checker(block, where)
    return found


def _text(obj: Any, where: str, *, limit: int, plain_only: bool = False) -> list[str]:
    if not isinstance(obj, dict):
        return [f"{where} is not a text object"]
    kind = obj.get("type")
    allowed = {"plain_text": {"type", "text", "emoji"}, "mrkdwn": {"type", "text", "verbatim"}}
    if kind not in allowed or (plain_only and kind != "plain_text"):
        return [f"{where}.type is {kind!r}; use " + ("plain_text" if plain_only else "plain_text or mrkdwn")]
    found = []
    if set(obj) - allowed[kind]:
        found.append(f"{where} has unexpected keys {sorted(set(obj) - allowed[kind])}")
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        found.append(f"{where}.text must be a non-empty string")
    elif len(text) > limit:
        found.append(f"{where}.text has {len(text)} characters; at most {limit}")
    return found


def _header(block: dict[str, Any], where: str) -> list[str]:
    extra = set(block) - {"type", "text", "block_id"}
    found = [f"{where} has unexpected keys {sorted(extra)}"] if extra else []
    return found + _text(block.get("text"), f"{where}.text", limit=HEADER_CHARS, plain_only=True)


def _section(block: dict[str, Any], where: str) -> list[str]:
    extra = set(block) - {"type", "text", "fields", "block_id"}
    found = [f"{where} has unexpected keys {sorted(extra)}"] if extra else []
    if "text" not in block and "fields" not in block:
        found.append(f"{where} needs text or fields")
    if "text" in block:
        found += _text(block["text"], f"{where}.text", limit=SECTION_TEXT_CHARS)
    if "fields" in block:
        fields = block["fields"]
        if not isinstance(fields, list) or not fields:
            return [*found, f"{where}.fields must be a non-empty list"]
        if len(fields) > MAX_FIELDS:
            found.append(f"{where} has {len(fields)} fields; at most {MAX_FIELDS}")
        for index, field in enumerate(fields):
            found += _text(field, f"{where}.fields[{index}]", limit=FIELD_CHARS)
    return found


def _context(block: dict[str, Any], where: str) -> list[str]:
    extra = set(block) - {"type", "elements", "block_id"}
    found = [f"{where} has unexpected keys {sorted(extra)}"] if extra else []
    elements = block.get("elements")
    if not isinstance(elements, list) or not elements:
        return [*found, f"{where}.elements must be a non-empty list"]
    if len(elements) > MAX_CONTEXT_ELEMENTS:
        found.append(f"{where} has {len(elements)} elements; at most {MAX_CONTEXT_ELEMENTS}")
    for index, element in enumerate(elements):
        found += _text(element, f"{where}.elements[{index}]", limit=SECTION_TEXT_CHARS)
    return found


def _divider(block: dict[str, Any], where: str) -> list[str]:
    extra = set(block) - {"type", "block_id"}
    return [f"{where} has unexpected keys {sorted(extra)}"] if extra else []


_BLOCKS = {"header": _header, "section": _section, "context": _context, "divider": _divider}
