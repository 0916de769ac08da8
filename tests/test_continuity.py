"""Calls that outlive their upstream connection: reconnect, replay, rotate before expiry."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import MakeClient, StartEmulator, relay_settings
from tests.speech import make_speech_pcm
from tests.voice_client import VoiceSocket, silence, started
from voicebridge.app import STATE
from voicebridge.emulator import RunningEmulator
from voicebridge.relay.conversation import ConversationRecord


@pytest.fixture(scope="module")
def utterance(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """About two seconds of speech with silence either side, PCM16 24 kHz mono."""
    path = tmp_path_factory.mktemp("speech") / "question.raw"
    return silence(400) + make_speech_pcm("Is the blue model in stock?", path) + silence(1200)


def _texts(items: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [
        (item["role"], part.get("text") or part.get("transcript") or "")
        for item in items
        if item.get("type") == "message"
        for part in item["content"]
    ]


async def _answered(voice: VoiceSocket, count: int) -> list[dict[str, Any]]:
    """Wait for the `count`-th agent transcript; return all of them."""
    async with asyncio.timeout(30):
        while len(voice.messages("agent_transcript")) < count:
            await voice.until_type("agent_transcript")
    return voice.messages("agent_transcript")


def _drop(emu: RunningEmulator) -> None:
    """Drop every live emulator connection abruptly (a network failure)."""
    emu.drop_connections()


async def test_typed_turns_survive_a_dropped_connection(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    """The upstream aborted between turns: the call goes on and the history is replayed."""
    emu = await start_emu()
    client = await make_client(relay_settings(emu))
    voice = await started(client)
    await voice.ws.send_json({"type": "text", "text": "My name is Ada."})
    await _answered(voice, 1)
    await voice.until_type("status", status="ready")
    _drop(emu)
    reconnecting = await voice.until_type("status", status="reconnecting", timeout=10)
    assert reconnecting["code"] == "upstream_closed"
    await voice.until_type("status", status="ready")
    await voice.ws.send_json({"type": "text", "text": "What is my name?"})
    await _answered(voice, 2)
    # The new connection was given the conversation before the new question.
    texts = _texts(emu.conversation())
    assert ("user", "My name is Ada.") in texts
    assert any(role == "assistant" and "Ada" in text for role, text in texts)
    assert texts.index(("user", "My name is Ada.")) < texts.index(("user", "What is my name?"))
    assert not voice.messages("error")
    session = next(iter(client.app[STATE].sessions.values()))
    assert session.stats.reconnects == 1


async def test_refused_handshakes_then_success(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    """Three refused reconnects (503) and then one that works: the call carries on."""
    emu = await start_emu()
    client = await make_client(relay_settings(emu, UPSTREAM_RECONNECT_S="15"))
    voice = await started(client)
    emu.refuse_next(3)
    _drop(emu)
    await voice.until_type("status", status="reconnecting", timeout=10)
    await voice.until_type("status", status="ready")
    assert emu.connections_accepted >= 2
    await voice.ws.send_json({"type": "text", "text": "Still there?"})
    await _answered(voice, 1)


async def test_reconnect_budget_runs_out(start_emu: StartEmulator, make_client: MakeClient) -> None:
    """Refused until the budget is spent: the call ends with upstream_closed and 1011."""
    emu = await start_emu()
    client = await make_client(relay_settings(emu, UPSTREAM_RECONNECT_S="1"))
    voice = await started(client)
    emu.refuse_next(1000)
    _drop(emu)
    await voice.until_type("status", status="reconnecting", timeout=10)
    error = await voice.until_type("error")
    assert error["code"] == "upstream_closed"
    assert "no new connection within 1 s" in error["message"]
    assert await voice.until_closed() == 1011


async def test_caller_audio_during_a_reconnect_is_held_and_answered(
    start_emu: StartEmulator, make_client: MakeClient, utterance: bytes
) -> None:
    """Speech sent while the link is down reaches the next connection and is answered."""
    emu = await start_emu()
    client = await make_client(relay_settings(emu))
    voice = await started(client)
    emu.refuse_next(2)
    _drop(emu)
    await voice.until_type("status", status="reconnecting", timeout=10)
    await voice.send_audio(utterance)  # while refused handshakes are retried
    transcript = await voice.until_type("user_transcript", timeout=30)
    assert "heard" in transcript["text"]
    await _answered(voice, 1)


async def _speak(voice: VoiceSocket, pcm: bytes) -> None:
    """Stream audio in real time, 20 ms a frame, as a microphone does."""
    for start in range(0, len(pcm), 960):
        await voice.ws.send_bytes(pcm[start : start + 960])
        await asyncio.sleep(0.02)  # real-time pacing, not synchronisation


@pytest.fixture(scope="module")
def short_answer(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A short utterance (under a second of speech) with silence either side."""
    path = tmp_path_factory.mktemp("speech") / "yes.raw"
    return silence(400) + make_speech_pcm("Yes, please.", path) + silence(900)


async def test_session_outlives_five_service_caps(
    start_emu: StartEmulator, make_client: MakeClient, short_answer: bytes
) -> None:
    """A 5 s service cap: the call moves to new connections and every turn is answered."""
    emu = await start_emu(session_cap_s=5.0, realtime=True)
    client = await make_client(relay_settings(emu))
    voice = await started(client)
    session = next(iter(client.app[STATE].sessions.values()))
    turns = 0
    async with asyncio.timeout(90):
        while session.stats.upstream_generation < 6:
            await _speak(voice, short_answer)
            turns += 1
            await _answered(voice, turns)
    assert not voice.messages("error")
    assert len(voice.messages("user_transcript")) == turns
    # Moved before expiry, at quiet moments: no reconnect, no interrupted answer.
    assert session.stats.rotations >= 5 and session.stats.reconnects == 0
    assert not [m for m in voice.messages("status") if m["status"] == "reconnecting"]


def test_record_keeps_what_the_caller_heard() -> None:
    """An interrupted agent turn keeps the share of its words the caller heard."""
    record = ConversationRecord(max_chars=10_000)
    record.user("Tell me about the offer.")
    record.agent("r1", "one two three four five six seven eight nine ten")
    record.agent_interrupted("r1", played_ms=300, sent_ms=1000)
    record.user("Stop, how much is it?")
    assert _texts(record.items()) == [
        ("user", "Tell me about the offer."),
        ("assistant", "one two three"),
        ("user", "Stop, how much is it?"),
    ]


def test_record_interruption_before_the_transcript() -> None:
    """The barge-in may be known before the transcript arrives; the share still applies."""
    record = ConversationRecord(max_chars=10_000)
    record.agent_interrupted("r1", played_ms=0, sent_ms=2000)
    record.agent("r1", "nothing of this was heard")
    assert record.items() == []


def test_record_is_bounded() -> None:
    """Past max_chars the oldest turns are dropped and counted."""
    record = ConversationRecord(max_chars=50)
    for i in range(10):
        record.user(f"turn number {i} with some words")
    assert record.chars <= 50
    assert record.dropped > 0
    assert _texts(record.items())[-1] == ("user", "turn number 9 with some words")


async def test_silent_upstream_is_noticed_within_seconds(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    """A service that stops answering (pings too) is replaced within a few heartbeats."""
    emu = await start_emu()
    client = await make_client(relay_settings(emu, UPSTREAM_HEARTBEAT_S="1"))
    voice = await started(client)
    emu.freeze_connections()
    loop = asyncio.get_running_loop()
    frozen_at = loop.time()
    await voice.until_type("status", status="reconnecting", timeout=10)
    assert loop.time() - frozen_at < 5
    await voice.until_type("status", status="ready")
    await voice.ws.send_json({"type": "text", "text": "Hello again?"})
    await _answered(voice, 1)


async def test_replay_after_a_barge_in_carries_what_the_caller_heard(
    start_emu: StartEmulator, make_client: MakeClient, utterance: bytes
) -> None:
    """After a barge-in and a reconnect, the new connection gets the answer as heard."""
    emu = await start_emu(realtime=True)
    client = await make_client(relay_settings(emu))
    voice = await started(client)
    await voice.send_audio(utterance)
    # About a second of the answer reaches the caller, then the caller talks over it.
    await voice.until(lambda e: voice.audio_bytes() >= 48 * 1000)
    await voice.send_audio(utterance)
    await voice.until_type("clear_audio")
    await _answered(voice, 2)  # the cut answer's transcript, then the second answer
    await voice.until_type("status", status="ready")
    cut, full = voice.messages("agent_transcript")[:2]
    _drop(emu)
    await voice.until_type("status", status="reconnecting", timeout=10)
    await voice.until_type("status", status="ready")
    replayed = [text for role, text in _texts(emu.conversation()) if role == "assistant"]
    assert replayed == [replayed[0], full["text"]]  # the second answer was heard in full
    heard = replayed[0]
    # The cut answer is replayed as far as it was heard, not as the full answer would be.
    assert 0 < len(heard.split()) < len(full["text"].split())
    assert cut["text"].startswith(heard)


async def test_connection_lost_mid_answer_is_reported_and_the_call_goes_on(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    """Dropped while the agent speaks: response_interrupted, then the next turn is answered."""
    emu = await start_emu(realtime=True)
    client = await make_client(relay_settings(emu))
    voice = await started(client)
    await voice.ws.send_json({"type": "text", "text": "Tell me about the premium plan."})
    await voice.until(lambda e: e[0] == "audio")
    _drop(emu)
    reconnecting = await voice.until_type("status", status="reconnecting", timeout=10)
    assert reconnecting["code"] == "response_interrupted"
    await voice.until_type("status", status="ready")
    await voice.ws.send_json({"type": "text", "text": "And the basic plan?"})
    answer = await voice.until_type("agent_transcript", timeout=30)
    assert "basic plan" in answer["text"]
    texts = _texts(emu.conversation())
    assert ("user", "Tell me about the premium plan.") in texts  # the history came along


async def test_shutdown_during_a_reconnect_closes_promptly(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    """A graceful drain while the session reconnects still ends it with 1001."""
    emu = await start_emu()
    client = await make_client(relay_settings(emu, UPSTREAM_RECONNECT_S="60"))
    voice = await started(client)
    emu.refuse_next(10_000)
    _drop(emu)
    await voice.until_type("status", status="reconnecting", timeout=10)
    session = next(iter(client.app[STATE].sessions.values()))
    async with asyncio.timeout(10):
        await session.drain(0.5)
    assert await voice.until_closed() == 1001
