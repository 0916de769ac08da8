"""A local emulator of the Azure AI Voice Live WebSocket protocol.

The real `azure-ai-voicelive` SDK connects to it exactly as it connects to Azure
(`endpoint="ws://127.0.0.1:PORT"`, an api-key header), so the whole product can be run and
tested offline. See `server.py` (transport), `session.py` (conversation state machine),
`vad.py` (energy VAD), `protocol.py` (event shapes and session validation).
"""

from voicebridge.emulator.options import (
    DEFAULT_API_KEY,
    EmulatorOptions,
    add_emulator_arguments,
    options_from_args,
)
from voicebridge.emulator.server import (
    RunningEmulator,
    create_emulator_app,
    run_emulator,
    running_emulator,
    start_emulator,
)

__all__ = [
    "DEFAULT_API_KEY",
    "EmulatorOptions",
    "RunningEmulator",
    "add_emulator_arguments",
    "create_emulator_app",
    "options_from_args",
    "run_emulator",
    "running_emulator",
    "start_emulator",
]
