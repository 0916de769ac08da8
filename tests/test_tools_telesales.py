"""The telesales example (examples/telesales/): its file loads, its SQLite store answers,
and a callback booked through the emulator and the real SDK writes a row."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from azure.ai.voicelive.aio import connect
from azure.ai.voicelive.models import (
    FunctionCallOutputItem,
    InputTextContentPart,
    ServerEventResponseAudioTranscriptDone,
    ServerEventResponseFunctionCallArgumentsDone,
    UserMessageItem,
)
from azure.core.credentials import AzureKeyCredential

from tests.conftest import ROOT, make_settings
from voicebridge.emulator import EmulatorOptions, start_emulator
from voicebridge.tools import Toolbox, ToolCall, load_toolbox

EXAMPLE = ROOT / "examples" / "telesales"
KEY = "telesales-test-key"


@pytest.fixture
def example(tmp_path: Path) -> Iterator[Path]:
    """A copy of the example, so its store is made afresh in the test's directory."""
    copy = tmp_path / "telesales"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns("*.sqlite3", "__pycache__"))
    yield copy


def load(folder: Path) -> Toolbox:
    settings = make_settings(
        TOOLS_FILE=str(folder / "tools.toml"),
        AGENT_INSTRUCTIONS_FILE=str(folder / "instructions.md"),
    )
    box = load_toolbox(settings, environ={})
    assert box is not None
    return box


def callbacks(folder: Path) -> list[dict[str, Any]]:
    """The callbacks table's rows (none when the store was never made)."""
    path = folder / "telesales.sqlite3"
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute("SELECT * FROM callbacks ORDER BY id")]


async def call(box: Toolbox, name: str, arguments: dict[str, Any]) -> Any:
    outcome = await box.run(
        ToolCall("call_1", name, orjson.dumps(arguments).decode()), session_id="s"
    )
    assert outcome.ok, outcome.error
    return orjson.loads(outcome.output)


def test_the_shipped_example_loads_as_documented() -> None:
    """The README's TOOLS_FILE / AGENT_INSTRUCTIONS_FILE pair is valid as shipped."""
    box = load(EXAMPLE)
    assert list(box.tools) == [
        "find_product",
        "order_history",
        "schedule_callback",
        "end_call",
        "current_time",
    ]
    assert box.tools["schedule_callback"].timeout_s == 6
    assert box.tools["find_product"].timeout_s == 4
    instructions = (EXAMPLE / "instructions.md").read_text()
    for name in box.tools:
        assert name in instructions, name


async def test_find_product_and_order_history_read_the_store(example: Path) -> None:
    """Products are found by words, in stock first; orders by any way of writing the phone."""
    box = load(example)
    found = await call(box, "find_product", {"name": "headset"})
    names = [p["name"] for p in found["products"]]
    assert names[-1] == "Contoso Office Headset Duo"  # the one out of stock comes last
    assert {p["sku"] for p in found["products"]} == {"HS-100", "HS-200", "HS-300"}
    wireless = await call(box, "find_product", {"name": "Wireless headset"})
    assert wireless["products"] == [
        {
            "sku": "HS-200",
            "name": "Contoso Wireless Headset",
            "description": "Bluetooth headset, 30 hours of battery, noise cancelling",
            "price": "£89.00",
            "in_stock": 7,
        }
    ]
    assert (await call(box, "find_product", {"name": "toaster"})) == {"products": []}
    for phone in ("07700 900123", "+44 7700 900123", "0044 7700 900123"):
        history = await call(box, "order_history", {"phone": phone})
        assert history["customer"] == "Alex Morgan"
        assert [o["order"] for o in history["orders"]] == [1002, 1001]
    assert history["orders"][1]["total"] == "£67.00"
    assert await call(box, "order_history", {"phone": "07700 900999"}) == {"found": False}


async def test_schedule_callback_writes_a_row(example: Path) -> None:
    """A booked callback is a row with the number, time, topic and session."""
    box = load(example)
    booked = await call(
        box,
        "schedule_callback",
        {
            "phone": "07700 900456",
            "name": "Sam",
            "call_at": "2026-07-14T15:00+01:00",
            "topic": "conference speaker",
        },
    )
    assert booked == {"scheduled": True, "callback": 1, "call_at": "2026-07-14T15:00+01:00"}
    (row,) = callbacks(example)
    assert (row["phone"], row["name"], row["call_at"], row["topic"], row["session_id"]) == (
        "447700900456",
        "Sam",
        "2026-07-14T15:00+01:00",
        "conference speaker",
        "s",
    )


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"phone": "07700 900456", "call_at": "tomorrow at 3"},
         "call_at must be a date and time such as 2026-07-14T15:00"),
        ({"phone": "07700 900456", "call_at": "2026-07-14T15:00"},
         "call_at needs its time zone offset, such as 2026-07-14T15:00+01:00"),
        ({"phone": "12-34-56", "call_at": "2026-07-14T15:00+01:00"},
         "that phone number is too short; ask for the full number"),
        ({"phone": "call me", "call_at": "2026-07-14T15:00+01:00"},
         "bad arguments: $.phone: pattern"),
    ],
)  # fmt: skip
async def test_schedule_callback_refuses_what_it_cannot_book(
    example: Path, arguments: dict[str, Any], error: str
) -> None:
    """A time without a zone or a short number is an error the agent can ask about."""
    box = load(example)
    outcome = await box.run(
        ToolCall("call_1", "schedule_callback", orjson.dumps(arguments).decode()), session_id="s"
    )
    assert (outcome.ok, outcome.error) == (False, error)
    assert callbacks(example) == []


async def test_callback_booked_through_the_emulator_and_the_sdk(example: Path) -> None:
    """The model's function call, run by the toolbox, books the row; its output is spoken."""
    box = load(example)
    arguments = '{"phone": "07700 900123", "call_at": "2026-07-15T10:30+01:00"}'
    options = EmulatorOptions(api_key=KEY, realtime=False)
    async with (
        await start_emulator(options) as emulator,
        connect(
            endpoint=emulator.url, credential=AzureKeyCredential(KEY), model="gpt-realtime"
        ) as conn,
    ):
        await conn.session.update(session={"tools": box.session_tools()})
        await conn.conversation.item.create(
            item=UserMessageItem(
                content=[InputTextContentPart(text=f"schedule_callback {arguments}")]
            )
        )
        await conn.response.create()
        async with asyncio.timeout(10):
            async for event in conn:
                if isinstance(event, ServerEventResponseFunctionCallArgumentsDone):
                    request = ToolCall(event.call_id, event.name, event.arguments)
                if event.type == "response.done":
                    break
            outcome = await box.run(request, session_id="sess_42")
            assert outcome.ok
            await conn.conversation.item.create(
                item=FunctionCallOutputItem(call_id=outcome.call_id, output=outcome.output)
            )
            await conn.response.create()
            async for event in conn:
                if isinstance(event, ServerEventResponseAudioTranscriptDone):
                    spoken = event.transcript
                if event.type == "response.done":
                    break
    await box.aclose()
    assert spoken == f"The tool said: {outcome.output}"
    assert '"scheduled":true' in outcome.output
    (row,) = callbacks(example)
    assert (row["phone"], row["call_at"], row["session_id"]) == (
        "447700900123",
        "2026-07-15T10:30+01:00",
        "sess_42",
    )
