"""Service settings, from `PACELINE_*` environment variables (validated at start)."""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Scope = Literal["read", "write"]

#: A DNS name as a Host header carries it (ASCII: browsers send the xn-- form), lower case.
_NAME = re.compile(r"[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*")
#: The names a loopback address answers to, which no other site's page can be served
#: from: what `serve` on a loopback address with authentication off answers to.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def host_name(text: str) -> str | None:
    """`text` (a name or address, no port) as host names are compared: lower case, no
    trailing dot, an IPv6 address in brackets in its short form; None if it is neither a
    DNS name nor an IP address."""
    text = text.lower()
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if ":" in inner:
        try:
            return f"[{ipaddress.IPv6Address(inner).compressed}]"
        except ValueError:
            return None
    text = text.removesuffix(".")
    return text if len(text) <= 253 and _NAME.fullmatch(text) else None


def host_pattern(text: str) -> str | None:
    """An allowed-hosts pattern, normalised: `*` (any host), `*.example.org` (any name
    under example.org) or one name or address; None if it is none of these."""
    text = text.strip()
    if text == "*":
        return text
    if text.startswith("*."):
        name = host_name(text[2:])
        return None if name is None or name.startswith("[") else f"*.{name}"
    return host_name(text)


def is_loopback(host: str) -> bool:
    """Whether a bind address only accepts connections from this machine."""
    if host.lower().removesuffix(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name (resolved by the server), "" or 0.0.0.0: not only loopback


class Settings(BaseSettings):
    """Everything a deployment can tune. The defaults run the embedded mode: a SQLite
    file in the working directory, no authentication, no other server."""

    model_config = SettingsConfigDict(env_prefix="PACELINE_", extra="ignore")

    database_url: str = "sqlite:///./paceline.db"
    #: Migrate the schema on start. None = only for SQLite (the embedded default).
    auto_migrate: bool | None = None
    #: SQLite durability: FULL fsyncs every commit (an acknowledged report survives power
    #: loss); NORMAL in WAL mode survives process crashes but not power loss, and is faster.
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    #: Write an engine snapshot every this many events (loading replays at most this many).
    snapshot_every: int = Field(default=100, ge=1, le=1_000_000)
    snapshot_keep: int = Field(default=2, ge=1, le=100)
    #: Snapshots are written and read in chunks of at most this many bytes: the memory a
    #: snapshot needs beyond the state itself (docs/reliability.md, memory model).
    snapshot_chunk_bytes: int = Field(default=4 << 20, ge=4096, le=1 << 30)
    #: Delete events covered by a snapshot (the state stays exact; export loses history).
    prune_events: bool = False
    #: A run without heartbeat for this long is reported as stale. At most 10^9 s (about
    #: 31 years): a longer one (or `inf`) does not fit a `timedelta`, and every read of a
    #: run failed with 500 INTERNAL instead of the process refusing it at start.
    run_stale_after_s: float = Field(default=300.0, gt=0, le=1e9)
    #: Serve the API's description (/openapi.json, /docs, /redoc). It is public even with
    #: authentication on, by design: it holds no data, only what the source says, and
    #: Swagger UI cannot send a token to fetch it; false removes the three routes.
    api_docs: bool = True
    #: Bearer tokens: token -> scope. Empty = authentication off.
    api_tokens: dict[str, Scope] = Field(default_factory=dict)
    #: Largest accepted request body (after decompression).
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    #: Calls per second per bearer token (per client address when auth is off or the
    #: token is unknown) on REST's /v1 and gRPC's Paceline service together, a token
    #: bucket per process; None = no limit. Excess calls get RATE_LIMITED (429 /
    #: RESOURCE_EXHAUSTED) with a retry-after in whole seconds.
    rate_limit_per_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    #: Requests a client may send at once above the rate (the bucket size); None = the
    #: rate rounded up.
    rate_limit_burst: int | None = Field(default=None, ge=1)
    #: /readyz stays red this long after a write failed for a storage reason (disk full,
    #: database unreachable) unless a later write succeeds; 0 = only the ping decides.
    storage_failure_hold_s: float = Field(default=10.0, ge=0)
    #: Curricula whose engines stay in memory per process.
    engine_cache_size: int = Field(default=64, ge=1)
    #: Largest estimated state of one curriculum (bytes; see docs/reliability.md for
    #: the bytes per sample of each strategy): create refuses a bigger one with 422
    #: STATE_TOO_LARGE naming the estimate. 2 GiB holds 10^7 samples with any strategy.
    max_state_bytes: int = Field(default=2 * 1024**3, ge=1024**2)
    #: Most distributions one curriculum may have: what is read per distribution
    #: (state, explanations, history) costs about 0.1 ms each, so 10 000 keep a state
    #: read under a second, and a spec with 500 000 (accepted before this limit) held the
    #: process for a minute per read, slowing every other curriculum. 422 INVALID_SPEC.
    max_distributions: int = Field(default=10_000, ge=1)
    #: Estimated state bytes of the engines cached per process, all together: the least
    #: recently used are dropped beyond it (the most recent one is always kept).
    engine_cache_bytes: int = Field(default=4 * 1024**3, ge=1024**2)
    #: Bytes of the curriculum histories kept in memory per process, all together (their
    #: rows and any engine a replay needed): the least recently used are dropped beyond
    #: it, and a history whose rows alone would not fit is answered by reading its stored
    #: rows in order and keeping only those the response returns (app/history.py).
    history_cache_bytes: int = Field(default=256 * 1024**2, ge=1024**2)
    #: Distributions exported per curriculum on /metrics (bounded label sets).
    metrics_max_distributions: int = Field(default=64, ge=0)
    #: Redis shared by the replicas (`redis://host:6379/0`): head notifications, the
    #: idempotency cache and write leases. None = the database alone (correct, slower).
    #: Redis going away never fails a request (see app/coordination.py).
    redis_url: str | None = None
    #: Prefix of every Redis key and channel: one per database the replicas share.
    redis_prefix: str = Field(default="paceline:", min_length=1, max_length=100)
    #: How long an acknowledged idempotency key stays in the Redis cache (the log keeps
    #: it forever; this only spares a retry the curriculum lock).
    redis_idempotency_ttl_s: int = Field(default=3600, ge=1)
    #: Write lease TTL (renewed while held; a dead replica's lease expires after it);
    #: 0 = no leases, writers queue on the database row lock.
    redis_lease_ttl_s: float = Field(default=2.0, ge=0, le=60)
    #: Redis socket connect/read timeout: the most a Redis call can add to a request.
    redis_timeout_s: float = Field(default=0.5, gt=0, le=30)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    #: Serve the gRPC API on this port beside REST (same process); None = off.
    grpc_port: int | None = Field(default=None, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    #: Host names the HTTP API answers to (the Host header, any port): names, addresses,
    #: `*.example.org` for the names under it, `*` for any; as a JSON list or separated by
    #: commas. Others get 421 HOST_NOT_ALLOWED, which stops DNS rebinding: a page of
    #: `http://evil.example:8000` whose name is made to resolve to 127.0.0.1 is
    #: same-origin with the service for the browser, but its requests say
    #: `Host: evil.example:8000`. None = `serve` decides by its address (`serving_hosts`);
    #: the app factory alone, which does not know it, answers to any.
    allowed_hosts: Annotated[list[str] | None, NoDecode] = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("api_tokens")
    @classmethod
    def _usable_tokens(cls, value: dict[str, Scope]) -> dict[str, Scope]:
        """A token a request cannot send (empty, or with spaces or control characters,
        which `Authorization: Bearer <token>` cannot carry) would turn authentication on
        and lock every caller out: refused at start instead."""
        for number, token in enumerate(value, 1):
            if not token or any(c.isspace() or not c.isprintable() for c in token):
                # Named by position, never by value: this line goes to the log, and the
                # token is likely a real secret with a stray space or newline.
                raise ValueError(f"token {number} of {len(value)} ({len(token)} characters) "
                                 "cannot be sent in an Authorization header: use visible "
                                 "characters, no spaces")
        return value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _host_list(cls, value: object) -> object:
        """The variable is a JSON list or a comma-separated one (`[::1]` is not JSON;
        blanks between commas are skipped, so an empty variable names no host)."""
        if not isinstance(value, str):
            return value
        if value.lstrip().startswith("["):
            try:
                listed = json.loads(value)
            except ValueError:
                pass
            else:
                if isinstance(listed, list):
                    return listed
        return [part for part in value.split(",") if part.strip()]

    @field_validator("allowed_hosts")
    @classmethod
    def _usable_hosts(cls, value: list[str] | None) -> list[str] | None:
        """A pattern no Host header can match (a URL, a port, a typo'd wildcard) would
        lock out whoever it was meant for: refused at start, by value (a host name is no
        secret). An empty list would refuse every request."""
        if value is None:
            return None
        patterns: list[str] = []
        for text in value:
            pattern = host_pattern(text)
            if pattern is None:
                raise ValueError(f"{text.strip()!r} is not a host name, an IP address, "
                                 "'*.' and a name, or '*' (give no scheme, port or path)")
            if pattern not in patterns:
                patterns.append(pattern)
        if not patterns:
            raise ValueError("name at least one host, or '*' for any; leave it unset for "
                             "the default")
        return patterns

    @field_validator("database_url")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError("database_url must be a sqlite:// or postgresql+psycopg:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        """Checked here, not when `serve` first connects: `localhost:6379` stopped it with
        a ValueError that named no setting (and passed `migrate`, which uses no Redis)."""
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis_url must be a redis://, rediss:// or unix:// URL")
        return value

    def updated(self, **changes: object) -> Settings:
        """These settings with `changes`, checked as the environment's are (a command-line
        flag gets the same bounds as its variable; `model_copy` checks nothing)."""
        return type(self).model_validate({**self.model_dump(), **changes})

    def store_options(self) -> dict[str, object]:
        options: dict[str, object] = {"snapshot_keep": self.snapshot_keep,
                                      "snapshot_chunk_bytes": self.snapshot_chunk_bytes,
                                      "auto_migrate": self.migrate_on_start}
        if self.database_url.startswith("sqlite"):
            options["sqlite_synchronous"] = self.sqlite_synchronous
        return options

    @property
    def migrate_on_start(self) -> bool:
        if self.auto_migrate is not None:
            return self.auto_migrate
        return self.database_url.startswith("sqlite")

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_tokens)

    def serving_hosts(self) -> list[str]:
        """The host names `serve` answers to on `host`: the setting when given; else, on
        a loopback address with authentication off (`serve`'s own defaults), the
        loopback names only, as nothing else can reach it but a page that rebinds its
        own name to it; else any (a pod is probed and scraped by its IP, reached by its
        Service's or an ingress's name, which the service cannot know)."""
        if self.allowed_hosts is not None:
            return self.allowed_hosts
        if not is_loopback(self.host) or self.auth_enabled:
            return ["*"]
        bound = host_pattern(self.host)
        return list(dict.fromkeys([*LOOPBACK_HOSTS, *([bound] if bound else [])]))
