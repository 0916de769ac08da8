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
    the pub/sub channel an instance listens on for end requests.

Every write of a session (register, update, heartbeat) sets the key and the score together
in one Lua script, so both carry the same expiry. A heartbeat rewrites all of an
instance's sessions every ``heartbeat_s``; when an instance dies without closing, its
sessions stop being rewritten and vanish after ``ttl_s``.

Redis is not needed for the server to work: the registry keeps its own sessions in memory
and, while Redis is unreachable, admits new sessions against the cap counted locally (fail
open), answers ``list``/``get`` from them and reports ``healthy() == False``. The heartbeat
keeps probing; once Redis answers it rewrites every local session (re-creating keys lost
with a restarted Redis) and the subscriber subscribes again.

The keys of one script are derived from the prefix rather than all declared up front, so
this layout suits a single Redis (or a primary with replicas), not Redis Cluster.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs
import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from voicebridge.registry.base import (
    EndDispatcher,
    EndHandler,
    RegistryError,
    SessionRecord,
    default_instance_id,
)

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

# Any of these means "Redis is not answering": connection refused or reset, timeouts,
# DNS failures (OSError) and everything redis-py wraps them in.
_REDIS_DOWN = (RedisError, OSError)


def mask_url(url: str) -> str:
    """The URL with its password (in the userinfo or a ``password=`` query) replaced by
    ``***``, for logs and error messages."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, _, hostinfo = netloc.rpartition("@")
            user = userinfo.partition(":")[0]
            netloc = f"{user}:***@{hostinfo}"
        query = parts.query
        if "password" in query:
            query = urlencode(
                [
                    (k, "***" if k == "password" else v)
                    for k, v in parse_qsl(query, keep_blank_values=True)
                ]
            )
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        return "<unparsable redis url>"


def _encode(record: SessionRecord) -> str:
    # default=str: a metric that is not JSON-able must not take the session down.
    return json.dumps(record.as_dict(), separators=(",", ":"), default=str)


def _decode(raw: str | bytes | None) -> SessionRecord | None:
    if raw is None:
        return None
    try:
        return SessionRecord.from_dict(json.loads(raw))
    except (ValueError, KeyError, TypeError):
        log.warning("registry.bad_record")
        return None


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

    _redis: Redis | None = attrs.field(default=None, init=False)
    _local: dict[str, SessionRecord] = attrs.field(factory=dict, init=False)
    # Sessions removed locally whose Redis entries could not be deleted (Redis was down);
    # deleted by the first heartbeat that reaches Redis again.
    _orphans: set[str] = attrs.field(factory=set, init=False)
    _ends: EndDispatcher = attrs.field(init=False)
    _tasks: builtins.list[asyncio.Task[None]] = attrs.field(factory=list, init=False)
    _reachable: bool = attrs.field(default=False, init=False)
    _subscribed: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    # Bumped on every reachable -> unreachable transition, so the subscriber notices an
    # outage seen by other calls and drops a pub/sub connection that may be half-open.
    _outages: int = attrs.field(default=0, init=False)
    _outage_logged: bool = attrs.field(default=False, init=False)
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

    # keys -------------------------------------------------------------------------------

    @property
    def _zkey(self) -> str:
        return f"{self.prefix}sessions"

    def _skey(self, session_id: str) -> str:
        return f"{self.prefix}session:{session_id}"

    def _channel(self, instance_id: str) -> str:
        return f"{self.prefix}instance:{instance_id}"

    @property
    def _ttl_ms(self) -> int:
        return max(1, round(self.ttl_s * 1000))

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
                # One immediate retry covers a pooled connection that went stale while
                # Redis restarted; the default's exponential backoff would stall calls
                # for seconds while Redis is down, and the heartbeat retries anyway.
                retry=Retry(NoBackoff(), 1),
            )
        except ValueError:
            # from None: the original message may quote the URL, password included.
            raise RegistryError(f"invalid Redis URL {mask_url(self.url)}") from None
        self._register_script = self._redis.register_script(_REGISTER_LUA)
        self._touch_script = self._redis.register_script(_TOUCH_LUA)
        self._count_script = self._redis.register_script(_COUNT_LUA)
        try:
            await self._redis.ping()
        except _REDIS_DOWN as exc:
            self._mark_down(exc)
        else:
            self._reachable = True
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
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._ends.aclose()
        redis, self._redis = self._redis, None
        gone = set(self._local) | self._orphans
        reachable, self._reachable = self._reachable, False
        self._local.clear()
        self._orphans.clear()
        if redis is None:
            return
        try:
            # While Redis is unreachable, shutting down must not wait on it: the entries
            # expire within ttl_s anyway.
            if gone and reachable:
                await self._delete(redis, gone)
        except _REDIS_DOWN as exc:
            log.warning("registry.close_cleanup_failed", error=_describe(exc), sessions=len(gone))
        finally:
            await redis.aclose()
        log.info(
            "registry.closed", instance=self.instance_id, removed=len(gone) if reachable else 0
        )

    def set_end_handler(self, handler: EndHandler) -> None:
        """Install the coroutine that ends a session held by this instance."""
        self._ends.handler = handler

    def healthy(self) -> bool:
        """Redis answers and this instance is subscribed to its end-request channel."""
        return self._reachable and self._subscribed.is_set()

    # sessions ---------------------------------------------------------------------------

    async def register(self, record: SessionRecord, *, max_sessions: int) -> bool:
        """Admit a session unless `max_sessions` (> 0) are live across all instances.

        While Redis is unreachable, only this instance's sessions count against the cap.
        """
        redis = self._live_client()
        if redis is not None:
            try:
                admitted = await self._register_script(
                    keys=[self._zkey, self._skey(record.session_id)],
                    args=[record.session_id, _encode(record), self._ttl_ms, max_sessions],
                    client=redis,
                )
            except _REDIS_DOWN as exc:
                self._mark_down(exc)
            else:
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
            return
        try:
            await self._touch(redis, [record])
            if session_id not in self._local:
                # Unregistered while the write was in flight: do not leave it behind.
                await self._delete(redis, [session_id])
        except _REDIS_DOWN as exc:
            self._mark_down(exc)
            if session_id not in self._local:
                self._orphans.add(session_id)

    async def unregister(self, session_id: str) -> None:
        """Remove a session; never raises for an unreachable Redis."""
        self._local.pop(session_id, None)
        redis = self._live_client()
        if redis is None:
            if self._redis is not None:  # started, Redis unreachable: clean up later
                self._orphans.add(session_id)
            return
        try:
            await self._delete(redis, [session_id])
        except _REDIS_DOWN as exc:
            self._mark_down(exc)
            self._orphans.add(session_id)

    async def list(self) -> builtins.list[SessionRecord]:
        """Every live session on every instance, oldest first; only this instance's while
        Redis is unreachable."""
        found: dict[str, SessionRecord] = {}
        redis = self._live_client()
        if redis is not None:
            try:
                ids = await redis.zrange(self._zkey, 0, -1)
                for start in range(0, len(ids), _MGET_BATCH):
                    chunk = ids[start : start + _MGET_BATCH]
                    raws = await redis.mget([self._skey(str(i)) for i in chunk])
                    for raw in raws:
                        record = _decode(raw)
                        if record is not None:
                            found[record.session_id] = record
            except _REDIS_DOWN as exc:
                self._mark_down(exc)
        # The local copy of this instance's sessions is the freshest, and covers sessions
        # admitted during an outage that the heartbeat has not rewritten yet.
        found.update(self._local)
        return sorted(found.values(), key=lambda r: r.started_at)

    async def get(self, session_id: str) -> SessionRecord | None:
        """One session from any instance, or None."""
        local = self._local.get(session_id)
        redis = self._live_client()
        if local is not None or redis is None:
            return local
        try:
            return _decode(await redis.get(self._skey(session_id)))
        except _REDIS_DOWN as exc:
            self._mark_down(exc)
            return None

    async def count(self) -> int:
        """Live sessions on every instance (this instance's alone while Redis is down)."""
        redis = self._live_client()
        if redis is not None:
            try:
                return int(await self._count_script(keys=[self._zkey], args=[], client=redis))
            except _REDIS_DOWN as exc:
                self._mark_down(exc)
        return len(self._local)

    async def request_end(self, session_id: str, reason: str = "ended by admin") -> bool:
        """End a session wherever it runs.

        A local session's end handler is scheduled here; any other session's holder gets
        the request on its channel and schedules its own handler. Returns once the request
        is delivered, not once the session has ended. False when the session is unknown,
        or when its holder is not listening (it died, and its entries are expiring).
        """
        if session_id in self._local:
            self._ends.dispatch(session_id, reason)
            return True
        redis = self._live_client()
        if redis is None:
            return False
        try:
            record = _decode(await redis.get(self._skey(session_id)))
            if record is None or record.instance == self.instance_id:
                return False
            message = json.dumps({"session_id": session_id, "reason": reason})
            receivers = int(await redis.publish(self._channel(record.instance), message))
        except _REDIS_DOWN as exc:
            self._mark_down(exc)
            return False
        if receivers == 0:
            log.warning("registry.end_undelivered", session_id=session_id, instance=record.instance)
            return False
        return True

    # internals --------------------------------------------------------------------------

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
                error=_describe(exc),
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

    async def _heartbeat(self, redis: Redis) -> None:
        snapshot = builtins.list(self._local.values())
        try:
            if not self._reachable:
                await redis.ping()
            await self._touch(redis, snapshot)
            # Sessions unregistered while the rewrite ran, and those removed during an
            # outage, must not outlive their sessions.
            stale = {r.session_id for r in snapshot if r.session_id not in self._local}
            stale |= self._orphans
            if stale:
                await self._delete(redis, stale)
                self._orphans -= stale
        except _REDIS_DOWN as exc:
            self._mark_down(exc)
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
            pubsub = redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                self._subscribed.set()
                # Leave when another call saw Redis go away: this connection may be
                # half-open and would never deliver again.
                while self._outages == outages:
                    message = await pubsub.get_message(timeout=self.retry_s)
                    if message is not None and message.get("type") == "message":
                        self._on_end_message(message.get("data"))
            except _REDIS_DOWN as exc:
                self._mark_down(exc)
            except Exception:
                # Keep listening whatever happened: end requests depend on it.
                log.exception("registry.subscriber_failed", instance=self.instance_id)
            finally:
                self._subscribed.clear()
                with contextlib.suppress(*_REDIS_DOWN):
                    # redis-py leaves PubSub.aclose unannotated.
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(self.retry_s)

    def _on_end_message(self, data: object) -> None:
        payload: Any = None
        try:
            if isinstance(data, str | bytes):
                payload = json.loads(data)
            session_id = str(payload["session_id"])
            reason = str(payload.get("reason") or "ended by admin")
        except (ValueError, KeyError, TypeError):
            log.warning("registry.bad_end_message")
            return
        if session_id not in self._local:
            # Already gone (or never here); the sender's view was stale.
            log.debug("registry.end_unknown_session", session_id=session_id)
            return
        self._ends.dispatch(session_id, reason)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
