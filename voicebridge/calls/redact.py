"""Masking personal data in what a call record stores: phone-like and card-like numbers,
and (``CALL_REDACT=true``) email addresses. Pure functions.

A number is a run of at least 7 digits, optionally split by single spaces, hyphens or
parentheses and led by ``+``: phone numbers in any common notation, card numbers,
account numbers, and digits a transcriber wrote one by one. All but its last 2 digits
(last 4 from 13 digits on, as on a card receipt) become ``*``; the separators stay, so a
reader still sees the shape. IP addresses and decimals are left alone (a dot or a comma
next to the digits ends a candidate). It errs on the side of masking: a date written
``2024-01-15`` is masked too. Numbers spoken as words ("five five five...") are not
recognised.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from voicebridge.calls.settings import Redaction

MIN_DIGITS: Final = 7
CARD_DIGITS: Final = 13
MASK: Final = "*"
EMAIL_MASK: Final = "[email]"

_NUMBER = re.compile(
    r"(?<![\w.,+])"  # not inside a word, a decimal or an IP address
    r"\+?(?:\(\d+\)|\d)"
    r"(?:[ \-\u00a0]?(?:\(\d+\)|\d))*"
    r"(?!\w|[.,]\d)"
)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


def _mask_number(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = sum(c.isdigit() for c in text)
    if digits < MIN_DIGITS:
        return text
    keep = 4 if digits >= CARD_DIGITS else 2
    to_mask = digits - keep
    out = []
    for char in text:
        if char.isdigit() and to_mask > 0:
            out.append(MASK)
            to_mask -= 1
        else:
            out.append(char)
    return "".join(out)


def redact(text: str, mode: Redaction) -> str:
    """``text`` with numbers (``numbers``), and emails too (``all``), masked."""
    if mode == "off" or not text:
        return text
    if mode == "all" and "@" in text:
        text = _EMAIL.sub(EMAIL_MASK, text)
    if any(c.isdigit() for c in text):
        text = _NUMBER.sub(_mask_number, text)
    return text


def redact_mapping(values: Mapping[str, str], mode: Redaction) -> dict[str, str]:
    """Every value of ``values`` redacted (the keys are the relay's own names)."""
    return {key: redact(value, mode) for key, value in values.items()}
