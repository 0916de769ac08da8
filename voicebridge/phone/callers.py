"""What ``/sessions`` and the logs show of a phone caller: ids, and numbers masked."""

from __future__ import annotations

#: Trailing digits of a phone number left visible.
VISIBLE_DIGITS = 4


def mask_number(number: str) -> str:
    """``+14155550123`` -> ``+1******0123``: the country prefix and the last four digits.

    Anything short, or not a number (a SIP or ACS identity), keeps only its last four
    characters.
    """
    number = number.strip()[:64]
    if len(number) <= VISIBLE_DIGITS:
        return "*" * len(number)
    head = 2 if number.startswith("+") else 0
    hidden = len(number) - head - VISIBLE_DIGITS
    return number[:head] + "*" * max(hidden, 0) + number[-VISIBLE_DIGITS:]
