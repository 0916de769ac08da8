"""The emulator's tool calling (function calls and MCP), driven by the real SDK.

Every frame the emulator sends in these tests is deserialized with the SDK's own models
(``ServerEvent._deserialize``), and the items inside it checked field by field against the
SDK's item models, so the relay's parser can rely on the shapes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import orjson
import pytest
from azure.ai.voicelive.aio import VoiceLiveConnection, connect
from azure.ai.voicelive.models import (
    FunctionCallOutputItem,
    InputTextContentPart,
    MCPApprovalResponseRequestItem,
    ResponseFunctionCallItem,
    ResponseItem,
    ResponseMCPApprovalRequestItem,
    ResponseMCPCallItem,
    ServerEvent,
    ServerEventError,
    ServerEventResponseDone,
    ServerEventResponseFunctionCallArgumentsDone,
    UserMessageItem,
)
from azure.core.credentials import AzureKeyCredential

from voicebridge.emulator import (
    EmulatorOptions,
    RunningEmulator,
    add_emulator_arguments,
    options_from_args,
    start_emulator,
)
from voicebridge.emulator.audio import ms_to_bytes, speech_like_audio
from voicebridge.emulator.session import parse_tool_request

KEY = "tools-test-key"
MODEL = "gpt-realtime"

FIND_PRODUCT: dict[str, Any] = {
    "type": "function",
    "name": "find_product",
    "description": "Look up a product by name.",
    "parameters": {
        "type": "object",
        "properties": {"name": {"type": "string"}},
        "required": ["name"],
    },
}
ORDER_HISTORY: dict[str, Any] = {
    "type": "function",
    "name": "order_history",
    "description": "The caller's past orders.",
    "parameters": {"type": "object", "properties": {"phone": {"type": "string"}}},
}
DOCS_MCP: dict[str, Any] = {
    "type": "mcp",
    "server_label": "docs",
    "server_url": "https://mcp.example.com/mcp",
    "allowed_tools": ["search_docs", "read_page"],
    "require_approval": {"never": ["read_page"]},
    "headers": {"X-Api-Key": "mcp-header-secret"},
}


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    """A fast emulator (no real-time pacing) on a free port."""
    async with await start_emulator(EmulatorOptions(api_key=KEY, realtime=False)) as running:
        yield running


@pytest.fixture
async def paced() -> AsyncIterator[RunningEmulator]:
    """An emulator pacing its output in real time: a tool response stays active a while."""
    async with await start_emulator(EmulatorOptions(api_key=KEY, realtime=True)) as running:
        yield running


def sdk_connect(
    emulator: RunningEmulator, api_version: str = "2026-07-15"
) -> AbstractAsyncContextManager[VoiceLiveConnection]:
    return connect(
        endpoint=emulator.url,
        credential=AzureKeyCredential(KEY),
        model=MODEL,
        api_version=api_version,
    )


def _rest_fields(model: Any) -> set[str]:
    return {f._rest_name for f in model._attr_to_rest_field.values()}


def check_item(item: dict[str, Any]) -> None:
    """An item has exactly the fields of its SDK model (ResponseItem sub-class)."""
    cls = ResponseItem.__mapping__[item["type"]]
    assert set(item) <= _rest_fields(cls), (item["type"], set(item) - _rest_fields(cls))
    typed = ResponseItem._deserialize(item, [])
    assert type(typed) is cls
    for attr in type(typed)._attr_to_rest_field:
        getattr(typed, attr)


def check_event(payload: dict[str, Any]) -> ServerEvent:
    """A raw frame deserializes into its own SDK event model, every field known."""
    event = ServerEvent._deserialize(payload, [])
    expected = ServerEvent.__mapping__[payload["type"]]
    assert type(event) is expected, payload["type"]
    fields = _rest_fields(type(event))
    assert set(payload) <= fields, (payload["type"], set(payload) - fields)
    for attr in type(event)._attr_to_rest_field:
        getattr(event, attr)
    if isinstance(payload.get("item"), dict):
        check_item(payload["item"])
    for item in (payload.get("response") or {}).get("output") or []:
        check_item(item)
    return event


class Wire:
    """One SDK connection whose every received frame is checked and kept."""

    def __init__(self, conn: VoiceLiveConnection) -> None:
        self.conn = conn
        self.frames: list[dict[str, Any]] = []

    async def until(self, *types: str, within_s: float = 10.0) -> list[dict[str, Any]]:
        """Frames up to and including the first whose type is in ``types``."""
        got: list[dict[str, Any]] = []
        async with asyncio.timeout(within_s):
            while True:
                payload = orjson.loads(await self.conn.recv_bytes())
                check_event(payload)
                self.frames.append(payload)
                got.append(payload)
                if payload["type"] in types:
                    return got

    async def open(self, **session: Any) -> list[dict[str, Any]]:
        await self.until("session.created")
        await self.conn.session.update(session=session)
        return await self.until("session.updated")

    async def say(self, text: str) -> None:
        """A typed user message, then response.create (what the relay does)."""
        await self.conn.conversation.item.create(
            item=UserMessageItem(content=[InputTextContentPart(text=text)])
        )
        await self.until("conversation.item.created")
        await self.conn.response.create()

    async def answer(self, call_id: str, output: str) -> None:
        await self.conn.conversation.item.create(
            item=FunctionCallOutputItem(call_id=call_id, output=output)
        )
        await self.until("conversation.item.created")


def spoken_turn(words: str) -> bytes:
    """A turn the energy VAD hears: silence, tone bursts in the rhythm of words, silence."""
    return bytes(ms_to_bytes(300)) + speech_like_audio(words) + bytes(ms_to_bytes(1000))


async def send_audio(conn: VoiceLiveConnection, pcm: bytes) -> None:
    for offset in range(0, len(pcm), 4800):  # 100 ms appends
        await conn.input_audio_buffer.append(
            audio=base64.b64encode(pcm[offset : offset + 4800]).decode()
        )


def types_of(frames: list[dict[str, Any]]) -> list[str]:
    return [f["type"] for f in frames]


def transcript(frames: list[dict[str, Any]]) -> str:
    done = [f for f in frames if f["type"] == "response.audio_transcript.done"]
    return done[-1]["transcript"]


# --- function calls ---------------------------------------------------------------------------


async def test_typed_tool_name_makes_a_function_call_then_speech_about_its_output(
    emulator: RunningEmulator,
) -> None:
    """`find_product {...}` is answered by a streamed function call; its output is spoken."""
    args = '{"name": "wireless headset with a long name"}'
    async with sdk_connect(emulator) as conn:
        wire = Wire(conn)
        await wire.open(tools=[FIND_PRODUCT, ORDER_HISTORY], tool_choice="auto")
        await wire.say(f"find_product {args}")
        frames = await wire.until("response.done")
        kinds = types_of(frames)
        assert kinds[0] == "response.created"
        assert kinds[1:3] == ["response.output_item.added", "conversation.item.created"]
        deltas = [f for f in frames if f["type"] == "response.function_call_arguments.delta"]
        assert len(deltas) > 1 and "".join(d["delta"] for d in deltas) == args
        assert kinds[-3:] == [
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.done",
        ]
        assert not any(k.startswith("response.audio") for k in kinds)

        added = frames[1]["item"]
        assert (added["type"], added["status"], added["arguments"]) == (
            "function_call",
            "in_progress",
            "",
        )
        done = check_event(frames[-3])
        assert isinstance(done, ServerEventResponseFunctionCallArgumentsDone)
        assert (done.name, done.arguments, done.output_index) == ("find_product", args, 0)
        assert done.call_id == added["call_id"] and done.item_id == added["id"]
        assert done.response_id == frames[0]["response"]["id"]
        assert all(d["call_id"] == done.call_id for d in deltas)
        response = check_event(frames[-1])
        assert isinstance(response, ServerEventResponseDone)
        assert response.response.status == "completed"
        (item,) = response.response.output
        assert isinstance(item, ResponseFunctionCallItem)
        assert (item.status, item.arguments, item.call_id) == ("completed", args, done.call_id)

        await wire.answer(done.call_id, '{"price": 42, "in_stock": true}')
        await conn.response.create()
        spoken = await wire.until("response.done")
        assert "response.audio.delta" in types_of(spoken)
        assert transcript(spoken) == 'The tool said: {"price": 42, "in_stock": true}'


async def test_two_tools_in_one_message_are_called_in_one_response(
    emulator: RunningEmulator,
) -> None:
    """`a {...} ; b {...}` makes one response with two calls; both outputs are spoken."""
    async with sdk_connect(emulator) as conn:
        wire = Wire(conn)
        await wire.open(tools=[FIND_PRODUCT, ORDER_HISTORY])
        await wire.say('find_product {"name": "a; b"} ; order_history {"phone": "555"}')
        frames = await wire.until("response.done")
        done = [f for f in frames if f["type"] == "response.function_call_arguments.done"]
        assert [(d["name"], d["arguments"], d["output_index"]) for d in done] == [
            ("find_product", '{"name": "a; b"}', 0),
            ("order_history", '{"phone": "555"}', 1),
        ]
        assert len({d["call_id"] for d in done}) == 2
        output = frames[-1]["response"]["output"]
        assert [i["name"] for i in output] == ["find_product", "order_history"]
        assert types_of(frames).count("response.created") == 1
        for d, result in zip(done, ('"one"', '"two"'), strict=True):
            await wire.answer(d["call_id"], result)
        await conn.response.create()
        spoken = await wire.until("response.done")
        assert transcript(spoken) == 'The tool said: "one" The tool said: "two"'


async def test_arguments_are_passed_as_written_even_when_not_json(
    emulator: RunningEmulator,
) -> None:
    """Arguments that are not JSON reach the client verbatim, so bad calls can be tested."""
    async with sdk_connect(emulator) as conn:
        wire = Wire(conn)
        await wire.open(tools=[FIND_PRODUCT])
        await wire.say("find_product please, the blue one")
        frames = await wire.until("response.done")
        (done,) = [f for f in frames if f["type"] == "response.function_call_arguments.done"]
        assert done["arguments"] == "please, the blue one"


async def test_output_for_an_unknown_call_id_is_refused(emulator: RunningEmulator) -> None:
    """A function_call_output naming no function_call gets the service's error."""
    async with sdk_connect(emulator) as conn:
        wire = Wire(conn)
        await wire.open(tools=[FIND_PRODUCT])
        await conn.conversation.item.create(
            item=FunctionCallOutputItem(call_id="call_nope", output="{}")
        )
        (error,) = [f for f in await wire.until("error") if f["type"] == "error"]
        typed = check_event(error)
        assert isinstance(typed, ServerEventError)
        assert typed.error.code == "invalid_tool_call_id"
        assert typed.error.message == "Tool call ID 'call_nope' not found in conversation."


async def test_response_create_while_a_call_streams_is_refused(paced: RunningEmulator) -> None:
    """The relay must wait for response.done: a create during a tool response is refused."""
    async with sdk_connect(paced) as conn:
        wire = Wire(conn)
        await wire.open(tools=[FIND_PRODUCT])
        await wire.say('find_product {"name": "' + "x" * 200 + '"}')
        await wire.until("response.function_call_arguments.delta")
        await conn.response.create()
        frames = await wire.until("error")
        assert frames[-1]["error"]["code"] == "conversation_already_has_active_response"
        frames = await wire.until("response.done")
        assert frames[-1]["response"]["status"] == "completed"


async def test_cancelled_tool_response_closes_its_call_incomplete(paced: RunningEmulator) -> None:
    """Cancelling mid-call still sends .done (partial arguments) and an incomplete item."""
    args = '{"name": "' + "y" * 200 + '"}'
    async with sdk_connect(paced) as conn:
        wire = Wire(conn)
        await wire.open(tools=[FIND_PRODUCT])
        await wire.say(f"find_product {args}")
        await wire.until("response.function_call_arguments.delta")
        await conn.response.cancel()
        frames = await wire.until("response.done")
        (done,) = [f for f in frames if f["type"] == "response.function_call_arguments.done"]
        assert args.startswith(done["arguments"]) and done["arguments"] != args
        assert frames[-2]["item"]["status"] == "incomplete"
        assert frames[-1]["response"]["status"] == "cancelled"


async def test_tool_choice_none_answers_in_words(emulator: RunningEmulator) -> None:
    """With tool_choice none the model calls nothing: the message is echoed as usual."""
    async with sdk_connect(emulator) as conn:
        wire = Wire(conn)
        await wire.open(tools=[FIND_PRODUCT], tool_choice="none")
        await wire.say('find_product {"name": "x"}')
        frames = await wire.until("response.done")
        assert transcript(frames) == 'You said: find_product {"name": "x"}'


async def test_call_tool_after_speech_calls_the_tool_after_each_spoken_turn() -> None:
    """With call_tool_after_speech each spoken turn is answered by that tool call."""
    options = EmulatorOptions(
        api_key=KEY, realtime=False, call_tool_after_speech='find_product {"name": "mic"}'
    )
    speech = spoken_turn("one two three four")
    async with await start_emulator(options) as running, sdk_connect(running) as conn:
        wire = Wire(conn)
        await wire.open(tools=[FIND_PRODUCT])
        for turn in range(2):
            await send_audio(conn, speech)
            frames = await wire.until("response.done")
            assert "input_audio_buffer.speech_stopped" in types_of(frames)
            (done,) = [f for f in frames if f["type"] == "response.function_call_arguments.done"]
            assert (done["name"], done["arguments"]) == ("find_product", '{"name": "mic"}')
            await wire.answer(done["call_id"], f'"turn {turn}"')
            await conn.response.create()
            assert transcript(await wire.until("response.done")) == f'The tool said: "turn {turn}"'


async def test_call_tool_after_speech_needs_the_tool_in_the_session() -> None:
    """A named tool the session does not offer is not called: the turn is echoed."""
    options = EmulatorOptions(api_key=KEY, realtime=False, call_tool_after_speech="find_product")
    speech = spoken_turn("one two three")
    async with await start_emulator(options) as running, sdk_connect(running) as conn:
        wire = Wire(conn)
        await wire.open(tools=[ORDER_HISTORY])
        await send_audio(conn, speech)
        frames = await wire.until("response.done")
        assert "response.function_call_arguments.done" not in types_of(frames)
        assert "echoing" in transcript(frames)


# --- session.update validation -----------------------------------------------------------


@pytest.mark.parametrize(
    ("tools", "code", "param"),
    [
        ([{**FIND_PRODUCT, "name": "find product"}], "invalid_value", "session.tools[0].name"),
        ([{k: v for k, v in FIND_PRODUCT.items() if k != "description"}],
         "missing_required_parameter", "session.tools[0]"),
        ([{k: v for k, v in FIND_PRODUCT.items() if k != "parameters"}],
         "missing_required_parameter", "session.tools[0]"),
        ([{**FIND_PRODUCT, "parameters": {"type": "string"}}],
         "invalid_value", "session.tools[0].parameters"),
        ([{**FIND_PRODUCT, "strict": True}], "unknown_parameter", "session.tools[0].strict"),
        ([FIND_PRODUCT, FIND_PRODUCT], "invalid_value", "session.tools[1].name"),
        ([{"type": "code_interpreter"}], "invalid_value", "session.tools[0].type"),
        ([{k: v for k, v in DOCS_MCP.items() if k != "server_url"}],
         "missing_required_parameter", "session.tools[0]"),
        ([{**DOCS_MCP, "require_approval": "sometimes"}],
         "invalid_value", "session.tools[0].require_approval"),
        ([{**DOCS_MCP, "allowed_tools": "search_docs"}],
         "invalid_value", "session.tools[0].allowed_tools"),
        ({"type": "function"}, "invalid_value", "session.tools"),
    ],
)  # fmt: skip
async def test_invalid_tools_are_refused(
    emulator: RunningEmulator, tools: Any, code: str, param: str
) -> None:
    """Each malformed tools entry gets the service's error naming the field."""
    async with sdk_connect(emulator) as conn:
        wire = Wire(conn)
        await wire.until("session.created")
        await conn.session.update(session={"tools": tools})
        error = (await wire.until("error"))[-1]["error"]
        assert (error["code"], error["param"]) == (code, param)
        await conn.session.update(session={"tools": [FIND_PRODUCT]})
        assert (await wire.until("session.updated"))[-1]["session"]["tools"] == [FIND_PRODUCT]


async def test_tool_choice_must_name_an_offered_function(emulator: RunningEmulator) -> None:
    """tool_choice is auto, none, required, or a function among the tools."""
    async with sdk_connect(emulator) as conn:
        wire = Wire(conn)
        await wire.until("session.created")
        await conn.session.update(
            session={"tools": [FIND_PRODUCT], "tool_choice": {"type": "function", "name": "x"}}
        )
        assert (await wire.until("error"))[-1]["error"]["param"] == "session.tool_choice.name"
        await conn.session.update(session={"tool_choice": "sometimes"})
        assert (await wire.until("error"))[-1]["error"]["param"] == "session.tool_choice"
        choice = {"type": "function", "name": "find_product"}
        await conn.session.update(session={"tools": [FIND_PRODUCT], "tool_choice": choice})
        assert (await wire.until("session.updated"))[-1]["session"]["tool_choice"] == choice


async def test_mcp_servers_need_api_version_2026_04_10(emulator: RunningEmulator) -> None:
    """An MCP server on an older api-version is refused; function tools are not."""
    async with sdk_connect(emulator, api_version="2025-10-01") as conn:
        wire = Wire(conn)
        await wire.until("session.created")
        await conn.session.update(session={"tools": [DOCS_MCP]})
        error = (await wire.until("error"))[-1]["error"]
        assert (error["code"], error["param"]) == ("invalid_value", "session.tools[0].type")
        await conn.session.update(session={"tools": [FIND_PRODUCT]})
        await wire.until("session.updated")


# --- MCP -----------------------------------------------------------------------------------


async def mcp_session(wire: Wire, server: dict[str, Any] = DOCS_MCP) -> str:
    """Open a session with an MCP server; the id of its mcp_list_tools item."""
    await wire.open(tools=[FIND_PRODUCT, server])
    frames = await wire.until("mcp_list_tools.completed", "mcp_list_tools.failed")
    assert types_of(frames) == [
        "conversation.item.created",
        "mcp_list_tools.in_progress",
        frames[-1]["type"],
    ]
    item = frames[0]["item"]
    assert (item["type"], item["server_label"]) == ("mcp_list_tools", server["server_label"])
    assert frames[1]["item_id"] == frames[2]["item_id"] == item["id"]
    return str(item["id"])


async def test_mcp_tools_are_listed_once_per_server(emulator: RunningEmulator) -> None:
    """Listing follows session.updated for a new server; the item then holds its tools."""
    async with sdk_connect(emulator) as conn:
        wire = Wire(conn)
        item_id = await mcp_session(wire)
        await conn.conversation.item.retrieve(item_id=item_id)
        item = (await wire.until("conversation.item.retrieved"))[-1]["item"]
        assert [t["name"] for t in item["tools"]] == ["search_docs", "read_page"]
        await conn.session.update(session={"instructions": "be brief"})
        await wire.until("session.updated")
        await conn.conversation.item.retrieve(item_id=item_id)
        frames = await wire.until("conversation.item.retrieved")
        assert "mcp_list_tools.in_progress" not in types_of(frames)


async def test_mcp_listing_of_an_unreachable_server_fails(emulator: RunningEmulator) -> None:
    """A server Voice Live cannot reach ends in mcp_list_tools.failed; its tools are absent."""
    server = {**DOCS_MCP, "server_url": "https://down.invalid/mcp"}
    async with sdk_connect(emulator) as conn:
        wire = Wire(conn)
        await mcp_session(wire, server)
        assert wire.frames[-1]["type"] == "mcp_list_tools.failed"
        await wire.say('search_docs {"q": "x"}')
        frames = await wire.until("response.done")
        assert not any("mcp" in kind for kind in types_of(frames))
        assert transcript(frames) == 'You said: search_docs {"q": "x"}'


async def approval_request(wire: Wire) -> ResponseMCPApprovalRequestItem:
    await wire.say('search_docs {"query": "voice live"}')
    frames = await wire.until("response.done")
    assert types_of(frames) == [
        "response.created",
        "response.output_item.added",
        "conversation.item.created",
        "response.output_item.done",
        "response.done",
    ]
    response = check_event(frames[-1])
    assert isinstance(response, ServerEventResponseDone)
    (item,) = response.response.output
    assert isinstance(item, ResponseMCPApprovalRequestItem)
    assert (item.server_label, item.name, item.arguments) == (
        "docs",
        "search_docs",
        '{"query": "voice live"}',
    )
    return item


async def test_mcp_call_approved_runs_on_the_service(emulator: RunningEmulator) -> None:
    """An approved request is followed by the service's own mcp_call response."""
    async with sdk_connect(emulator) as conn:
        wire = Wire(conn)
        await mcp_session(wire)
        request = await approval_request(wire)
        await conn.conversation.item.create(
            item=MCPApprovalResponseRequestItem(approval_request_id=request.id, approve=True)
        )
        frames = await wire.until("response.done")
        assert types_of(frames) == [
            "conversation.item.created",
            "response.created",
            "response.output_item.added",
            "conversation.item.created",
            "response.mcp_call_arguments.delta",
            "response.mcp_call_arguments.delta",
            "response.mcp_call_arguments.done",
            "response.mcp_call.in_progress",
            "response.mcp_call.completed",
            "response.output_item.done",
            "response.done",
        ]
        echoed = frames[0]["item"]
        assert (echoed["type"], echoed["approve"]) == ("mcp_approval_response", True)
        assert frames[6]["arguments"] == '{"query": "voice live"}'
        response = check_event(frames[-1])
        assert isinstance(response, ServerEventResponseDone)
        (call,) = response.response.output
        assert isinstance(call, ResponseMCPCallItem)
        assert (call.approval_request_id, call.name, call.server_label) == (
            request.id,
            "search_docs",
            "docs",
        )
        assert call.output is not None and "search_docs" in call.output
        await conn.response.create()
        assert transcript(await wire.until("response.done")) == f"The tool said: {call.output}"
        # An approval request is answered once.
        await conn.conversation.item.create(
            item=MCPApprovalResponseRequestItem(approval_request_id=request.id, approve=True)
        )
        error = (await wire.until("error"))[-1]["error"]
        assert (error["code"], error["param"]) == ("invalid_value", "item.approval_request_id")


async def test_mcp_call_denied_is_not_made(emulator: RunningEmulator) -> None:
    """A denied request runs nothing; the next response says it was not approved."""
    async with sdk_connect(emulator) as conn:
        wire = Wire(conn)
        await mcp_session(wire)
        request = await approval_request(wire)
        await conn.conversation.item.create(
            item=MCPApprovalResponseRequestItem(approval_request_id=request.id, approve=False)
        )
        await wire.until("conversation.item.created")
        await conn.response.create()
        frames = await wire.until("response.done")
        assert not any("mcp_call" in kind for kind in types_of(frames))
        assert transcript(frames) == "The call to search_docs was not approved."


async def test_mcp_tool_the_policy_never_asks_about_runs_at_once(
    emulator: RunningEmulator,
) -> None:
    """require_approval {never: [read_page]}: read_page is called without a request."""
    async with sdk_connect(emulator) as conn:
        wire = Wire(conn)
        await mcp_session(wire)
        await wire.say('read_page {"url": "/a"}')
        frames = await wire.until("response.done")
        assert "response.mcp_call.completed" in types_of(frames)
        (call,) = frames[-1]["response"]["output"]
        assert (call["type"], call["approval_request_id"]) == ("mcp_call", None)


async def test_approval_for_no_request_is_refused(emulator: RunningEmulator) -> None:
    """An mcp_approval_response must answer a pending mcp_approval_request."""
    async with sdk_connect(emulator) as conn:
        wire = Wire(conn)
        await mcp_session(wire)
        await conn.conversation.item.create(
            item=MCPApprovalResponseRequestItem(approval_request_id="item_nope", approve=True)
        )
        error = (await wire.until("error"))[-1]["error"]
        assert (error["code"], error["param"]) == ("invalid_value", "item.approval_request_id")


# --- pieces ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "calls"),
    [
        ('find_product {"name": "headset"}', [("find_product", '{"name": "headset"}')]),
        ("find_product", [("find_product", "")]),
        ('find_product{"a": 1};order_history {"b": "}"}',
         [("find_product", '{"a": 1}'), ("order_history", '{"b": "}"}')]),
        ("find_product not json ; order_history", [("find_product", "not json"),
                                                   ("order_history", "")]),
        ("find_products {}", []),
        ("please find_product {}", []),
        ('find_product {"a": 1} and more', [("find_product", '{"a": 1}')]),
    ],
)  # fmt: skip
def test_parse_tool_request(text: str, calls: list[tuple[str, str]]) -> None:
    """A message asks for tools when it starts with a tool's name; `;` joins calls."""
    assert parse_tool_request(text, {"find_product", "order_history"}) == calls


def test_cli_flag_sets_call_tool_after_speech() -> None:
    """--call-tool-after-speech builds the option."""
    parser = argparse.ArgumentParser()
    add_emulator_arguments(parser)
    args = parser.parse_args(["--call-tool-after-speech", 'find_product {"name": "x"}'])
    assert options_from_args(args).call_tool_after_speech == 'find_product {"name": "x"}'
    assert options_from_args(parser.parse_args([])).call_tool_after_speech is None
