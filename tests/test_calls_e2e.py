"""A real call through the relay leaves a record that the admin routes show."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.conftest import MakeClient, StartEmulator, relay_settings
from tests.voice_client import started
from voicebridge.app import STATE


async def test_a_call_is_recorded_and_searchable(
    start_emu: StartEmulator, make_client: MakeClient, tmp_path: Path
) -> None:
    """Typed turns, the answers and how the call ended are kept, searchable by words said."""
    emu = await start_emu()
    client = await make_client(
        relay_settings(
            emu,
            CALL_STORE=str(tmp_path / "calls.sqlite3"),
            CALL_SPOOL_FILE=str(tmp_path / "spool.jsonl"),
        )
    )
    voice = await started(client)
    session_id = voice.messages("session_started")[0]["session_id"]
    await voice.ws.send_json({"type": "text", "text": "Call me back on 0171 555 0199 please."})
    await voice.until_type("agent_transcript")
    await voice.ws.close()
    state = client.app[STATE]
    async with asyncio.timeout(10):
        while True:  # the writer stores the record in the background
            resp = await client.get("/calls", params={"q": "call me back"})
            body = await resp.json()
            if body.get("count"):
                break
            await asyncio.sleep(0.05)
    assert body["calls"][0]["call_id"] == session_id
    record = await (await client.get(f"/calls/{session_id}")).json()
    assert record["end_reason"] == "client_closed"
    kinds = [turn["kind"] for turn in record["turns"]]
    assert kinds[:2] == ["user_text", "agent"]
    typed = record["turns"][0]["text"]
    assert "0171 555" not in typed and "Call me back on" in typed  # the number is masked
    assert state.calls is not None
    unauthorised = await client.get("/calls", headers={"Host": "example.com"})
    assert unauthorised.status in (401, 421)
