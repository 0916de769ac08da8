"""The Voice Live settings: aliases, auth and agent mode, defaults that follow the model,
the session.update each builds, and the rules table applied at start-up (errors stop it,
warnings are logged), each naming its source."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from azure.ai.voicelive.models import RequestSession
from structlog.testing import capture_logs

from tests.conftest import ROOT, clean_environ, make_settings
from voicebridge import voicelive
from voicebridge.app import _log_settings_warnings
from voicebridge.config import ConfigError, Settings
from voicebridge.relay.session_config import build_session_config
from voicebridge.voicelive import Target

ENDPOINT = "https://res.services.ai.azure.com"
AZURE = {
    "AZURE_OPENAI_ENDPOINT": ENDPOINT,
    "AZURE_OPENAI_KEY": "sk-secret-321",
    "AZURE_OPENAI_DEPLOYMENT": "gpt-realtime",
}


def azure(**env: str) -> Settings:
    return make_settings(**{**AZURE, **env})


def problems(**env: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        make_settings(**env)
    return info.value.problems


# --- names, auth, agent mode -----------------------------------------------------------------


def test_sdk_sample_names_are_aliases() -> None:
    """AZURE_VOICELIVE_ENDPOINT / _API_KEY / _MODEL select azure and fill the seed settings."""
    s = make_settings(
        AZURE_VOICELIVE_ENDPOINT=ENDPOINT,
        AZURE_VOICELIVE_API_KEY="sk-alias",
        AZURE_VOICELIVE_MODEL="gpt-4.1",
    )
    assert s.voicelive_backend == "azure"
    assert (s.azure_openai_endpoint, s.azure_openai_key, s.azure_openai_deployment) == (
        ENDPOINT,
        "sk-alias",
        "gpt-4.1",
    )
    assert s.azure_auth == "key"
    same = azure(AZURE_VOICELIVE_ENDPOINT=ENDPOINT)
    assert same.azure_openai_endpoint == ENDPOINT


def test_conflicting_alias_is_an_error() -> None:
    """A seed name and its alias set to different values are refused, naming both."""
    found = problems(**AZURE, AZURE_VOICELIVE_MODEL="gpt-4.1")
    assert found == [
        "AZURE_OPENAI_DEPLOYMENT and AZURE_VOICELIVE_MODEL: both set, to different values; "
        "set one of them"
    ]


@pytest.mark.parametrize(
    ("env", "auth"),
    [
        (AZURE, "key"),
        ({**AZURE, "AZURE_OPENAI_KEY": ""}, "entra"),
        ({**AZURE, "AZURE_AUTH": "ENTRA"}, "entra"),
        ({}, "key"),  # the built-in emulator, reached with a key of its own
    ],
)
def test_auth_defaults_to_the_key_when_there_is_one(env: dict[str, str], auth: str) -> None:
    """AZURE_AUTH: key when a key is set, Entra ID otherwise, or as set."""
    assert make_settings(**env).azure_auth == auth


def test_auth_problems_are_named() -> None:
    """AZURE_AUTH=key without a key or an unknown mode is an error; entra with a key, a warning."""
    found = problems(**{**AZURE, "AZURE_OPENAI_KEY": ""}, AZURE_AUTH="key")
    assert found == ["AZURE_OPENAI_KEY: required with AZURE_AUTH=key"]
    found = problems(**AZURE, AZURE_AUTH="password")
    assert found == ["AZURE_AUTH: must be one of key, entra, got 'password'"]
    s = azure(AZURE_AUTH="entra")
    assert "AZURE_OPENAI_KEY: not used, since AZURE_AUTH is entra" in s.voicelive_findings()[1]


def test_agent_mode_needs_a_project_and_entra() -> None:
    """An agent needs its project and Entra ID (the default), no model; key mode is refused."""
    s = make_settings(
        AZURE_OPENAI_ENDPOINT=ENDPOINT,
        VOICELIVE_AGENT_NAME="helpdesk",
        VOICELIVE_AGENT_PROJECT="support",
    )
    assert (s.agent_mode, s.azure_auth, s.voicelive_model) == (True, "entra", None)
    assert (s.voice_name, s.transcription_model) == ("en-US-AvaNeural", "azure-speech")
    found = problems(AZURE_OPENAI_ENDPOINT=ENDPOINT, VOICELIVE_AGENT_NAME="helpdesk")
    assert found[0].startswith("VOICELIVE_AGENT_PROJECT: required with VOICELIVE_AGENT_NAME")
    found = problems(**AZURE, VOICELIVE_AGENT_NAME="helpdesk", VOICELIVE_AGENT_PROJECT="p",
                     AZURE_AUTH="key")  # fmt: skip
    assert len(found) == 1
    assert found[0].startswith("AZURE_AUTH / VOICELIVE_AGENT_NAME: a Foundry agent is reached")
    assert voicelive.SRC_AGENTS in found[0]
    found = problems(**AZURE, VOICELIVE_AGENT_PROJECT="p", VOICELIVE_AGENT_VERSION="2")
    assert found == [
        "VOICELIVE_AGENT_PROJECT: set without VOICELIVE_AGENT_NAME",
        "VOICELIVE_AGENT_VERSION: set without VOICELIVE_AGENT_NAME",
    ]


def test_agent_mode_sends_no_instructions_and_no_model() -> None:
    """Agent mode sends no instructions; a deployment given anyway is a warning (not sent)."""
    s = azure(AZURE_AUTH="entra", VOICELIVE_AGENT_NAME="helpdesk", VOICELIVE_AGENT_PROJECT="p")
    assert "instructions" not in build_session_config(s, "Be brief.")
    assert any(w.startswith("AZURE_OPENAI_DEPLOYMENT: not sent") for w in s.voicelive_findings()[1])
    assert "instructions" in build_session_config(azure(), "Be brief.")


# --- defaults that follow the model --------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "voice", "transcription"),
    [
        ("gpt-realtime", "alloy", "whisper-1"),
        ("gpt-realtime-mini", "alloy", "whisper-1"),
        ("gpt-4.1", "en-US-AvaNeural", "azure-speech"),
        ("gpt-5", "en-US-AvaNeural", "azure-speech"),
        ("phi4-mm-realtime", "en-US-AvaNeural", "azure-speech"),
        ("azure-realtime", "ava", "azure-speech"),
    ],
)
def test_voice_and_transcription_follow_the_model(
    model: str, voice: str, transcription: str
) -> None:
    """Without VOICE_NAME / TRANSCRIPTION_MODEL the model's own are used."""
    s = azure(AZURE_OPENAI_DEPLOYMENT=model)
    assert (s.voice_name, s.transcription_model) == (voice, transcription)
    assert s.voicelive_findings() == ([], [])


def test_default_session_update_is_unchanged() -> None:
    """The default settings send what the relay always sent (the load test mirrors it)."""
    from voicebridge.loadtest.caller import SESSION_UPDATE

    assert build_session_config(make_settings(), "") == SESSION_UPDATE["session"]


# --- what each setting sends ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "key", "expected"),
    [
        ({"VOICE_NAME": "en-US-AvaNeural"}, "voice",
         {"type": "azure-standard", "name": "en-US-AvaNeural"}),
        ({"VOICE_NAME": "en-US-Ava:DragonHDLatestNeural", "VOICE_TEMPERATURE": "0.8",
          "VOICE_RATE": "1.2"}, "voice",
         {"type": "azure-standard", "name": "en-US-Ava:DragonHDLatestNeural",
          "temperature": 0.8, "rate": "1.2"}),
        ({"VOICE_NAME": "brand", "VOICE_ENDPOINT_ID": "ep-1", "VOICE_RATE": "+10%"}, "voice",
         {"type": "azure-custom", "name": "brand", "endpoint_id": "ep-1", "rate": "+10%"}),
        ({"AZURE_OPENAI_DEPLOYMENT": "azure-realtime", "VOICE_NAME": "andrew"}, "voice",
         {"type": "azure-realtime-native", "name": "andrew"}),
        ({"TURN_DETECTION": "azure_semantic_vad", "END_OF_UTTERANCE": "semantic_detection_v1",
          "VAD_REMOVE_FILLER_WORDS": "true", "VAD_LANGUAGES": "en"}, "turn_detection",
         {"type": "azure_semantic_vad", "threshold": 0.5, "prefix_padding_ms": 300,
          "silence_duration_ms": 500, "create_response": True, "interrupt_response": True,
          "end_of_utterance_detection": {"model": "semantic_detection_v1"},
          "remove_filler_words": True, "languages": ["en"]}),
        ({"TURN_DETECTION": "semantic_vad"}, "turn_detection",
         {"type": "semantic_vad", "create_response": True, "interrupt_response": True}),
        ({"TRANSCRIPTION_MODEL": "off"}, "input_audio_transcription", None),
        ({"AZURE_OPENAI_DEPLOYMENT": "gpt-4o", "TRANSCRIPTION_LANGUAGE": "en-US,de-DE",
          "TRANSCRIPTION_PHRASES": "Contoso, Fabrikam ,"}, "input_audio_transcription",
         {"model": "azure-speech", "language": "en-US,de-DE",
          "phrase_list": ["Contoso", "Fabrikam"]}),
        ({"NOISE_REDUCTION": "far_field"}, "input_audio_noise_reduction", {"type": "far_field"}),
        ({"NOISE_REDUCTION": "off"}, "input_audio_noise_reduction", None),
        ({"ECHO_CANCELLATION": "off"}, "input_audio_echo_cancellation", None),
    ],
)  # fmt: skip
def test_each_setting_sends_its_field(env: dict[str, str], key: str, expected: Any) -> None:
    """Each setting shapes its session.update field as the reference describes it."""
    session = build_session_config(azure(**env), "Hi.")
    assert session[key] == expected


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"AZURE_OPENAI_DEPLOYMENT": "gpt-4.1", "VOICE_NAME": "en-US-Ava:DragonHDLatestNeural",
         "VOICE_TEMPERATURE": "0.6", "TURN_DETECTION": "azure_semantic_vad_multilingual",
         "END_OF_UTTERANCE": "semantic_detection_v1_multilingual",
         "VAD_REMOVE_FILLER_WORDS": "true", "VAD_LANGUAGES": "en,es",
         "TRANSCRIPTION_PHRASES": "Contoso"},
        {"VOICE_NAME": "brand", "VOICE_ENDPOINT_ID": "ep-1", "TURN_DETECTION": "semantic_vad"},
    ],
)  # fmt: skip
def test_session_update_is_what_the_sdk_models_serialize(env: dict[str, str]) -> None:
    """The payload round-trips unchanged through the SDK's RequestSession model."""
    session = build_session_config(azure(**env), "Hi.")
    assert RequestSession(session).as_dict() == session


# --- the rules at start-up --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "rule_id", "setting"),
    [
        ({"AZURE_OPENAI_DEPLOYMENT": "gpt-4.1", "TRANSCRIPTION_MODEL": "whisper-1"},
         "transcription-model", "TRANSCRIPTION_MODEL"),
        ({"TRANSCRIPTION_MODEL": "azure-speech"}, "transcription-model", "TRANSCRIPTION_MODEL"),
        ({"TRANSCRIPTION_MODEL": "whisper-3"}, "transcription-model", "TRANSCRIPTION_MODEL"),
        ({"AZURE_OPENAI_DEPLOYMENT": "phi4-mm-realtime", "TRANSCRIPTION_MODEL": "mai-transcribe"},
         "transcription-model", "TRANSCRIPTION_MODEL"),
        ({"TRANSCRIPTION_PHRASES": "Contoso"}, "phrase-list-model", "TRANSCRIPTION_PHRASES"),
        ({"AZURE_OPENAI_DEPLOYMENT": "gpt-4.1",
          "TRANSCRIPTION_LANGUAGE": ",".join(f"l{i}" for i in range(11))},
         "transcription-languages", "TRANSCRIPTION_LANGUAGE"),
        ({"AZURE_OPENAI_DEPLOYMENT": "gpt-4.1", "VOICE_NAME": "alloy"},
         "openai-voice-model", "VOICE_NAME"),
        ({"VOICE_NAME": "ava"}, "voice-shape", "VOICE_NAME"),
        ({"VOICE_NAME": "alloy", "VOICE_TEMPERATURE": "0.5"}, "voice-shape", "VOICE_TEMPERATURE"),
        ({"VOICE_NAME": "alloy", "VOICE_RATE": "1.2"}, "voice-shape", "VOICE_RATE"),
        ({"VOICE_NAME": "en-US-AvaNeural", "VOICE_TEMPERATURE": "1.5"},
         "voice-temperature", "VOICE_TEMPERATURE"),
        ({"VOICE_NAME": "en-US-AvaNeural", "VOICE_RATE": "quick"}, "voice-rate", "VOICE_RATE"),
        ({"TURN_DETECTION": "clap"}, "turn-detection-shape", "TURN_DETECTION"),
        ({"VAD_REMOVE_FILLER_WORDS": "true"}, "turn-detection-shape",
         "VAD_REMOVE_FILLER_WORDS"),
        ({"VAD_LANGUAGES": "en"}, "turn-detection-shape", "VAD_LANGUAGES"),
        ({"TURN_DETECTION": "semantic_vad", "END_OF_UTTERANCE": "semantic_detection_v1"},
         "turn-detection-shape", "END_OF_UTTERANCE"),
        ({"AZURE_OPENAI_DEPLOYMENT": "gpt-4.1", "TURN_DETECTION": "semantic_vad"},
         "semantic-vad-model", "TURN_DETECTION"),
        ({"END_OF_UTTERANCE": "semantic_detection_v2"}, "end-of-utterance", "END_OF_UTTERANCE"),
        ({"NOISE_REDUCTION": "studio"}, "noise-reduction", "NOISE_REDUCTION"),
        ({"AZURE_OPENAI_DEPLOYMENT": "gpt-4.1", "NOISE_REDUCTION": "near_field"},
         "noise-reduction", "NOISE_REDUCTION"),
    ],
)  # fmt: skip
def test_invalid_combination_stops_the_start_up(
    env: dict[str, str], rule_id: str, setting: str
) -> None:
    """An invalid combination is a start-up error naming the setting, the fault and the source."""
    found = problems(**{**AZURE, **env})
    rule = voicelive.rule(rule_id)
    assert rule.severity == "error"
    matching = [p for p in found if p.endswith(f"(source: {rule.source})")]
    assert len(matching) == 1, found
    assert setting in matching[0].split(":")[0]


@pytest.mark.parametrize(
    ("env", "rule_id"),
    [
        ({"AZURE_API_VERSION": "2024-10-01-preview"}, "api-version"),
        ({"AZURE_OPENAI_DEPLOYMENT": "my-byom-deployment"}, "model-known"),
        ({"VOICE_NAME": "en-US-AvaNeural", "VOICE_TEMPERATURE": "0.7"}, "voice-temperature-hd"),
        ({"VOICE_NAME": "en-US-AvaNeural", "VOICE_RATE": "2"}, "voice-rate-range"),
        ({"TURN_DETECTION": "azure_semantic_vad", "VAD_LANGUAGES": "en,fr"}, "vad-languages"),
        ({"TURN_DETECTION": "azure_semantic_vad_multilingual", "VAD_LANGUAGES": "en,sv"},
         "vad-languages"),
        ({"TRANSCRIPTION_LANGUAGE": "en-US,fr-FR"}, "transcription-language-hint"),
        ({"AZURE_OPENAI_DEPLOYMENT": "azure-realtime", "VOICE_NAME": "en-US-AvaNeural"},
         "azure-realtime-voice"),
    ],
)  # fmt: skip
def test_doubtful_combination_is_a_start_up_warning(env: dict[str, str], rule_id: str) -> None:
    """A doubtful combination loads, and is logged at start-up with its source."""
    s = azure(**env)
    rule = voicelive.rule(rule_id)
    assert rule.severity == "warning"
    warnings = s.voicelive_findings()[1]
    assert [w for w in warnings if w.endswith(f"(source: {rule.source})")], warnings
    with capture_logs() as logs:
        _log_settings_warnings(s)
    assert [e for e in logs if e["event"] == "app.settings_warning"]
    assert "sk-secret-321" not in repr(logs)


def test_rule_errors_are_listed_with_the_other_problems() -> None:
    """Rule violations come in the same list as every other bad setting."""
    env = {**AZURE, "AZURE_OPENAI_DEPLOYMENT": "gpt-4.1"}
    found = problems(**env, APP_PORT="0", VOICE_NAME="alloy", TRANSCRIPTION_MODEL="whisper-1")
    assert found[0].startswith("APP_PORT")
    assert {p.split(":")[0] for p in found[1:]} == {"TRANSCRIPTION_MODEL", "VOICE_NAME"}


def test_other_setting_problems_are_named() -> None:
    """TURN_DETECTION none, options of an off transcription, an endpoint id for alloy: errors."""
    found = problems(**AZURE, TURN_DETECTION="none")
    assert found[0].startswith("TURN_DETECTION: none is not offered")
    found = problems(**AZURE, TRANSCRIPTION_MODEL="off", TRANSCRIPTION_LANGUAGE="en")
    assert found == ["TRANSCRIPTION_LANGUAGE: set while TRANSCRIPTION_MODEL is off"]
    found = problems(**AZURE, VOICE_ENDPOINT_ID="ep-1", VOICE_NAME="alloy")
    assert found[0].startswith("VOICE_ENDPOINT_ID: names a custom voice deployment")
    found = problems(**AZURE, VOICE_TEMPERATURE="warm")
    assert found == ["VOICE_TEMPERATURE: expected a number, got 'warm'"]


@pytest.mark.parametrize(
    ("session", "target", "rule_id"),
    [
        ({"input_audio_transcription": {"model": "whisper-1", "custom_speech": {"en": "x"}}},
         Target("gpt-realtime"), "custom-speech-model"),
        ({"input_audio_transcription": {"model": "azure-speech", "prompt": "x"}},
         Target("gpt-4.1"), "prompt-model"),
        ({"input_audio_echo_cancellation": {"type": "server_echo_cancellation",
                                            "reference_source": "client", "channels": 1}},
         Target("gpt-realtime"), "echo-reference"),
        ({"instructions": "Be brief."}, Target(None, agent=True), "agent-instructions"),
        ({"voice": {"type": "openai", "name": "alloy"}}, Target(None, agent=True),
         "openai-voice-agent"),
        ({"voice": {"type": "azure-realtime-native", "name": "ava"}}, Target("gpt-4.1"),
         "native-voice-model"),
        ({"temperature": 1.5}, Target("gpt-realtime"), "model-temperature"),
        ({"modalities": ["audio"]}, Target("gpt-realtime"), "modalities"),
        ({}, Target(None), "model-or-agent"),
        ({}, Target(None, agent=True, auth="key"), "agent-entra-only"),
    ],
)  # fmt: skip
def test_rules_the_settings_cannot_reach(
    session: dict[str, Any], target: Target, rule_id: str
) -> None:
    """The rows only the emulator meets (fields voicebridge never sends) hold as written."""
    assert rule_id in {f.rule.id for f in voicelive.check(session, target)}


def test_unlisted_models_pass_the_model_rules_only_when_lenient() -> None:
    """An unlisted model is a text model at start-up; the lenient emulator lets it pass."""
    session = {"voice": {"type": "openai", "name": "alloy"}}
    assert voicelive.check(session, Target("bench"), scope="session")
    assert not voicelive.check(session, Target("bench", lenient=True), scope="session")


def test_serve_refuses_an_invalid_combination_with_exit_2(tmp_path: Path) -> None:
    """`serve` with a combination Voice Live refuses exits 2 listing it, never the key."""
    env = clean_environ({**AZURE, "AZURE_OPENAI_DEPLOYMENT": "gpt-4.1", "VOICE_NAME": "alloy"})
    proc = subprocess.run(
        [sys.executable, "-m", "voicebridge", "serve", "--env-file", str(tmp_path / "none")],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "VOICE_NAME: OpenAI voices (alloy) are spoken by the gpt-realtime models" in proc.stderr
    assert "sk-secret-321" not in proc.stderr + proc.stdout
