"""The turn tracker: agent responses, what the client was sent and played of each, and
what a barge-in must do about them. Pure: no I/O, no clock of its own (callers pass
``now``), so the rules are unit-tested from a table without any socket.

A response's audio is *queued* when it arrives from Voice Live, *written* when the client
channel puts it on the client socket, and *played* as far as the client reports (or, with
no report, as far as the wall clock since its first written byte allows, never beyond what
was written; a client whose reports are acknowledgements of what it played, like
Twilio's mark echoes, is taken at its word: ``ack_only``). A barge-in mutes every response
still playing, and for each one the client heard part of, truncates the service's copy at
the played position (or deletes the item when nothing was played), so the model's memory
matches what the caller heard.
"""

from __future__ import annotations

import attrs

#: Responses remembered by id; older ones are forgotten (their audio has long played).
TRACKS_KEPT = 8


@attrs.define(eq=False)
class ResponseTrack:
    """What the client has been sent of one agent response."""

    response_id: str
    bytes_per_ms: int
    active: bool = True  # between response.created and response.done
    item_id: str | None = None
    audio_queued: int = 0  # bytes accepted from upstream for the client
    audio_written: int = 0  # bytes written to the client socket
    first_audio_at: float | None = None  # monotonic, when its first byte was written
    announced: bool = False  # the client was told its id (audio_start)
    muted: bool = False  # barge-in: the rest of its audio is dropped
    answers: float | None = None  # when the speech it answers stopped (latency)
    from_service: bool = True  # the id is the service's (not made up for an id-less event)
    reported_ms: int | None = None  # the client's own playback report ...
    reported_at: float = 0.0  # ... and when it arrived
    ack_only: bool = False  # played = the last acknowledged position, never projected

    def played_ms(self, now: float) -> int:
        """Audio the client has played: its report projected forward, else the wall clock
        (with ``ack_only``: the last position it acknowledged, 0 before any).

        Never more than what was written to the socket.
        """
        if self.ack_only:
            return min(self.audio_written // self.bytes_per_ms, self.reported_ms or 0)
        return self._projected_ms(now)

    def _projected_ms(self, now: float) -> int:
        sent_ms = self.audio_written // self.bytes_per_ms
        if self.reported_ms is not None:
            return int(min(sent_ms, self.reported_ms + (now - self.reported_at) * 1000))
        if self.first_audio_at is None:
            return 0
        return int(min(sent_ms, (now - self.first_audio_at) * 1000))

    def still_playing(self, now: float) -> bool:
        """Whether the caller may still be hearing (or about to hear) this response.

        Judged by the clock even with ``ack_only``: a client that stops acknowledging must
        not leave a response "playing" forever.
        """
        if self.muted:
            return False
        if self.active:
            return True
        return self._projected_ms(now) < self.audio_queued // self.bytes_per_ms


@attrs.frozen
class BargeIn:
    """What to do when the caller starts talking over the agent.

    ``mute``: response ids whose remaining audio is dropped (queued and still to come).
    ``clear_client``: tell the client to stop playback now (something was sent to it).
    ``cancel``: the id of the response the service must stop generating ("" for one it
    gave no id), or None. Named, so a cancel that arrives after the service has already
    moved on to the caller's next turn cannot cancel that new response.
    ``truncate``: ``(item_id, audio_end_ms)`` for items the caller heard part of.
    ``delete``: item ids the caller heard nothing of (the service rejects a 0 ms truncate).
    """

    mute: tuple[str, ...] = ()
    clear_client: bool = False
    cancel: str | None = None
    truncate: tuple[tuple[str, int], ...] = ()
    delete: tuple[str, ...] = ()


@attrs.frozen
class AudioStep:
    """What arriving audio means: the track it belongs to, whether it is the response's
    first audio (the client must be told and the state becomes ``agent_speaking``), and the
    response latency in seconds when this audio answers a finished utterance."""

    track: ResponseTrack
    first: bool
    latency_s: float | None


class TurnTracker:
    """Responses seen recently, by id; the newest created one is the current response."""

    def __init__(
        self, bytes_per_ms: int, *, kept: int = TRACKS_KEPT, ack_only: bool = False
    ) -> None:
        self.bytes_per_ms = bytes_per_ms
        self.ack_only = ack_only
        self.kept = kept
        self.tracks: dict[str, ResponseTrack] = {}
        self.current: ResponseTrack | None = None
        self.last_written: ResponseTrack | None = None
        self.speech_stopped_at: float | None = None
        self._anonymous = 0

    @property
    def response_active(self) -> bool:
        return self.current is not None and self.current.active

    def speech_stopped(self, now: float) -> None:
        """The caller finished an utterance: the next response's latency runs from here."""
        self.speech_stopped_at = now

    def response_created(self, response_id: str | None) -> ResponseTrack:
        track = self._new(response_id, active=True)
        # The turn this response answers: latency runs from its speech_stopped.
        track.answers, self.speech_stopped_at = self.speech_stopped_at, None
        self.current = track
        return track

    def output_item(
        self, response_id: str | None, item_id: str | None, item_type: str | None = "message"
    ) -> None:
        """An item of a response; only a message item carries audio (not a function call)."""
        track = self.find(response_id)
        if track is not None and track.item_id is None and item_type in (None, "message"):
            track.item_id = item_id

    def audio(
        self, response_id: str | None, item_id: str | None, nbytes: int, now: float
    ) -> AudioStep | None:
        """Account for ``nbytes`` of agent audio; None when it must be dropped (muted)."""
        track = self.tracks.get(response_id) if response_id else self.current
        if track is None:
            # Audio of a response we saw no response.created for: track it all the same.
            track = self._new(response_id, active=False)
        if track.muted or nbytes <= 0:
            return None
        if item_id:
            # The audio's own item: the assistant message, which is what a truncation names.
            track.item_id = item_id
        first = track.audio_queued == 0
        latency = None
        if first:
            stopped_at = track.answers if track.answers is not None else self.speech_stopped_at
            if stopped_at is not None:
                latency = now - stopped_at
                self.speech_stopped_at = track.answers = None
        track.audio_queued += nbytes
        return AudioStep(track, first, latency)

    def written(self, track: ResponseTrack, nbytes: int, now: float) -> None:
        """The client channel put ``nbytes`` of this track on the client socket."""
        if track.first_audio_at is None:
            track.first_audio_at = now
        track.audio_written += nbytes
        self.last_written = track

    def playback(self, response_id: str | None, played_ms: int, now: float) -> bool:
        """A client's playback report; True when it was applied.

        With an id it applies to that response only; without one (older clients) to the
        response written last. A report for audio never written is ignored, and so is
        one for a response a barge-in silenced (Twilio echoes the marks a ``clear``
        discarded as if they had played).
        """
        track = self.tracks.get(response_id) if response_id else self.last_written
        if track is None or track.first_audio_at is None or track.muted:
            return False
        track.reported_ms = played_ms
        track.reported_at = now
        return True

    def response_done(self, response_id: str | None) -> bool:
        """Mark a response finished; True when it was the current one (the state changes)."""
        track = self.find(response_id)
        if track is not None:
            track.active = False
        return track is not None and track is self.current

    def find(self, response_id: str | None) -> ResponseTrack | None:
        """The track an event names; the current one only when it names none."""
        if response_id:
            return self.tracks.get(response_id)
        return self.current

    def plan_barge_in(self, now: float) -> BargeIn | None:
        """What the caller talking now must do; None when nothing of the agent is playing."""
        playing = [t for t in self.tracks.values() if t.still_playing(now)]
        if not playing:
            return None
        heard = [t for t in playing if t.audio_queued > 0]
        current = self.current
        truncate: list[tuple[str, int]] = []
        delete: list[str] = []
        for track in heard:
            if not track.item_id:
                continue
            played = track.played_ms(now)
            if played > 0:
                truncate.append((track.item_id, played))
            else:
                delete.append(track.item_id)
        return BargeIn(
            mute=tuple(t.response_id for t in playing),
            clear_client=bool(heard),
            # With interrupt_response on, the service cancels on its own; a cancel that
            # loses that race is answered by response_cancel_not_active, which is ignored.
            cancel=(
                (current.response_id if current.from_service else "")
                if current is not None and current.active and current in playing
                else None
            ),
            truncate=tuple(truncate),
            delete=tuple(delete),
        )

    def mute(self, plan: BargeIn) -> None:
        for response_id in plan.mute:
            track = self.tracks.get(response_id)
            if track is not None:
                track.muted = True

    def _new(self, response_id: str | None, *, active: bool) -> ResponseTrack:
        from_service = bool(response_id)
        if not response_id:
            self._anonymous += 1
            response_id = f"anonymous-{self._anonymous}"
        track = ResponseTrack(
            response_id,
            self.bytes_per_ms,
            active=active,
            from_service=from_service,
            ack_only=self.ack_only,
        )
        self.tracks[response_id] = track
        if len(self.tracks) > self.kept:
            del self.tracks[next(iter(self.tracks))]
        return track
