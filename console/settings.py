"""One env-driven settings module.

Every value comes from the environment through the small typed helpers below, which fail
loudly (ImproperlyConfigured, with what was wrong and how to fix it) instead of guessing.
Secrets may also come from a file: ``SECRET_KEY_FILE`` wins over ``SECRET_KEY``; with
neither set, the secret is the one ``make run`` wrote to ``$VAR_DIR/secret_key``.

Embedded default (nothing set): SQLite in ``var/db.sqlite3``, kombu's filesystem broker
in ``var/broker/`` and a file-based cache in ``var/cache/`` -- web and worker are still
separate processes and jobs still travel through the broker.
Production shape: ``DATABASE_URL`` (PostgreSQL) and ``REDIS_URL`` (broker, cache, switch
propagation).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlparse

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("VAR_DIR", BASE_DIR / "var"))


# --- typed env helpers ------------------------------------------------------------------


def envbool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean: use one of 1/0, true/false, yes/no.")


def envint(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer.") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below the minimum of {minimum}.")
    return value


def envsecret(name: str, default: str = "") -> str:
    """A secret from ``NAME_FILE`` (first line of that file) or ``NAME``."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={path!r} cannot be read: {exc}.") from None
    return os.environ.get(name, default)


def envlist(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def parse_database_url(url: str) -> dict:
    import dj_database_url

    parsed = urlparse(url)
    if parsed.scheme not in {"postgres", "postgresql", "pgsql", "sqlite"}:
        raise ImproperlyConfigured(
            f"DATABASE_URL has scheme {parsed.scheme!r}; expected "
            "postgres://USER:PASSWORD@HOST:PORT/NAME (or sqlite:////absolute/path)."
        )
    if parsed.scheme != "sqlite" and (not parsed.hostname or not parsed.path.strip("/")):
        raise ImproperlyConfigured(
            "DATABASE_URL is missing a host or a database name; expected "
            "postgres://USER:PASSWORD@HOST:PORT/NAME."
        )
    try:
        config = dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True)
    except ValueError as exc:
        raise ImproperlyConfigured(f"DATABASE_URL is malformed: {exc}") from None
    return config


def validate_redis_url(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in {"redis", "rediss"} or not parsed.hostname:
        raise ImproperlyConfigured(
            f"REDIS_URL={url!r} is malformed; expected redis://HOST:PORT/DB."
        )
    try:
        parsed.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError:
        raise ImproperlyConfigured(f"REDIS_URL={url!r} has an invalid port.") from None
    return url


# --- core -------------------------------------------------------------------------------

DEBUG = envbool("DEBUG", False)

_INSECURE_PREFIX = "django-insecure"
_SECRET_KEY_MIN_LENGTH = 32
_SECRET_KEY_HOWTO = (
    "SECRET_KEY (or SECRET_KEY_FILE) to a random string of at least 32 characters, e.g. "
    "`python -c 'import secrets; print(secrets.token_urlsafe(50))'`"
)


def _secret_key_is_weak(value: str) -> bool:
    return not value or value.startswith(_INSECURE_PREFIX) or len(value) < _SECRET_KEY_MIN_LENGTH


def _secret_key_from_var(path: Path) -> str:
    """The secret ``make run`` (scripts/run.sh) writes to ``$VAR_DIR/secret_key``, so that a
    management command in a new shell signs with the same key as the running server.

    No file: no key (the check below decides). A file that cannot be read or holds a weak
    key is refused whatever DEBUG says, naming the file: it is meant to be the key, and
    quietly signing with another would split sessions and tokens between processes."""
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise ImproperlyConfigured(
            f"SECRET_KEY: {path} exists but cannot be read ({exc}). Make it a file this user "
            f"can read, or delete it and `make run` writes a new one; or set {_SECRET_KEY_HOWTO}."
        ) from None
    if _secret_key_is_weak(value):
        what = "is empty" if not value else "does not hold a strong key"
        raise ImproperlyConfigured(
            f"SECRET_KEY: {path} {what} (at least 32 random characters, not django-insecure-). "
            f"Delete it and `make run` writes a new one; or set {_SECRET_KEY_HOWTO}."
        )
    return value


# SECRET_KEY_FILE, else SECRET_KEY, else (neither set) the file `make run` wrote in VAR_DIR.
_SECRET_KEY_VAR_FILE = VAR_DIR / "secret_key"
if os.environ.get("SECRET_KEY_FILE"):
    SECRET_KEY = envsecret("SECRET_KEY")
    _secret_problem = f"SECRET_KEY_FILE={os.environ['SECRET_KEY_FILE']!r} holds no strong key."
elif os.environ.get("SECRET_KEY"):
    SECRET_KEY = envsecret("SECRET_KEY")
    _secret_problem = "SECRET_KEY holds no strong key."
else:
    SECRET_KEY = _secret_key_from_var(_SECRET_KEY_VAR_FILE)
    _secret_problem = (
        f"neither SECRET_KEY nor SECRET_KEY_FILE is set, and there is no {_SECRET_KEY_VAR_FILE} "
        "(which `make run` writes and every command run from this checkout then reads)."
    )
if not DEBUG and _secret_key_is_weak(SECRET_KEY):
    raise ImproperlyConfigured(
        f"SECRET_KEY is missing or insecure while DEBUG is off: {_secret_problem} "
        f"Set {_SECRET_KEY_HOWTO}, or set DEBUG=1 for local development only."
    )
if not SECRET_KEY:
    SECRET_KEY = _INSECURE_PREFIX + "-debug-only-not-for-production"


# Downstream credentials of data-defined tools (integrations.crypto, docs/tools.md): Fernet
# keys, newest first. The first encrypts, every one decrypts (MultiFernet): put a new key in
# front, run `manage.py credentials_reencrypt`, then drop the old one. CREDENTIALS_KEYS
# (comma-separated) or CREDENTIALS_KEYS_FILE (one key per line); with neither, one key
# derived from SECRET_KEY, so the embedded default works with nothing set. Production sets
# its own: rotating SECRET_KEY then does not lock the stored credentials away.
def _fernet_keys(name: str) -> list[str]:
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={path!r} cannot be read: {exc}.") from None
        keys = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    else:
        keys = envlist(name, [])
    for number, key in enumerate(keys, 1):
        try:
            raw = base64.urlsafe_b64decode(key.encode())
        except (ValueError, binascii.Error):
            raw = b""
        if len(raw) != 32:  # never echo the key itself
            raise ImproperlyConfigured(
                f"{name}: key #{number} is not a Fernet key (32 url-safe base64-encoded bytes). "
                "Generate one with `python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'`."
            )
    return keys


CREDENTIALS_KEYS = _fernet_keys("CREDENTIALS_KEYS") or [
    base64.urlsafe_b64encode(
        hmac.digest(SECRET_KEY.encode(), b"integrations.credentials.v1", "sha256")
    ).decode()
]

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "ninja",  # serves the API docs' Swagger assets from static/, not a CDN
    "template_partials",
    "guardian",
    "pgtrigger",
    "console",
    "audit",
    "agents",
    "agents.knowledge",
    "support",  # the support toolkit: the demo customer system, above the runtime
    "approvals",
    "integrations",  # tools as data: HTTP and MCP tools, their credentials (docs/tools.md)
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "console.urls"
WSGI_APPLICATION = "console.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "console.context_processors.navigation",
            ],
        },
    }
]

# --- database ---------------------------------------------------------------------------

SQLITE_OPTIONS = {
    # Web and worker are separate processes: WAL lets readers run beside the single
    # writer, IMMEDIATE takes the write lock at BEGIN so two writers queue instead of
    # failing with "database is locked" mid-transaction.
    "transaction_mode": "IMMEDIATE",
    "timeout": 30,
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
}
DATABASE_URL = os.environ.get("DATABASE_URL", "").strip()
if DATABASE_URL:
    DATABASES = {"default": parse_database_url(DATABASE_URL)}
    if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        DATABASES["default"]["OPTIONS"] = dict(SQLITE_OPTIONS)
        DATABASES["default"]["CONN_MAX_AGE"] = 0
    else:
        # Django's PostgreSQL backend plus the audit log's commit barrier (its docstring)
        DATABASES["default"]["ENGINE"] = "console.db_postgresql"
        # Server-side prepared statements for the step loop's hot statements, which run
        # with server-side binding (console.db_postgresql.execute): psycopg prepares a
        # statement after it has run this many times on a connection. Django's own cursors
        # bind client-side and are never prepared. Django turns preparing off unless told
        # (for transaction-mode poolers): set DATABASE_PREPARE_THRESHOLD=0 behind one.
        _threshold = envint("DATABASE_PREPARE_THRESHOLD", 5, minimum=0)
        DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = _threshold or None
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "db.sqlite3",
            "OPTIONS": dict(SQLITE_OPTIONS),
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- broker, cache ----------------------------------------------------------------------

REDIS_URL = os.environ.get("REDIS_URL", "").strip()
if REDIS_URL:
    validate_redis_url(REDIS_URL)
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS: dict = {"visibility_timeout": 3600}
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "acp",
        }
    }
else:
    BROKER_DIR = VAR_DIR / "broker"
    for sub in ("queue", "processed", "control"):
        (BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
    }
    CACHES = {
        "default": {
            # A file cache is shared by the web and worker processes (locmem is not).
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }

# A separate queue name lets several deployments (or test sessions) share one Redis.
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_QUEUE", "celery")
CELERY_TASK_IGNORE_RESULT = True  # results live in the database, not a result backend
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ALWAYS_EAGER = False
CELERY_BEAT_SCHEDULE: dict = {}
# Keep database connections across tasks (console/celery.py says why); Celery's fix-up
# still closes them after this many tasks, and CONN_MAX_AGE after 60 seconds.
CELERY_DB_REUSE_MAX = 1000

# Worker liveness: every worker writes a heartbeat row; health and the console read it.
# Works the same on Redis and on the filesystem broker (which has no broadcast control).
WORKER_HEARTBEAT_SECONDS = envint("WORKER_HEARTBEAT_SECONDS", 5, minimum=1)
WORKER_STALE_AFTER = timedelta(seconds=3 * WORKER_HEARTBEAT_SECONDS + 2)

# --- auth -------------------------------------------------------------------------------

AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
ANONYMOUS_USER_NAME = None  # guardian: no anonymous user row; anonymous sees nothing
GUARDIAN_RAISE_403 = False
GUARDIAN_RENDER_403 = False
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # htmx reads the token from the page, not the cookie
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_SECURE = envbool("SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

# --- i18n, static -----------------------------------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
WHITENOISE_USE_FINDERS = True  # serve from static/ directly; collectstatic is optional
WHITENOISE_AUTOREFRESH = DEBUG

EMAIL_BACKEND = os.environ.get(
    "EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend"
)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "control-plane@localhost")

# --- logging: one line per event, with the trace id when there is one -------------------

LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "trace": {"()": "console.logging.TraceIdFilter"},
        "redact": {"()": "console.logging.RedactingFilter"},
    },
    "formatters": {
        "line": {
            "format": "%(asctime)s %(levelname)s %(name)s trace=%(trace_id)s %(message)s",
        }
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "line",
            "filters": ["trace", "redact"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- product settings -------------------------------------------------------------------

API_TOKEN_PREFIX = "acp"
DEMO_PASSWORD = os.environ.get("DEMO_PASSWORD", "")

# --- audit: signed checkpoints of the chain head (docs/audit.md) ------------------------
# The HMAC key must NOT live in the database: a database superuser who could rewrite and
# re-hash the whole chain must not also be able to forge the checkpoints. Without a key,
# checkpoints are disabled (the beat task logs a warning; the command says how to fix it).
AUDIT_CHECKPOINT_KEY = envsecret("AUDIT_CHECKPOINT_KEY")
if AUDIT_CHECKPOINT_KEY and len(AUDIT_CHECKPOINT_KEY) < 32:
    raise ImproperlyConfigured(
        "AUDIT_CHECKPOINT_KEY is shorter than 32 characters. Generate one with "
        "`python -c 'import secrets; print(secrets.token_urlsafe(48))'` and keep it out of "
        "the database (environment or AUDIT_CHECKPOINT_KEY_FILE)."
    )
AUDIT_CHECKPOINT_DIR = Path(os.environ.get("AUDIT_CHECKPOINT_DIR", VAR_DIR / "audit-checkpoints"))
AUDIT_CHECKPOINT_WEBHOOK = os.environ.get("AUDIT_CHECKPOINT_WEBHOOK", "").strip()
AUDIT_CHECKPOINT_EVERY_SECONDS = envint("AUDIT_CHECKPOINT_EVERY_SECONDS", 300, minimum=10)
CELERY_BEAT_SCHEDULE["audit-checkpoint"] = {
    "task": "audit.tasks.checkpoint_task",
    "schedule": float(AUDIT_CHECKPOINT_EVERY_SECONDS),
}
# PostgreSQL: staged audit rows are garbage once their transaction has committed (and
# been chained); they are deleted in bulk (audit.services.stage_sweep).
CELERY_BEAT_SCHEDULE["audit-stage-sweep"] = {
    "task": "audit.tasks.stage_sweep_task",
    "schedule": 60.0,
}

# --- agents runtime (issue 4) -----------------------------------------------------------
# How long a worker's lease on a run lasts without a step committing; after that the
# sweeper hands the run to another worker (fencing token: the late worker's writes fail).
AGENT_RUN_LEASE_SECONDS = envint("AGENT_RUN_LEASE_SECONDS", 60, minimum=1)
# A queued run not picked up after this long is re-enqueued by the sweeper (lost message).
AGENT_QUEUED_GRACE_SECONDS = envint("AGENT_QUEUED_GRACE_SECONDS", 30, minimum=1)
# Per-tenant daily model spend cap (USD) when the tenant has no TenantBudget row, and the
# amount reserved against it before each model call (settled to the actual cost after).


def _envdecimal(name: str, default: str):
    from decimal import Decimal, InvalidOperation

    raw = os.environ.get(name, "").strip() or default
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a decimal amount (e.g. 50 or 0.01).") from None
    if value < 0:
        raise ImproperlyConfigured(f"{name}={raw!r} must not be negative.")
    return value


AGENT_TENANT_DAILY_CAP_USD = _envdecimal("AGENT_TENANT_DAILY_CAP_USD", "50")
AGENT_MODEL_CALL_RESERVE_USD = _envdecimal("AGENT_MODEL_CALL_RESERVE_USD", "0.01")
CELERY_BEAT_SCHEDULE["agents-sweep-runs"] = {
    "task": "agents.tasks.sweep_runs_task",
    "schedule": float(envint("AGENT_SWEEP_SECONDS", 15, minimum=1)),
}
# --- end agents runtime -----------------------------------------------------------------

# --- models (LLM routes) and memory: agents.llm, agents.knowledge (docs/models.md) -------
# Routes: MODEL_ROUTES (JSON) and/or MODEL_ROUTE_<NAME>_BASE_URL / _MODEL / _API_KEY(_FILE) /
# _TIMEOUT / _PRICE_IN / _PRICE_OUT, read by agents.llm.config (keys never land in settings).
# Which routes an agent uses per step kind: MODEL_AGENT_ROUTES (JSON) or MODEL_DEFAULT_ROUTES.
# No route configured: the runtime uses the embedded scripted planner.
MODEL_ROUTES = os.environ.get("MODEL_ROUTES", "")
MODEL_AGENT_ROUTES = os.environ.get("MODEL_AGENT_ROUTES", "")
MODEL_DEFAULT_ROUTES = envlist("MODEL_DEFAULT_ROUTES", [])
MODEL_BREAKER = {
    "failures": envint("MODEL_BREAKER_FAILURES", 5, minimum=1),
    "window": float(envint("MODEL_BREAKER_WINDOW_SECONDS", 60, minimum=1)),
    "cooldown": float(envint("MODEL_BREAKER_COOLDOWN_SECONDS", 30, minimum=1)),
}
MODEL_TOTAL_DEADLINE = float(envint("MODEL_TOTAL_DEADLINE_SECONDS", 180, minimum=1))
MEMORY_CONVERSATION_TOKEN_BUDGET = envint("MEMORY_CONVERSATION_TOKEN_BUDGET", 3000, minimum=200)
MEMORY_CONVERSATION_KEEP_LAST = envint("MEMORY_CONVERSATION_KEEP_LAST", 4, minimum=1)
MEMORY_MAX_ITEMS_PER_AGENT = envint("MEMORY_MAX_ITEMS_PER_AGENT", 200, minimum=1)
CELERY_BEAT_SCHEDULE["memory-refresh"] = {
    "task": "knowledge.memory_refresh",
    "schedule": float(envint("MEMORY_REFRESH_SECONDS", 3600, minimum=60)),
}
# --- end models and memory ----------------------------------------------------------------

# --- approvals (issue 6): leases, SLA sweep, notifications (docs/approvals.md) ----------
# A reviewer's claim on a request lasts this long; after it, another reviewer may take it.
APPROVAL_LEASE_MINUTES = envint("APPROVAL_LEASE_MINUTES", 10, minimum=1)
# An item is flagged "near breach" once this share of its SLA has elapsed.
APPROVAL_NEAR_BREACH_PERCENT = envint("APPROVAL_NEAR_BREACH_PERCENT", 80, minimum=1)
if APPROVAL_NEAR_BREACH_PERCENT >= 100:
    raise ImproperlyConfigured("APPROVAL_NEAR_BREACH_PERCENT must be below 100 (e.g. 80).")
# Outgoing webhook for new high-risk requests, near-breach and breach: signed with HMAC
# (X-ACP-Signature: sha256=<hex of HMAC-SHA256(secret, timestamp + "." + body)>).
APPROVAL_WEBHOOK_URL = os.environ.get("APPROVAL_WEBHOOK_URL", "").strip()
APPROVAL_WEBHOOK_SECRET = envsecret("APPROVAL_WEBHOOK_SECRET")
if APPROVAL_WEBHOOK_URL and len(APPROVAL_WEBHOOK_SECRET) < 16:
    raise ImproperlyConfigured(
        "APPROVAL_WEBHOOK_URL is set but APPROVAL_WEBHOOK_SECRET (or _FILE) is missing or "
        "shorter than 16 characters; the receiver needs it to verify the signature."
    )
APPROVAL_WEBHOOK_ATTEMPTS = envint("APPROVAL_WEBHOOK_ATTEMPTS", 4, minimum=1)
APPROVAL_WEBHOOK_TIMEOUT_SECONDS = envint("APPROVAL_WEBHOOK_TIMEOUT_SECONDS", 5, minimum=1)
APPROVAL_WEBHOOK_BACKOFF_SECONDS = float(envint("APPROVAL_WEBHOOK_BACKOFF_MS", 500, minimum=0)) / 1000
# Links in notifications point here (the console's public URL).
CONSOLE_BASE_URL = os.environ.get("CONSOLE_BASE_URL", "http://127.0.0.1:8000").rstrip("/")
CELERY_BEAT_SCHEDULE["approvals-sla-sweep"] = {
    "task": "approvals.tasks.sla_sweep_task",
    "schedule": float(envint("APPROVAL_SWEEP_SECONDS", 30, minimum=1)),
}
# --- end approvals ------------------------------------------------------------------------

# --- kill switches and the operator console (issue 7, docs/switches.md) -----------------
# Switch propagation: a version key in Redis (default: REDIS_URL; embedded default: the
# shared file cache) invalidates each worker's copy of the engaged switches; the copy is
# also re-read at least every SWITCHES_CACHE_TTL_SECONDS in case a bump was missed. Write
# tools fail closed when this store cannot be reached within SWITCHES_REDIS_TIMEOUT_SECONDS.
SWITCHES_REDIS_URL = os.environ.get("SWITCHES_REDIS_URL", "").strip() or REDIS_URL
if SWITCHES_REDIS_URL:
    validate_redis_url(SWITCHES_REDIS_URL)


def _envfloat(name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number of seconds (e.g. 2 or 0.5).") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below the minimum of {minimum}.")
    return value


SWITCHES_CACHE_TTL_SECONDS = _envfloat("SWITCHES_CACHE_TTL_SECONDS", 2.0)
SWITCHES_REDIS_TIMEOUT_SECONDS = _envfloat("SWITCHES_REDIS_TIMEOUT_SECONDS", 0.25, minimum=0.01)
CELERY_BEAT_SCHEDULE["switches-expire"] = {
    "task": "agents.tasks.expire_switches_task",
    "schedule": float(envint("SWITCHES_EXPIRY_SWEEP_SECONDS", 5, minimum=1)),
}
# The dashboard and run pages poll every CONSOLE_POLL_SECONDS (htmx).
CONSOLE_POLL_SECONDS = envint("CONSOLE_POLL_SECONDS", 5, minimum=1)
# --- end kill switches and the operator console ------------------------------------------
