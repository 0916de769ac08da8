"""Prometheus metrics: error codes become a bounded set of label values."""

from __future__ import annotations

import random
import string

from voicebridge import errors
from voicebridge.emulator import protocol as emulator_protocol
from voicebridge.metrics import ERROR_LABELS, OTHER_ERROR, Metrics


def _error_counts(metrics: Metrics) -> dict[str, float]:
    """The voicebridge_errors_total samples, by their code label."""
    return {
        sample.labels["code"]: sample.value
        for family in metrics.registry.collect()
        if family.name == "voicebridge_errors"
        for sample in family.samples
        if sample.name == "voicebridge_errors_total"
    }


def test_known_codes_keep_their_label() -> None:
    """A relay code and a Voice Live code are counted under their own names."""
    metrics = Metrics()
    metrics.count_error(errors.ERR_SLOW_CONSUMER)
    metrics.count_error(errors.ERR_SLOW_CONSUMER)
    metrics.count_error("response_cancel_not_active")
    assert _error_counts(metrics) == {"slow_consumer": 2.0, "response_cancel_not_active": 1.0}


def test_unknown_and_hostile_codes_become_other() -> None:
    """Codes outside the fixed set, however odd, are all counted as "other"."""
    metrics = Metrics()
    for code in ("", "x" * 10_000, 'bad"} 1\nvoicebridge_fake 9', "Slow_Consumer", "other"):
        metrics.count_error(code)
    assert _error_counts(metrics) == {OTHER_ERROR: 5.0}
    assert b"voicebridge_fake" not in metrics.render()


def test_label_values_stay_bounded() -> None:
    """A thousand random codes mixed with known ones add no label value outside the set."""
    metrics = Metrics()
    rng = random.Random(1234)
    known = sorted(ERROR_LABELS)
    for _ in range(1000):
        if rng.random() < 0.3:
            metrics.count_error(rng.choice(known))
        else:
            size = rng.randint(0, 40)
            metrics.count_error("".join(rng.choices(string.printable, k=size)))
    counts = _error_counts(metrics)
    assert set(counts) <= ERROR_LABELS
    assert OTHER_ERROR in counts
    assert sum(counts.values()) == 1000


def test_every_known_code_is_a_label() -> None:
    """Every relay code and every Voice Live code the emulator knows has its own label."""
    relay = set(errors.CODES)
    voice_live = {
        value
        for name, value in vars(emulator_protocol).items()
        if name.startswith("ERR_") and isinstance(value, str)
    }
    assert voice_live, "the emulator defines no ERR_* codes"
    assert relay | voice_live | {OTHER_ERROR} == ERROR_LABELS


def test_no_created_series() -> None:
    """/metrics has no `_created` series doubling every counter."""
    metrics = Metrics()
    metrics.count_error("bad_json")
    metrics.sessions.labels(reason="client_closed", channel="browser").inc()
    text = metrics.render().decode()
    assert "voicebridge_errors_total" in text
    assert "_created" not in text
