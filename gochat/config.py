"""Settings: one frozen model, read once from the environment (and CLI flags) at start."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


def default_node_id() -> str:
    """Host name plus pid: unique per process, readable in the console."""
    return f"{socket.gethostname()}-{os.getpid()}"


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


@dataclass(frozen=True)
class Option:
    """One setting as the environment and the CLI know it."""

    field: str
    env: str
    help: str
    flag: str


# The contract's configuration table, in its order; CLI flags mirror these names.
OPTIONS: tuple[Option, ...] = (
    Option("host", "HOST", "listen address", "--host"),
    Option("port", "PORT", "listen port (a PaaS sets PORT)", "--port"),
    Option(
        "redis_url",
        "REDIS_URL",
        "redis:// or rediss:// URL: many nodes through Redis; unset: in memory, one process",
        "--redis-url",
    ),
    Option(
        "workers",
        "GOCHAT_WORKERS",
        "processes serving PORT on this machine, each a node (needs REDIS_URL over 1); "
        "auto = one per core",
        "--workers",
    ),
    Option(
        "admin_token",
        "GOCHAT_ADMIN_TOKEN",
        "operations console secret; unset: a random one is made and logged once",
        "--admin-token",
    ),
    Option(
        "api_key",
        "GOCHAT_API_KEY",
        "secret of the server HTTP API under /api (Authorization: Bearer); unset: the API is "
        "off and every /api path answers 404",
        "--api-key",
    ),
    Option(
        "allowed_origins",
        "GOCHAT_ALLOWED_ORIGINS",
        "comma-separated extra origins allowed to open /ws",
        "--allowed-origins",
    ),
    Option("history", "GOCHAT_HISTORY", "chat messages kept per room", "--history"),
    Option(
        "history_budget",
        "GOCHAT_HISTORY_BUDGET",
        "MiB of chat history kept in memory across all rooms (in memory, not Redis): over "
        "it the least recently active rooms' history is dropped first; 0 = no limit",
        "--history-budget",
    ),
    Option(
        "history_ttl",
        "GOCHAT_HISTORY_TTL",
        "seconds a room's history stream lives in Redis after its last message; 0 = forever",
        "--history-ttl",
    ),
    Option("node_id", "GOCHAT_NODE_ID", "this node's name (default: host name + pid)", "--node-id"),
    Option("max_text", "GOCHAT_MAX_TEXT", "longest chat text in characters", "--max-text"),
    Option("max_frame", "GOCHAT_MAX_FRAME", "largest client frame in bytes", "--max-frame"),
    Option("max_rooms", "GOCHAT_MAX_ROOMS", "rooms one connection may join", "--max-rooms"),
    Option(
        "send_buffer",
        "GOCHAT_SEND_BUFFER",
        "outbound messages buffered per connection before close 1013 (counted in bytes: "
        "this many times 4 KiB)",
        "--send-buffer",
    ),
    Option(
        "rate",
        "GOCHAT_RATE",
        "frames per second per connection (burst twice that); 0 = no limit",
        "--rate",
    ),
    Option(
        "max_conn_per_ip",
        "GOCHAT_MAX_CONN_PER_IP",
        "connections per client address (429 over it); 0 = no limit",
        "--max-conn-per-ip",
    ),
    Option("heartbeat", "GOCHAT_HEARTBEAT", "seconds between WebSocket pings", "--heartbeat"),
    Option(
        "presence_ttl",
        "GOCHAT_PRESENCE_TTL",
        "seconds after which a silent node's members are dropped from presence",
        "--presence-ttl",
    ),
    Option(
        "auth_secret",
        "GOCHAT_AUTH_SECRET",
        "HS256 secret; when set, /ws needs a JWT in ?token=",
        "--auth-secret",
    ),
    Option("key_prefix", "GOCHAT_PREFIX", "prefix of every Redis key and channel", "--prefix"),
    Option(
        "trust_proxy",
        "GOCHAT_TRUST_PROXY",
        "take the client address from X-Forwarded-For (only behind a router that sets it)",
        "--trust-proxy",
    ),
    Option(
        "max_connections",
        "GOCHAT_MAX_CONNECTIONS",
        "connections this node accepts (503 over it); 0 = no limit",
        "--max-connections",
    ),
    Option(
        "backlog",
        "GOCHAT_BACKLOG",
        "connections the kernel may queue for this process to accept (the listen backlog; "
        "the kernel caps it at net.core.somaxconn): what a reconnect storm needs",
        "--backlog",
    ),
    Option(
        "shutdown_grace",
        "GOCHAT_SHUTDOWN_GRACE",
        "seconds the whole shutdown may take (keep it below the PaaS's kill timeout)",
        "--shutdown-grace",
    ),
    Option(
        "shutdown_batch",
        "GOCHAT_SHUTDOWN_BATCH",
        "clients closed with 1001 at a time on shutdown (batches spread over half the grace)",
        "--shutdown-batch",
    ),
    Option(
        "handshake_timeout",
        "GOCHAT_HANDSHAKE_TIMEOUT",
        "seconds for a TCP connection to send its HTTP request, and for a new WebSocket to "
        "send its first frame (close 1008); also the keep-alive idle timeout; 0 = off",
        "--handshake-timeout",
    ),
    Option(
        "write_timeout",
        "GOCHAT_WRITE_TIMEOUT",
        "seconds a connection's unsent bytes may stay unsent before close 1013; 0 = off",
        "--write-timeout",
    ),
    Option(
        "fragment_timeout",
        "GOCHAT_FRAGMENT_TIMEOUT",
        "seconds a fragmented client message may take from its first fragment to its last "
        "before close 1008",
        "--fragment-timeout",
    ),
    Option("log_level", "GOCHAT_LOG_LEVEL", "logging level", "--log-level"),
    Option(
        "event_loop",
        "GOCHAT_EVENT_LOOP",
        "auto (uvloop where installed), uvloop or asyncio",
        "--event-loop",
    ),
    Option(
        "fast_paths",
        "GOCHAT_FAST_PATHS",
        "1: take the shortcuts through aiohttp's insides that pass their start-up checks; "
        "0: public aiohttp API only (slower)",
        "--fast-paths",
    ),
)


class Settings(BaseModel):
    """Everything gochat reads from its environment, validated once."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    redis_url: str | None = None
    workers: int = Field(1, ge=1, le=1024)
    admin_token: str | None = None
    api_key: str | None = Field(None, repr=False)  # a secret: kept out of repr and logs
    allowed_origins: tuple[str, ...] = ()
    history: int = Field(100, ge=0, le=100_000)
    history_budget: int = Field(64, ge=0, le=1_048_576)
    history_ttl: int = Field(604_800, ge=0)
    node_id: str = Field(default_factory=default_node_id, min_length=1, max_length=64)
    max_text: int = Field(4096, ge=1)
    max_frame: int = Field(65536, ge=256)
    max_rooms: int = Field(32, ge=1)
    send_buffer: int = Field(256, ge=1)
    rate: float = Field(20, ge=0)
    max_conn_per_ip: int = Field(0, ge=0)
    heartbeat: float = Field(25, gt=0)
    presence_ttl: float = Field(15, gt=0)
    auth_secret: str | None = None
    key_prefix: str = "gochat:"
    trust_proxy: bool = False
    max_connections: int = Field(0, ge=0)
    shutdown_grace: float = Field(5, ge=0)
    shutdown_batch: int = Field(500, ge=1)
    backlog: int = Field(4096, ge=1, le=1_048_576)
    handshake_timeout: float = Field(10, ge=0)
    write_timeout: float = Field(30, ge=0)
    fragment_timeout: float = Field(10, gt=0, le=10)
    log_level: str = "INFO"
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    fast_paths: bool = True

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(o.strip().rstrip("/") for o in value.split(",") if o.strip())
        return value

    @field_validator("workers", mode="before")
    @classmethod
    def _auto_workers(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return machine_cores()
        return value

    @field_validator("redis_url", "admin_token", "api_key", "auth_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")
        return value

    @property
    def send_buffer_bytes(self) -> int:
        """The slow-consumer limit in bytes: GOCHAT_SEND_BUFFER messages of up to 4 KiB."""
        return self.send_buffer * 4096

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read the contract's variables from `environ` (default os.environ); overrides win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for opt in OPTIONS:
            if opt.env in env:
                values[opt.field] = env[opt.env]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)
