"""Every knob Ripple has, read once from `RIPPLE_*` environment variables and `.env`.

Each default says why it is what it is; limits mirror Convex's where Convex has one.
"""

from __future__ import annotations

import json
import sys
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["AuthProviderSetting", "Settings", "get_settings", "shared_path"]

_REPO_ROOT = Path(__file__).resolve().parent.parent
# Where `pip install .` (not editable) puts the seed project (schema.sql, functions/) and the dashboard: see
# [tool.setuptools.data-files].
_INSTALLED_SHARE = Path(sys.prefix) / "share" / "ripple"


def shared_path(name: str) -> Path:
    """A file shipped beside the package: in the source tree, else where a wheel installed it."""
    source = _REPO_ROOT / name
    return source if source.exists() or not (_INSTALLED_SHARE / name).exists() else _INSTALLED_SHARE / name


class AuthProviderSetting(BaseModel):
    """One provider as Convex's `auth.config.ts` writes it: `{"domain": issuer URL, "applicationID": audience}`."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)

    domain: str
    application_id: str = Field(alias="applicationID", min_length=1)

    @field_validator("domain")
    @classmethod
    def _domain_is_a_url(cls, domain: str) -> str:
        if not domain.startswith(("https://", "http://")):
            raise ValueError(
                f"auth provider domain {domain!r} is not an http(s) URL: write the issuer URL your provider puts in "
                "its tokens' 'iss', e.g. 'https://your-app.clerk.accounts.dev'"
            )
        return domain


_PROVIDER_LIST = TypeAdapter(list[AuthProviderSetting])


def read_auth_config(path: Path) -> list[AuthProviderSetting]:
    """The providers of an auth config file: `{"providers": [...]}`, as `auth.config.ts` exports, or a bare list.

    Raises:
        ValueError: the file cannot be read, is not JSON, or a provider is malformed (the message names the file).
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"Cannot read the auth config {str(path)!r} (RIPPLE_AUTH_CONFIG): {error}") from None
    providers = document.get("providers") if isinstance(document, dict) else document
    try:
        return _PROVIDER_LIST.validate_python(providers)
    except ValidationError as error:
        problems = "; ".join(f"providers{_location(e['loc'])}: {e['msg']}" for e in error.errors())
        raise ValueError(
            f'The auth config {str(path)!r} (RIPPLE_AUTH_CONFIG) must hold {{"providers": [{{"domain": ..., '
            f'"applicationID": ...}}]}}: {problems}'
        ) from None


def _location(loc: tuple[int | str, ...]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RIPPLE_", env_file=".env", extra="ignore")

    # Where data lives. No DATABASE_URL means an embedded PostgreSQL under `data_dir`.
    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    # The hub's direct connection (LISTEN, and its snapshot, which may take a session-level advisory lock), for
    # when DATABASE_URL goes through a transaction pooler such as PgBouncer (README: "Deploying behind a pooler").
    # Unset: the hub uses DATABASE_URL.
    listen_database_url: str | None = None
    # Whether DATABASE_URL goes through a transaction pooler: no prepared-statement cache, no session state. Unset:
    # found out at start (a LISTEN there that does not hear a NOTIFY within a second is behind one).
    database_pooled: bool | None = None
    data_dir: Path = Path(".ripple")
    # The project folder (schema.sql and functions/) `ripple serve` and `ripple codegen` serve when given no PATH.
    # Unset: the seed applications shipped with Ripple (`ripple dev`: the current folder).
    project: Path | None = None
    # The schema a server given no project applies (the test helpers'); a project's is its own schema.sql.
    schema_path: Path = shared_path("schema.sql")
    # A changed schema.sql that would drop or retype data, or add a NOT NULL existing rows may break, stops the start
    # (naming the statements); set for the one start that should run them (`ripple serve --allow-destructive-schema`).
    # A migration file (migrations/NNN_name.sql beside schema.sql) is the other way to approve a change.
    schema_allow_destructive: bool = False
    pool_min_size: int = 2
    pool_max_size: int = 10

    # `RIPPLE_LOG_FORMAT=json` writes one JSON object per log line (read by the CLI before settings load).
    log_format: str = "text"
    # `production` refuses to start without real auth (RIPPLE_JWT_SECRET or RIPPLE_JWKS); `development` (the
    # default) signs with a secret generated into `data_dir`, so `ripple token` works on a fresh checkout.
    env: Literal["development", "production"] = "development"
    host: str = "127.0.0.1"
    port: int = 8000
    # Where `ripple run/watch/logs` reach the server. Unset: this machine's server, http://RIPPLE_HOST:RIPPLE_PORT.
    url: str | None = None
    # Browsers on these origins may call the HTTP API (JSON list, e.g. '["https://app.example.com"]'). Any origin by
    # default, as Convex's deployments allow: the official clients send tokens in headers, not cookies, so no
    # credentials are allowed unless `cors_allow_credentials`, which needs explicit origins.
    cors_origins: list[str] = ["*"]
    cors_allow_credentials: bool = False
    # Extra app modules to serve beside the project's functions, as a JSON list of importable names (a package
    # with every module below it); loaded into the same registry, anew on each `ripple dev` reload.
    modules: list[str] = []
    # HTTP actions (a module's `http = HttpRouter()`, as Convex's http.ts) are served on the main port under this
    # prefix: route "/hook" is http://host:port/http/hook (Convex's cloud serves them on a separate .convex.site
    # origin; its local backend under /http/ too). No CORS headers are added there: handlers add their own.
    site_prefix: str = "/http"
    # Convex limits an HTTP action's request body to 20 MiB; a larger one is answered 413 before the handler runs.
    max_http_action_body_bytes: int = 20 * 1024 * 1024

    # Auth: HS256 secret for development, a JWKS file or URL for production.
    jwt_secret: str | None = None
    jwks: str | None = None
    jwt_issuer: str = "https://ripple.local"
    jwt_audience: str | None = None
    admin_key: str | None = None
    # Auth providers as Convex's auth.config.ts lists them, JSON: '[{"domain": "https://x.clerk.accounts.dev",
    # "applicationID": "convex"}]'. Keys come from each domain's OIDC discovery, refetched when a token names a
    # key not yet seen (at most every `auth_key_refetch_interval_s`, so made-up kids cannot flood the issuer).
    auth_providers: list[AuthProviderSetting] = []
    # A JSON file with more providers ({"providers": [...]}), read when settings load (so a bad one stops the start).
    auth_config: Path | None = None
    _auth_config_providers: list[AuthProviderSetting] = PrivateAttr(default_factory=list)
    auth_key_refetch_interval_s: float = 30.0
    auth_keys_cache_s: float = 300.0

    # Limits (Convex: 16384 documents scanned... we count documents read per function).
    max_documents_read: int = 16_384
    max_documents_written: int = 8_192
    max_result_bytes: int = 8 * 1024 * 1024
    max_message_bytes: int = 8 * 1024 * 1024
    query_timeout_s: float = 10.0
    mutation_timeout_s: float = 10.0
    action_timeout_s: float = 600.0
    # Serialization failures are retried with jittered backoff, like Convex's OCC retries.
    mutation_max_retries: int = 12
    mutation_retry_base_s: float = 0.002

    # WebSocket-level pings find dead peers; the protocol's own Ping (ping_interval_s) keeps clients content.
    ws_ping_interval_s: float = 30.0
    ws_ping_timeout_s: float = 60.0
    # Collect young objects after this many allocations (Python's default is 700): fewer pauses under fan-out.
    gc_gen0_threshold: int = 50_000
    # Sync: Convex pings after 15 s of silence; a socket whose unsent backlog exceeds this is closed.
    ping_interval_s: float = 15.0
    max_pending_transitions: int = 256
    slow_client_timeout_s: float = 30.0
    # Change log: keep this much history; a hub further behind re-runs everything.
    log_retention_s: float = 3600.0
    prune_interval_s: float = 60.0
    listen_reconnect_max_s: float = 5.0
    # The LISTEN connection answers `SELECT 1` this often, within the timeout, or is dropped and re-opened: a
    # connection whose packets vanish (no close) would otherwise hear nothing while all looks well.
    listen_probe_interval_s: float = 5.0
    listen_probe_timeout_s: float = 3.0
    # The hub's log read takes milliseconds (a settle waits up to 2 s); past this its connection is taken for lost.
    hub_read_timeout_s: float = 15.0
    # /health answers 503 when the oldest commit the hub has not processed is older than this.
    hub_stale_after_s: float = 30.0
    # How often the hub checks the database is reachable (and measures its lag), and how long a check may take.
    database_check_interval_s: float = 1.0
    database_check_timeout_s: float = 2.0
    # Sync sockets are closed (1013, "database unavailable; reconnecting") once the database has been unreachable
    # this long, so clients know their results may be stale and reconnect; they converge when it is back.
    outage_close_after_s: float = 3.0
    # The hub reads the log head at least this often even without a NOTIFY: a lost one delays an update this much.
    log_check_interval_s: float = 1.0
    # A re-run round that finds more changes than this invalidates whole tables instead.
    max_changes_per_round: int = 10_000
    # Scheduled functions run in this process; off: only other processes run them (this one still schedules).
    scheduler_enabled: bool = True
    # The scheduler looks for due jobs at least this often, besides its timer, this process's own schedules and
    # the hub's word that `_scheduled_functions` changed: a safety net for a lost NOTIFY or a hub behind.
    scheduler_check_interval_s: float = 1.0
    # A scheduled action whose server has not refreshed its claim for this long is marked failed (never re-run).
    scheduler_abandoned_after_s: float = 30.0
    # Cron jobs (crons.py modules) run in this process; off: only other processes start their ticks.
    crons_enabled: bool = True

    # File storage (`ctx.storage`): where the bytes live. `directory` (one file per id under `storage_dir`) or `s3`
    # (objects of `storage_s3_bucket` in any S3-compatible store). Unset: s3 when a bucket is set, else directory.
    storage_backend: Literal["directory", "s3"] | None = None
    # Files live under this directory (unset: `storage/` in `data_dir`). One machine only: several processes on
    # several hosts need the S3 backend.
    storage_dir: Path | None = None
    # The S3 backend. Credentials are the usual AWS ones (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an
    # instance role), read by boto3; the endpoint and region, unset, too (AWS_ENDPOINT_URL, AWS_DEFAULT_REGION).
    storage_s3_bucket: str | None = None
    # Object keys are this prefix + the storage id (e.g. "ripple/files/"), so one bucket can hold other things.
    storage_s3_prefix: str = ""
    # An S3-compatible store other than AWS: e.g. "http://minio.internal:9000".
    storage_s3_endpoint_url: str | None = None
    storage_s3_region: str | None = None
    # "path" for stores that do not serve buckets as subdomains (many MinIO setups); "auto" lets boto3 choose.
    storage_s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    # An upload past this many bytes is refused (413) and stores nothing (Convex allows 20 MiB per upload URL POST).
    storage_max_upload_bytes: int = 20 * 1024 * 1024
    # How long an upload URL from ctx.storage.generate_upload_url() works (once), as Convex's: one hour.
    storage_upload_url_ttl_s: float = 3600.0
    # The orphan sweep (server/storage_sweep.py) removes bytes no `_storage` row names (left by a crash between
    # writing a file and recording it, or between a delete and the bytes' removal) once they are this old: bytes
    # are written before their row, so younger ones may be an upload in flight. Keep it well above the longest
    # upload.
    storage_orphan_grace_s: float = Field(default=3600.0, gt=0)
    # How often each process tries the sweep (one process at a time sweeps: the others skip). 0 turns it off.
    storage_sweep_interval_s: float = Field(default=3600.0, ge=0)
    # The URL clients reach this server at, which file and upload URLs start with (behind a proxy, its public URL).
    # Unset: the URL `ripple serve` listens on (see `client_url`).
    public_url: str | None = None

    # Claude (the anthropic SDK reads these too).
    anthropic_api_key: str | None = Field(default=None, validation_alias="ANTHROPIC_API_KEY")
    anthropic_base_url: str | None = Field(default=None, validation_alias="ANTHROPIC_BASE_URL")
    anthropic_model: str = "claude-sonnet-4-5"
    anthropic_timeout_s: float = 120.0
    stream_patch_interval_s: float = 0.1

    def all_auth_providers(self) -> list[AuthProviderSetting]:
        """`auth_providers` and those of the `auth_config` file, in that order."""
        return [*self.auth_providers, *self._auth_config_providers]

    @model_validator(mode="after")
    def _read_auth_config(self) -> Settings:
        if self.auth_config is not None:
            self._auth_config_providers = read_auth_config(self.auth_config)
        return self

    @field_validator("site_prefix")
    @classmethod
    def _prefix_is_a_path(cls, prefix: str) -> str:
        if not prefix.startswith("/") or prefix.rstrip("/") in ("", "/api"):
            raise ValueError(
                f"RIPPLE_SITE_PREFIX {prefix!r} must be a path like '/http' that starts with '/' and is neither '/' "
                "nor '/api' (those serve the dashboard and the function API)"
            )
        return prefix.rstrip("/")

    def site_url(self) -> str:
        """Where the HTTP actions are: Convex's site URL (`.convex.site`) for this server."""
        return self.client_url().rstrip("/") + self.site_prefix

    def storage_path(self) -> Path:
        return self.storage_dir if self.storage_dir is not None else self.data_dir / "storage"

    def storage_kind(self) -> Literal["directory", "s3"]:
        """The file storage backend in use: `storage_backend`, else s3 when a bucket is set."""
        if self.storage_backend is not None:
            return self.storage_backend
        return "s3" if self.storage_s3_bucket else "directory"

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> Settings:
        if self.storage_backend == "s3" and not self.storage_s3_bucket:
            raise ValueError(
                "RIPPLE_STORAGE_BACKEND=s3 needs the bucket to keep files in: set RIPPLE_STORAGE_S3_BUCKET (and, for "
                "a store other than AWS, RIPPLE_STORAGE_S3_ENDPOINT_URL)"
            )
        return self

    def client_url(self) -> str:
        """The URL the CLI calls: RIPPLE_URL, else the one `ripple serve` with these settings listens on (a
        wildcard host is reached through loopback)."""
        if self.url:
            return self.url
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @model_validator(mode="after")
    def _credentials_need_origins(self) -> Settings:
        if self.cors_allow_credentials and "*" in self.cors_origins:
            raise ValueError(
                "RIPPLE_CORS_ALLOW_CREDENTIALS needs the allowed origins listed in RIPPLE_CORS_ORIGINS: with '*' any "
                "site could make credentialed calls on a visitor's behalf"
            )
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
