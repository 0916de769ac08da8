"""The estimated cost of token usage at configured prices (USD per 1M tokens)."""

from __future__ import annotations

from voicebridge.calls.record import Usage
from voicebridge.calls.settings import Prices


def estimate(usage: Usage, prices: Prices) -> float | None:
    """USD for ``usage``: input text and audio less their cached share at the input
    prices, cached input at the cached price, output text and audio at the output
    prices. None when no price is set (costs are then not estimated)."""
    if not prices.known:
        return None
    text_in = max(0, usage.input_text - usage.cached_text)
    audio_in = max(0, usage.input_audio - usage.cached_audio)
    cached = usage.cached_text + usage.cached_audio
    micro = (
        text_in * prices.text_in
        + audio_in * prices.audio_in
        + cached * prices.cached_in
        + usage.output_text * prices.text_out
        + usage.output_audio * prices.audio_out
    )
    return round(micro / 1_000_000, 6)
