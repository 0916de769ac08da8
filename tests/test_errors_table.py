"""The error-code table: voicebridge.errors.CODES and its browser copy static/js/errors.js."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from voicebridge import errors

ERRORS_JS = Path(__file__).resolve().parent.parent / "static" / "js" / "errors.js"
TABLE = re.compile(r"^// BEGIN CODES\nconst TABLE = (\{.*?\});\n// END CODES$", re.M | re.S)


def _browser_table() -> dict[str, Any]:
    match = TABLE.search(ERRORS_JS.read_text(encoding="utf-8"))
    assert match, f"no JSON table between the BEGIN/END CODES markers in {ERRORS_JS}"
    table: dict[str, Any] = json.loads(match.group(1))
    return table


def _python_table() -> dict[str, Any]:
    return {code: {"close": i.close, "retry": i.retry} for code, i in errors.CODES.items()}


def _as_js(table: dict[str, Any]) -> str:
    """The table as errors.js writes it, one code a line."""
    rows = [
        f'  "{code}": {{ "close": {json.dumps(i["close"])}, "retry": {json.dumps(i["retry"])} }}'
        for code, i in table.items()
    ]
    return "const TABLE = {\n" + ",\n".join(rows) + "\n};"


def test_browser_table_equals_codes() -> None:
    """static/js/errors.js has exactly the codes of CODES, with the same close and retry."""
    browser, python = _browser_table(), _python_table()
    differ = sorted(
        code for code in set(browser) | set(python) if browser.get(code) != python.get(code)
    )
    assert not differ, (
        f"static/js/errors.js differs from CODES for {differ}; "
        f"between its markers it should read:\n{_as_js(python)}"
    )
    assert browser == python


def test_every_error_constant_is_in_codes() -> None:
    """Every ERR_* constant in voicebridge/errors.py has an entry in CODES."""
    constants = {
        name: value
        for name, value in vars(errors).items()
        if name.startswith("ERR_") and isinstance(value, str)
    }
    assert constants, "voicebridge.errors defines no ERR_* constants"
    missing = {name: value for name, value in constants.items() if value not in errors.CODES}
    assert not missing, missing
    assert set(errors.CODES) == set(constants.values()), "CODES has codes with no constant"


def test_codes_that_end_a_session_use_known_close_codes() -> None:
    """Every close code in CODES is one of the named CLOSE_* constants."""
    named = {v for k, v in vars(errors).items() if k.startswith("CLOSE_")}
    used = {info.close for info in errors.CODES.values() if info.close is not None}
    assert used <= named, used - named
