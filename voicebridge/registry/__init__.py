"""The pluggable session registry: which sessions are live, on which instance, with which
metrics; the session cap; ending a session from anywhere.

``SESSION_REGISTRY=memory`` (the default) keeps sessions in the process;
``SESSION_REGISTRY=redis://...`` shares them between processes and hosts through Redis
(needs the ``redis`` extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from voicebridge.registry.base import (
    EndHandler,
    RegistryError,
    SessionRecord,
    SessionRegistry,
    SessionSnapshot,
    SnapshotSource,
    default_instance_id,
)
from voicebridge.registry.memory import MemoryRegistry

if TYPE_CHECKING:
    from voicebridge.registry.redis_registry import RedisRegistry

__all__ = [
    "EndHandler",
    "MemoryRegistry",
    "RedisRegistry",
    "RegistryError",
    "SessionRecord",
    "SessionRegistry",
    "SessionSnapshot",
    "SnapshotSource",
    "create_registry",
    "default_instance_id",
]


def create_registry(
    url: str,
    *,
    instance_id: str | None = None,
    ttl_s: float = 15.0,
    heartbeat_s: float = 5.0,
    prefix: str = "vb:",
    max_orphans: int = 10_000,
) -> SessionRegistry:
    """The registry a ``SESSION_REGISTRY`` value names: ``memory`` or a ``redis://`` /
    ``rediss://`` URL. Not started: call ``start()`` (and ``close()``) around its use."""
    instance = instance_id or default_instance_id()
    spec = url.strip()
    if spec.lower() in ("", "memory"):
        return MemoryRegistry(instance_id=instance)
    if spec.lower().startswith(("redis://", "rediss://")):
        try:
            from voicebridge.registry.redis_registry import RedisRegistry
        except ImportError:
            raise RegistryError(
                "SESSION_REGISTRY is a Redis URL but the redis package is not installed; "
                "install it with: pip install 'voicebridge[redis]'"
            ) from None
        try:
            return RedisRegistry(
                spec,
                instance_id=instance,
                ttl_s=ttl_s,
                heartbeat_s=heartbeat_s,
                prefix=prefix,
                max_orphans=max_orphans,
            )
        except ValueError as exc:
            raise RegistryError(f"invalid registry settings: {exc}") from None
    # At most the scheme is echoed: the rest may hold a password.
    shown = f" (scheme {spec.partition('://')[0]!r})" if "://" in spec else ""
    raise RegistryError(
        f"unsupported SESSION_REGISTRY{shown}: use 'memory' or a redis:// / rediss:// URL"
    )


def __getattr__(name: str) -> object:
    # `from voicebridge.registry import RedisRegistry` works without importing redis
    # for every user of the package.
    if name == "RedisRegistry":
        from voicebridge.registry.redis_registry import RedisRegistry

        return RedisRegistry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
