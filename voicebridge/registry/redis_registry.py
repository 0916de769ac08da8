"""The Redis session registry: one shared view of the sessions of several server processes
or hosts, a session cap counted across all of them, and admin end requests delivered to
whichever process holds the session.

Layout (``prefix`` defaults to ``vb:``):

``{prefix}session:{id}``
    a string holding the record as JSON, with a TTL (``PX ttl``).
``{prefix}sessions``
    a sorted set of live session ids, each scored by its expiry time in milliseconds on
    the Redis server's clock. Set members cannot expire on their own, so every writer
    stores the expiry as the score and the cap check drops members whose score has
    passed; using Redis's ``TIME`` rather than each host's clock keeps hosts with skewed
    clocks consistent.
``{prefix}instance:{instance_id}``
    the pub/sub channel an instance listens on for end requests, and for the
    acknowledgements of the end requests it sent.

An end request for another instance's session is acknowledged by the holder on the
sender's channel, and ``request_end`` is True only once it is: a holder that was killed
moments ago (Redis has not yet noticed its subscription is gone) or hangs never answers,
and the request counts as undelivered after ``socket_timeout_s``.

Every write of a session (register, update, heartbeat) sets the key and the score together
in one Lua script, so both carry the same expiry. A heartbeat rewrites all of an
instance's sessions every ``heartbeat_s``; when an instance dies without closing, its
sessions stop being rewritten and vanish after ``ttl_s``. With a snapshot source
installed (`set_snapshot_source`), each heartbeat first pulls every local session's latest
state and metrics from it, so the records in Redis are at most ``heartbeat_s`` old without
the sessions pushing anything; ``update`` still writes at once, for changes that should
not wait for the next beat.

Redis is not needed for the server to work: the registry keeps its own sessions in memory
and, while Redis is unreachable, admits new sessions against the cap counted locally (fail
open), answers ``list``/``get`` from them and reports ``healthy() == False``. The heartbeat
keeps probing; once Redis answers it rewrites every local session (re-creating keys lost
with a restarted Redis) and the subscriber subscribes again. Sessions unregistered while
Redis was unreachable are remembered as orphans and deleted from Redis by that first
heartbeat; at most ``max_orphans`` are remembered, the oldest dropped beyond that (logged,
and counted in ``orphans_dropped``): a dropped orphan's entry is no longer rewritten, so it
still leaves Redis, only later, once its TTL runs out.

"Unreachable" includes a Redis that stops answering without closing anything (a hung
server, a network silently dropping packets): every call gives up after
``socket_timeout_s`` and marks Redis down, and the heartbeat pings Redis even when this
instance holds no sessions, so an idle instance notices too. The subscriber pings its own
connection whenever it has been quiet for ``heartbeat_s`` and, without an answer within
``socket_timeout_s``, subscribes again on a new connection.

An error reply (``ResponseError``: a command denied by ACL, ``OOM`` under ``maxmemory``, a
read-only replica, a failing script) is not an outage: Redis answered. It is logged as
``registry.redis_error`` with Redis's message, the call falls back to the local copy as
above, and reachability and ``healthy()`` are left alone; a refused SUBSCRIBE leaves the
instance unhealthy, since end requests cannot reach it. Every call that falls back this
way goes through `RedisRegistry._fail_open`. What a fallback loses (an unregister left for
later, an end request that could not be sent) is logged at WARNING, at most once a minute
per kind.

The keys of one script are derived from the prefix rather than all declared up front, so
this layout suits a single Redis (or a primary with replicas), not Redis Cluster.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import attrs
import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from voicebridge.config import mask_url
from voicebridge.logs import LimitedLog
from voicebridge.registry.base import (
    EndDispatcher,
    EndHandler,
    RegistryError,
    SessionRecord,
    SnapshotSource,
    default_instance_id,
    pull_snapshots,
)
from voicebridge.registry.memory import LocalHandoffs

log = structlog.get_logger(__name__)

# Admits a session only while fewer than the cap are live, atomically across every
# instance: the prune, the count and the insert run as one script, so concurrent
# registrations from many processes cannot all see "one slot left".
# KEYS[1] live-session zset, KEYS[2] the session's key.
# ARGV[1] session id, ARGV[2] record JSON, ARGV[3] ttl in ms, ARGV[4] cap (<= 0: none).
_REGISTER_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local cap = tonumber(ARGV[4])
if cap > 0 and not redis.call('ZSCORE', KEYS[1], ARGV[1])
    and redis.call('ZCARD', KEYS[1]) >= cap then
  return 0
end
local ttl = tonumber(ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ttl)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
return 1
"""

# Rewrites already-admitted sessions (update, heartbeat, re-registration after an
# outage) with a fresh expiry, without a cap check: they are live and were admitted.
# KEYS[1] live-session zset, KEYS[2..n+1] the sessions' keys.
# ARGV[1] ttl in ms, then per session i (1..n): ARGV[2i] id, ARGV[2i+1] record JSON.
_TOUCH_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], ARGV[2 * i - 1], 'PX', ttl)
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[2 * i - 2])
end
return #KEYS - 1
"""

# The number of live sessions, by the same rule the cap uses.
# KEYS[1] live-session zset.
_COUNT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""

# Sessions per heartbeat script call: a script blocks Redis while it runs, so a few
# thousand sessions are rewritten in several short scripts rather than one long one.
_TOUCH_BATCH = 200
_MGET_BATCH = 500

# Any of these means "Redis is not answering": connection refused or reset, timeouts
# (socket timeouts and the per-call deadline's TimeoutError, an OSError), DNS failures
# (OSError) and everything redis-py wraps them in. ResponseError is a RedisError too but
# means the opposite, Redis answered with an error: every handler catches it first.
_REDIS_DOWN = (RedisError, OSError)

# The same error reply (same operation, same message) is logged at most this often.
_ERROR_LOG_INTERVAL_S = 60.0

# Anything URL-shaped in a message that reaches a log line; masked with config.mask_url.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


class _SubscriptionStalled(Exception):
    """The pub/sub connection did not answer a ping in time."""


@attrs.define
class _Attempt:
    """How one `RedisRegistry._fail_open` block went."""

    #: The block ran to its end.
    ok: bool = False
    #: Redis replied: the block ran to its end, or Redis refused with an error reply.
    answered: bool = False
    #: Why Redis counts as not answering, when it does not.
    outage: BaseException | None = None


def _encode(record: SessionRecord) -> str:
    # default=str: a metric that is not JSON-able must not take the session down.
    return json.dumps(record.as_dict(), separators=(",", ":"), default=str)


@attrs.define
class RedisRegistry:
    """Sessions shared through Redis; see the module docstring for the layout."""

    url: str = attrs.field(repr=mask_url)
    instance_id: str = attrs.field(factory=default_instance_id)
    ttl_s: float = attrs.field(default=15.0)
    heartbeat_s: float = attrs.field(default=5.0)
    prefix: str = "vb:"
    # How often an unreachable Redis is probed (and pub/sub resubscription retried).
    retry_s: float = 1.0
    socket_connect_timeout_s: float = 1.0
    socket_timeout_s: float = 2.0
    # How many orphans (see `_orphans`) are remembered; the oldest are dropped beyond it.
    # Ten thousand ids are well under a megabyte, and more sessions than that ending in
    # one outage is far beyond what one instance holds.
    max_orphans: int = attrs.field(default=10_000)

    _redis: Redis | None = attrs.field(default=None, init=False)
    # The password redis-py sends, scrubbed from any message that reaches a log line.
    _password: str | None = attrs.field(default=None, init=False, repr=False)
    _local: dict[str, SessionRecord] = attrs.field(factory=dict, init=False)
    # Handoffs kept here while Redis is down (then only this instance can read them).
    _local_handoffs: LocalHandoffs = attrs.field(factory=LocalHandoffs, init=False)
    # Sessions removed locally whose Redis entries could not be deleted (Redis was down);
    # deleted by the first heartbeat that reaches Redis again. A dict for its order: on
    # overflow the oldest is dropped.
    _orphans: dict[str, None] = attrs.field(factory=dict, init=False)
    _orphans_dropped: int = attrs.field(default=0, init=False)
    _snapshot_source: SnapshotSource | None = attrs.field(default=None, init=False)
    # Rate-limits the warnings for what a fail-open call lost; per registry, not global.
    _limited: LimitedLog = attrs.field(factory=LimitedLog, init=False)
    _ends: EndDispatcher = attrs.field(init=False)
    _tasks: builtins.list[asyncio.Task[None]] = attrs.field(factory=list, init=False)
    _reachable: bool = attrs.field(default=False, init=False)
    _subscribed: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    # Bumped on every reachable -> unreachable transition, so the subscriber notices an
    # outage seen by other calls and drops a pub/sub connection that may be half-open.
    _outages: int = attrs.field(default=0, init=False)
    _outage_logged: bool = attrs.field(default=False, init=False)
    # (operation, message) -> (monotonic time last logged, repeats not logged since).
    _errors_logged: dict[tuple[str, str], tuple[float, int]] = attrs.field(factory=dict, init=False)
    # End requests this instance sent, waiting for the holder's acknowledgement: nonce ->
    # whether the holder had the session. Replies being sent, so close can cancel them.
    _acks: dict[str, asyncio.Future[bool]] = attrs.field(factory=dict, init=False)
    _replies: set[asyncio.Task[None]] = attrs.field(factory=set, init=False)
    _register_script: Any = attrs.field(default=None, init=False)
    _touch_script: Any = attrs.field(default=None, init=False)
    _count_script: Any = attrs.field(default=None, init=False)

    @_ends.default
    def _make_dispatcher(self) -> EndDispatcher:
        return EndDispatcher(self.instance_id)

    @ttl_s.validator
    def _check_timing(self, _attribute: object, value: float) -> None:
        if value <= 0:
            raise ValueError("ttl_s must be positive")

    @heartbeat_s.validator
    def _check_heartbeat(self, _attribute: object, value: float) -> None:
        if not 0 < value < self.ttl_s:
            raise ValueError("heartbeat_s must be positive and shorter than ttl_s")

    @max_orphans.validator
    def _check_max_orphans(self, _attribute: object, value: int) -> None:
        if value < 1:
            raise ValueError("max_orphans must be at least 1")

    @property
    def orphans_dropped(self) -> int:
        """How many orphans were forgotten because more than `max_orphans` piled up."""
        return self._orphans_dropped

    # keys -------------------------------------------------------------------------------

    @property
    def _zkey(self) -> str:
        return f"{self.prefix}sessions"

    def _skey(self, session_id: str) -> str:
        return f"{self.prefix}session:{session_id}"

    def _hkey(self, key: str) -> str:
        return f"{self.prefix}handoff:{key}"

    def _channel(self, instance_id: str) -> str:
        return f"{self.prefix}instance:{instance_id}"

    @property
    def _ttl_ms(self) -> int:
        return max(1, round(self.ttl_s * 1000))

    def _deadline(self) -> asyncio.Timeout:
        # Bounds one registry call (or one step of the heartbeat) as a whole: redis-py's
        # socket timeout applies per read and again on reconnect, so a silent Redis could
        # otherwise hold a call for several timeouts. Expiry raises TimeoutError, handled
        # like any other "Redis is not answering" error.
        return asyncio.timeout(self.socket_timeout_s)

    @contextlib.asynccontextmanager
    async def _fail_open(
        self, op: str, *, bounded: bool = True, mark_down: bool = True
    ) -> AsyncIterator[_Attempt]:
        """Run the block as one fail-open Redis call; the caller reads the `_Attempt` after
        it and falls back (to the local copy, a default, an orphan) unless it is `ok`.

        The block is bounded by one deadline; with `bounded=False` it bounds its own steps
        instead (the heartbeat, whose batches get a deadline each). An error reply is
        logged (`_redis_error`) and leaves reachability alone; an outage marks Redis down
        (`_mark_down`), or with `mark_down=False` is only recorded in `outage`, for the
        caller to report (shutdown). Neither escapes the block; anything else (a bug, a
        cancellation) does.
        """
        attempt = _Attempt()
        try:
            async with asyncio.timeout(self.socket_timeout_s if bounded else None):
                yield attempt
        except ResponseError as exc:
            attempt.answered = True
            self._redis_error(op, exc)
        except _REDIS_DOWN as exc:
            attempt.outage = exc
            if mark_down:
                self._mark_down(exc)
        else:
            attempt.ok = attempt.answered = True

    # lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, subscribe to this instance's channel and start the heartbeat.

        An unreachable Redis does not fail start-up: the registry starts unhealthy and
        serves local sessions until Redis answers.
        """
        if self._redis is not None:
            raise RegistryError("registry already started")
        try:
            self._redis = Redis.from_url(
                self.url,
                decode_responses=True,
                socket_connect_timeout=self.socket_connect_timeout_s,
                socket_timeout=self.socket_timeout_s,
                # Lets the OS notice a peer that vanished on connections left idle; the
                # pings of the heartbeat and the subscriber catch it far sooner.
                socket_keepalive=True,
                # One immediate retry covers a pooled connection that went stale while
                # Redis restarted (a connection error); the default's exponential backoff
                # would stall calls for seconds while Redis is down, and the heartbeat
                # retries anyway. No retry on timeouts: a Redis that did not answer in
                # socket_timeout_s is treated as down rather than waited on again.
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                # No health_check_interval: on a pub/sub connection redis-py sends its
                # health-check PING without ever waiting for the reply, so it cannot see
                # a silent connection. The subscriber pings and checks for itself.
            )
        except ValueError:
            # from None: the original message may quote the URL, password included.
            raise RegistryError(f"invalid Redis URL {mask_url(self.url)}") from None
        password = self._redis.connection_pool.connection_kwargs.get("password")
        self._password = str(password) if password else None
        self._register_script = self._redis.register_script(_REGISTER_LUA)
        self._touch_script = self._redis.register_script(_TOUCH_LUA)
        self._count_script = self._redis.register_script(_COUNT_LUA)
        async with self._fail_open("start") as ping:
            await self._redis.ping()
        # A denied PING, say, is an answer all the same.
        self._reachable = ping.answered
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(
                self._heartbeat_loop(self._redis), name=f"registry-heartbeat-{self.instance_id}"
            ),
            loop.create_task(
                self._subscriber_loop(self._redis), name=f"registry-pubsub-{self.instance_id}"
            ),
        ]
        if self._reachable:
            # Ready means end requests for this instance are delivered from the start.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._subscribed.wait(), self.socket_timeout_s)
        log.info(
            "registry.started",
            backend="redis",
            url=mask_url(self.url),
            instance=self.instance_id,
            healthy=self.healthy(),
        )

    async def close(self) -> None:
        """Stop the heartbeat and subscriber, remove this instance's sessions from Redis
        (best effort) and disconnect."""
        tasks, self._tasks = self._tasks, []
        pending = set(tasks)
        while pending:
            # Cancelled again until they are done: on Python 3.11, asyncio.wait_for (which
            # redis-py sends commands through) drops a cancellation that arrives just as
            # the send completes, and the loop would carry on as if never cancelled.
            for task in pending:
                task.cancel()
            _done, pending = await asyncio.wait(pending, timeout=self.retry_s)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._ends.aclose()
        for reply in list(self._replies):
            reply.cancel()
        for reply in list(self._replies):
            with contextlib.suppress(asyncio.CancelledError):
                await reply
        redis, self._redis = self._redis, None
        gone = set(self._local) | self._orphans.keys()
        reachable, self._reachable = self._reachable, False
        self._local.clear()
        self._orphans.clear()
        if redis is None:
            return
        removed = 0
        try:
            # While Redis is unreachable, shutting down must not wait on it, and a Redis
            # that stops answering now holds it up for one deadline at most: the entries
            # expire within ttl_s anyway.
            if gone and reachable:
                async with self._fail_open("close", mark_down=False) as cleanup:
                    await self._delete(redis, gone)
                if cleanup.ok:
                    removed = len(gone)
                elif cleanup.outage is not None:
                    log.warning(
                        "registry.close_cleanup_failed",
                        error=self._describe(cleanup.outage),
                        sessions=len(gone),
                    )
        finally:
            # Disconnecting only closes sockets, but bound it too: shutdown must not hang.
            await self._disconnect(redis, "disconnect")
        log.info("registry.closed", instance=self.instance_id, removed=removed)

    def set_end_handler(self, handler: EndHandler) -> None:
        """Install the coroutine that ends a session held by this instance."""
        self._ends.handler = handler

    def set_snapshot_source(self, source: SnapshotSource) -> None:
        """Install the callable each heartbeat (and `list`/`get`) pulls this instance's
        sessions' latest state and metrics from; the heartbeat writes them to Redis."""
        self._snapshot_source = source

    def healthy(self) -> bool:
        """Redis answers and this instance is subscribed to its end-request channel."""
        return self._reachable and self._subscribed.is_set()

    # sessions ---------------------------------------------------------------------------

    async def register(self, record: SessionRecord, *, max_sessions: int) -> bool:
        """Admit a session unless `max_sessions` (> 0) are live across all instances.

        While Redis is unreachable, or refuses the registration with an error reply, only
        this instance's sessions count against the cap. Waits at most about
        `socket_timeout_s` for Redis.
        """
        redis = self._live_client()
        if redis is not None:
            # An error reply (ACL, OOM, read-only replica, script error) fails open, as
            # an outage does: such errors are usually a standing misconfiguration that
            # would otherwise turn every session on every instance away, while Redis is
            # there to share sessions, not to be needed for serving them. The cost is the
            # same as during an outage: the cap is counted per instance until Redis
            # accepts writes again. The session is kept locally and the heartbeat keeps
            # trying to write it.
            #
            # A timeout may come after Redis ran the script (the reply was lost or late,
            # or a paused Redis runs it once it resumes). Then the entry exists in Redis
            # and counts against the cap, under this instance's name, until its TTL:
            # admitted locally below, the heartbeat keeps it; refused locally, nothing
            # rewrites it and it expires within ttl_s. Either way it is at most one slot
            # for at most ttl_s, which is why a timeout falls back to the local count
            # instead of retrying the script.
            async with self._fail_open("register"):
                admitted = await self._register_script(
                    keys=[self._zkey, self._skey(record.session_id)],
                    args=[record.session_id, _encode(record), self._ttl_ms, max_sessions],
                    client=redis,
                )
                if admitted:
                    self._local[record.session_id] = record
                return bool(admitted)
        if (
            max_sessions > 0
            and record.session_id not in self._local
            and len(self._local) >= max_sessions
        ):
            return False
        self._local[record.session_id] = record
        return True

    async def update(self, session_id: str, *, state: str, metrics: Mapping[str, Any]) -> None:
        """Publish a session's state and metrics (one script call); never raises for an
        unreachable Redis. Unknown ids are ignored."""
        record = self._local.get(session_id)
        if record is None:
            return
        record = attrs.evolve(record, state=state, metrics=metrics)
        self._local[session_id] = record
        redis = self._live_client()
        if redis is None:
            # Not lost: the heartbeat that finds Redis again writes the local copy.
            return
        async with self._fail_open("update") as write:
            await self._touch(redis, [record])
            if session_id not in self._local:
                # Unregistered while the write was in flight: do not leave it behind.
                await self._delete(redis, [session_id])
        if not write.ok and session_id not in self._local:
            self._add_orphan(session_id)

    async def unregister(self, session_id: str) -> None:
        """Remove a session; never raises for an unreachable Redis."""
        self._local.pop(session_id, None)
        redis = self._live_client()
        if redis is not None:
            async with self._fail_open("unregister") as delete:
                await self._delete(redis, [session_id])
            if delete.ok:
                return
        if self._redis is not None:  # started, Redis unreachable or refusing: later
            self._add_orphan(session_id)

    async def list(self) -> builtins.list[SessionRecord]:
        """Every live session on every instance, oldest first; only this instance's while
        Redis is unreachable."""
        found: dict[str, SessionRecord] = {}
        redis = self._live_client()
        if redis is not None:
            # Partial on failure: the batches read so far are kept.
            async with self._fail_open("list"):
                ids = await redis.zrange(self._zkey, 0, -1)
                for start in range(0, len(ids), _MGET_BATCH):
                    chunk = ids[start : start + _MGET_BATCH]
                    raws = await redis.mget([self._skey(str(i)) for i in chunk])
                    for raw in raws:
                        record = self._decode(raw)
                        if record is not None:
                            found[record.session_id] = record
        # The local copy of this instance's sessions is the freshest, and covers sessions
        # admitted during an outage that the heartbeat has not rewritten yet.
        pull_snapshots(self._local, self._snapshot_source, self._limited)
        found.update(self._local)
        return sorted(found.values(), key=lambda r: r.started_at)

    async def get(self, session_id: str) -> SessionRecord | None:
        """One session from any instance, or None."""
        pull_snapshots(self._local, self._snapshot_source, self._limited)
        local = self._local.get(session_id)
        redis = self._live_client()
        if local is not None or redis is None:
            return local
        async with self._fail_open("get"):
            return self._decode(await redis.get(self._skey(session_id)))
        return None

    async def save_handoff(self, key: str, data: Mapping[str, Any], *, ttl_s: float) -> None:
        """Keep ``data`` in Redis for ``ttl_s`` seconds (fail-open: with Redis down it is
        kept on this instance only, where a call moved to a new stream may not land)."""
        redis = self._live_client()
        if redis is not None:
            async with self._fail_open("save_handoff") as write:
                await redis.set(
                    self._hkey(key),
                    json.dumps(dict(data), separators=(",", ":")),
                    px=int(ttl_s * 1000),
                )
            if write.ok:
                return
        self._local_handoffs.save(key, data, ttl_s)

    async def load_handoff(self, key: str, *, remove: bool = False) -> dict[str, Any] | None:
        """A handoff saved by any instance (with ``remove``: read and deleted at once)."""
        redis = self._live_client()
        if redis is not None:
            raw = None
            async with self._fail_open("load_handoff") as read:
                hkey = self._hkey(key)
                raw = await (redis.getdel(hkey) if remove else redis.get(hkey))
            if read.ok and raw is not None:
                data = json.loads(raw)
                return data if isinstance(data, dict) else None
        return self._local_handoffs.load(key, remove=remove)

    async def count(self) -> int:
        """Live sessions on every instance (this instance's alone while Redis is down)."""
        redis = self._live_client()
        if redis is not None:
            async with self._fail_open("count"):
                return int(await self._count_script(keys=[self._zkey], args=[], client=redis))
        return len(self._local)

    async def request_end(self, session_id: str, reason: str = "ended by admin") -> bool:
        """End a session wherever it runs.

        A local session's end handler is scheduled here; any other session's holder gets
        the request on its channel, schedules its own handler and acknowledges. Returns
        once the request is acknowledged, not once the session has ended. False when the
        session is unknown, or when its holder does not answer within `socket_timeout_s`
        (it died or hangs, and its entries are expiring).
        """
        if session_id in self._local:
            self._ends.dispatch(session_id, reason)
            return True
        redis = self._live_client()
        if redis is not None:
            nonce = secrets.token_hex(8)
            # Without a subscription of its own this instance cannot hear the answer: it
            # then settles for "someone is listening on the holder's channel".
            acked: asyncio.Future[bool] | None = None
            if self._subscribed.is_set():
                acked = asyncio.get_running_loop().create_future()
                self._acks[nonce] = acked
            try:
                async with self._fail_open("request_end") as send:
                    record = self._decode(await redis.get(self._skey(session_id)))
                    if record is None or record.instance == self.instance_id:
                        return False
                    message = json.dumps(
                        {
                            "session_id": session_id,
                            "reason": reason,
                            "reply_to": self.instance_id,
                            "nonce": nonce,
                        }
                    )
                    receivers = int(await redis.publish(self._channel(record.instance), message))
                if send.ok:
                    if receivers == 0:
                        log.warning(
                            "registry.end_undelivered",
                            session_id=session_id,
                            instance=record.instance,
                        )
                        return False
                    if acked is None:
                        return True
                    try:
                        async with asyncio.timeout(self.socket_timeout_s):
                            return await acked
                    except TimeoutError:
                        log.warning(
                            "registry.end_unacknowledged",
                            session_id=session_id,
                            instance=record.instance,
                            waited_s=self.socket_timeout_s,
                        )
                        return False
            finally:
                self._acks.pop(nonce, None)
        # Whether the session exists elsewhere is unknown: the admin asking is told no.
        self._limited.warning(
            log,
            "registry.end_request_failed",
            session_id=session_id,
            instance=self.instance_id,
            error="Redis unavailable" if redis is None else "the Redis call failed",
        )
        return False

    # internals --------------------------------------------------------------------------

    def _add_orphan(self, session_id: str) -> None:
        """Remember a session to delete from Redis once it answers; the oldest is dropped
        beyond `max_orphans` (its entry then expires with its TTL instead)."""
        self._orphans.pop(session_id, None)  # re-added: now the newest
        self._orphans[session_id] = None
        dropped = 0
        while len(self._orphans) > self.max_orphans:
            del self._orphans[next(iter(self._orphans))]
            dropped += 1
        self._orphans_dropped += dropped
        if dropped:
            self._limited.warning(
                log,
                "registry.orphans_dropped",
                instance=self.instance_id,
                max_orphans=self.max_orphans,
                dropped_total=self._orphans_dropped,
            )
        else:
            self._limited.warning(
                log,
                "registry.unregister_deferred",
                instance=self.instance_id,
                session_id=session_id,
                orphans=len(self._orphans),
            )

    def _decode(self, raw: str | bytes | None) -> SessionRecord | None:
        if raw is None:
            return None
        try:
            return SessionRecord.from_dict(json.loads(raw))
        except (ValueError, KeyError, TypeError):
            self._limited.warning(log, "registry.bad_record", instance=self.instance_id)
            return None

    async def _disconnect(self, client: Any, what: str) -> None:
        # Closing only closes sockets, but a silent Redis must not hold shutdown (or the
        # subscriber's next attempt) up: bounded, and a failure is only worth a warning.
        async with self._fail_open(what, mark_down=False) as closing:
            await client.aclose()
        if closing.outage is not None:
            self._limited.warning(
                log,
                "registry.disconnect_failed",
                instance=self.instance_id,
                what=what,
                error=self._describe(closing.outage),
            )

    def _live_client(self) -> Redis | None:
        # None before start, after close, and while Redis is unreachable: callers then
        # serve from the local copy instead of raising into a session.
        return self._redis if self._reachable else None

    async def _touch(self, redis: Redis, records: Iterable[SessionRecord]) -> None:
        batch = builtins.list(records)
        for start in range(0, len(batch), _TOUCH_BATCH):
            chunk = batch[start : start + _TOUCH_BATCH]
            keys = [self._zkey, *(self._skey(r.session_id) for r in chunk)]
            args: builtins.list[str | int] = [self._ttl_ms]
            for record in chunk:
                args += [record.session_id, _encode(record)]
            # A deadline per batch: a heartbeat of many batches is not cut short, and
            # none of them waits on a silent Redis for longer than one deadline.
            async with self._deadline():
                await self._touch_script(keys=keys, args=args, client=redis)

    async def _delete(self, redis: Redis, session_ids: Iterable[str]) -> None:
        ids = builtins.list(session_ids)
        async with redis.pipeline(transaction=True) as pipe:
            pipe.delete(*(self._skey(i) for i in ids))
            pipe.zrem(self._zkey, *ids)
            await pipe.execute()

    def _mark_down(self, exc: BaseException) -> None:
        if self._reachable or not self._outage_logged:
            log.warning(
                "registry.redis_unavailable",
                url=mask_url(self.url),
                instance=self.instance_id,
                error=self._describe(exc),
                local_sessions=len(self._local),
            )
            self._outage_logged = True
        if self._reachable:
            self._outages += 1
        self._reachable = False

    async def _heartbeat_loop(self, redis: Redis) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s if self._reachable else self.retry_s)
            try:
                await self._heartbeat(redis)
            except Exception:
                # A bug here must not stop the heartbeat: every session would expire.
                log.exception("registry.heartbeat_failed", instance=self.instance_id)

    def _redis_error(self, op: str, exc: ResponseError) -> None:
        """Log an error reply from Redis; unlike `_mark_down` it changes no state: Redis
        answered, so it is reachable, and the next call tries it again."""
        message = self._scrub(str(exc))
        key = (op, message)
        now = time.monotonic()
        last_logged, repeats = self._errors_logged.get(key, (None, 0))
        if last_logged is not None and now - last_logged < _ERROR_LOG_INTERVAL_S:
            self._errors_logged[key] = (last_logged, repeats + 1)
            return
        if len(self._errors_logged) > 100:  # messages that vary: keep this bounded
            self._errors_logged.clear()
        self._errors_logged[key] = (now, 0)
        log.error(
            "registry.redis_error",
            op=op,
            error=f"{type(exc).__name__}: {message}",
            url=mask_url(self.url),
            instance=self.instance_id,
            repeats_not_logged=repeats,
        )

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError) and not str(exc):
            # The per-call deadline's TimeoutError carries no message.
            return f"TimeoutError: no reply within {self.socket_timeout_s} s"
        return self._scrub(_describe(exc))

    def _scrub(self, text: str) -> str:
        # Redis's own messages do not quote passwords, but nothing that reaches a log
        # line may carry one: URLs are masked as everywhere else (config.mask_url), and
        # the password redis-py parsed from ours and sends is blanked wherever it appears.
        text = _URL.sub(lambda match: mask_url(match.group()), text)
        if self._password:
            text = text.replace(self._password, "***")
        return text

    async def _heartbeat(self, redis: Redis) -> None:
        # The sessions' latest state rides on the rewrite that renews their TTLs: the
        # same script calls, nothing extra per session.
        pull_snapshots(self._local, self._snapshot_source, self._limited)
        snapshot = builtins.list(self._local.values())
        # Unbounded as a whole: ping, each batch of the rewrite and the delete get a
        # deadline each, so a heartbeat of many batches is not cut short.
        async with self._fail_open("heartbeat", bounded=False) as beat:
            if not self._reachable or not snapshot:
                # With sessions, rewriting them is the probe; without, only a ping would
                # notice a Redis that went silent (nothing else would reach it).
                async with self._deadline():
                    await redis.ping()
            await self._touch(redis, snapshot)
            # Sessions unregistered while the rewrite ran, and those removed during an
            # outage, must not outlive their sessions.
            stale = {r.session_id for r in snapshot if r.session_id not in self._local}
            stale |= self._orphans.keys()
            if stale:
                async with self._deadline():
                    await self._delete(redis, stale)
                for session_id in stale:
                    self._orphans.pop(session_id, None)
        # An error reply: Redis answers (so it counts as reachable below) but refuses
        # these writes; they are retried on the next beat.
        if not beat.answered:
            return
        if not self._reachable:
            self._reachable = True
            log.info(
                "registry.redis_restored",
                url=mask_url(self.url),
                instance=self.instance_id,
                sessions=len(snapshot),
            )

    async def _subscriber_loop(self, redis: Redis) -> None:
        channel = self._channel(self.instance_id)
        while True:
            outages = self._outages
            delay = self.retry_s
            pubsub = redis.pubsub()
            try:
                async with self._deadline():
                    await pubsub.subscribe(channel)
                await self._listen(pubsub, outages)
            except ResponseError as exc:
                # SUBSCRIBE denied by ACL, say. Redis answers, so this is no outage, but
                # end requests cannot reach this instance: unhealthy until it subscribes.
                # Retried at the heartbeat's pace, which also spares the log.
                self._redis_error("subscribe", exc)
                delay = self.heartbeat_s
            except _SubscriptionStalled:
                # The connection went silent (a NAT or firewall dropped it, or Redis
                # hung). Subscribe again on a new one; if Redis itself is silent, the
                # heartbeat marks it down, and repeating that here is noise.
                (log.warning if self._reachable else log.debug)(
                    "registry.pubsub_stalled",
                    instance=self.instance_id,
                    waited_s=self.socket_timeout_s,
                )
            except _REDIS_DOWN as exc:
                self._mark_down(exc)
            except Exception:
                # Keep listening whatever happened: end requests depend on it.
                log.exception("registry.subscriber_failed", instance=self.instance_id)
            finally:
                self._subscribed.clear()
                await self._disconnect(pubsub, "pubsub_close")
            await asyncio.sleep(delay)

    async def _listen(self, pubsub: Any, outages: int) -> None:
        """Deliver end requests until Redis is seen going away or the connection stalls.

        Subscribed (and so healthy) only once Redis confirms the subscription. Whenever
        the connection has been quiet for `heartbeat_s` it is pinged; a reply (or any
        other message) must arrive within `socket_timeout_s`, else `_SubscriptionStalled`.
        """
        loop = asyncio.get_running_loop()
        heard = loop.time()
        pinged: float | None = None
        # Leave when another call saw Redis go away: this connection may be half-open
        # and would never deliver again.
        while self._outages == outages:
            now = loop.time()
            if pinged is None and now - heard >= self.heartbeat_s:
                async with self._deadline():
                    await pubsub.ping()
                pinged = now
            if pinged is not None:
                left = pinged + self.socket_timeout_s - now
                if left <= 0:
                    raise _SubscriptionStalled
                wait = min(self.retry_s, left)
            else:
                wait = min(self.retry_s, heard + self.heartbeat_s - now)
            message = await pubsub.get_message(timeout=max(wait, 0.0))
            if message is None:
                continue
            heard, pinged = loop.time(), None
            kind = message.get("type")
            if kind == "subscribe":
                self._subscribed.set()
            elif kind == "message":
                self._on_end_message(message.get("data"))

    def _on_end_message(self, data: object) -> None:
        payload: Any = None
        try:
            if isinstance(data, str | bytes):
                payload = json.loads(data)
            if "ack" in payload:
                self._on_ack(str(payload["ack"]), bool(payload.get("found")))
                return
            session_id = str(payload["session_id"])
            reason = str(payload.get("reason") or "ended by admin")
        except (ValueError, KeyError, TypeError):
            log.warning("registry.bad_end_message")
            return
        found = session_id in self._local
        if found:
            self._ends.dispatch(session_id, reason)
        else:
            # Already gone (or never here); the sender's view was stale.
            log.debug("registry.end_unknown_session", session_id=session_id)
        reply_to, nonce = payload.get("reply_to"), payload.get("nonce")
        if isinstance(reply_to, str) and isinstance(nonce, str):
            task = asyncio.get_running_loop().create_task(
                self._acknowledge(reply_to, nonce, found), name=f"registry-ack-{nonce}"
            )
            self._replies.add(task)
            task.add_done_callback(self._replies.discard)

    def _on_ack(self, nonce: str, found: bool) -> None:
        acked = self._acks.get(nonce)
        if acked is not None and not acked.done():
            acked.set_result(found)

    async def _acknowledge(self, reply_to: str, nonce: str, found: bool) -> None:
        """Tell the sender of an end request whether this instance had the session."""
        redis = self._live_client()
        if redis is None:
            return
        message = json.dumps({"ack": nonce, "found": found})
        async with self._fail_open("end_ack"):
            await redis.publish(self._channel(reply_to), message)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
