"""Django settings for Loomview.

Everything is read from environment variables with safe local defaults, so
`make run` works with no configuration at all. See README.md for the table of
variables.
"""

import contextlib
import os
import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from dashboard.env import envbool, envint, envlist, envstr
from dashboard.middleware import CONTENT_SECURITY_POLICY
from telemetry import redact
from tracing.exporters import EXPORTERS_ENV, load_exporters
from tracing.pricing import PRICES_ENV, load_prices

BASE_DIR = Path(__file__).resolve().parent.parent
LOOMVIEW_DATA_DIR = Path(envstr("LOOMVIEW_DATA_DIR", str(BASE_DIR / ".data"))).resolve()


def _load_or_create_secret_key(data_dir: Path) -> str:
    """Return the key stored in data_dir/secret-key, creating it once (mode 0600).

    Several processes (daphne, management commands) may start at the same time,
    so the file is written under a temporary name and hard-linked into place:
    the link either wins or finds a complete file from another process.
    """
    path = data_dir / "secret-key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = data_dir / f".secret-key.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(50))
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    key = path.read_text().strip()
    if not key:
        raise ImproperlyConfigured(f"{path} is empty; delete it to generate a new secret key")
    return key


SECRET_KEY = envstr("DJANGO_SECRET_KEY", "") or _load_or_create_secret_key(LOOMVIEW_DATA_DIR)
DEBUG = envbool("LOOMVIEW_DEBUG", False)
ALLOWED_HOSTS = envlist("LOOMVIEW_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = envlist("LOOMVIEW_CSRF_TRUSTED_ORIGINS", [])

# Daphne serves the app itself and, without a reverse proxy in front, static
# files too; turn this off when something else serves STATIC_ROOT.
LOOMVIEW_SERVE_STATIC = envbool("LOOMVIEW_SERVE_STATIC", True)
LOOMVIEW_TEMPORAL_UI_URL = envstr("LOOMVIEW_TEMPORAL_UI_URL", "http://127.0.0.1:8233").rstrip("/")
# USD per million (input, output) tokens for the runs list's cost estimate.
LOOMVIEW_MODEL_PRICES = load_prices(envstr(PRICES_ENV, ""))
# Where "Start a run" sends the bundled workflows (the worker reads the same variable).
LOOMVIEW_TASK_QUEUE = envstr("LOOMVIEW_TASK_QUEUE", "loomview-agents")
# The OTLP receiver: the bearer token exporters must send (empty: none), and the
# largest body it accepts, checked on the wire and again after gunzip.
LOOMVIEW_OTLP_TOKEN = envstr("LOOMVIEW_OTLP_TOKEN", "")
LOOMVIEW_OTLP_MAX_BODY_BYTES = envint("LOOMVIEW_OTLP_MAX_BODY_BYTES", 16 * 1024 * 1024, minimum=1)
# Under daphne: a request body must arrive within this many seconds of its
# headers, or it is answered 408 (dashboard.http_guard).
LOOMVIEW_BODY_TIMEOUT_SECONDS = envint("LOOMVIEW_BODY_TIMEOUT_SECONDS", 30, minimum=1)
# Extra redaction patterns (JSON list of regular expressions), applied at ingest
# and export on top of telemetry.redact's own rules.
try:
    LOOMVIEW_REDACT_PATTERNS = redact.parse_patterns(envstr(redact.PATTERNS_ENV, ""))
except ValueError as exc:
    raise ImproperlyConfigured(str(exc)) from None
redact.set_extra_patterns(LOOMVIEW_REDACT_PATTERNS)
# OTLP collectors the forwarder sends every stored span to (JSON list).
LOOMVIEW_EXPORTERS = load_exporters(envstr(EXPORTERS_ENV, ""))
# How long a forwarder holds a collector before another process may take it over.
# The overview's rollups, kept on ingest (tracing/rollups.py); off only to
# measure ingest without them (rebuild_rollups counts everything again).
LOOMVIEW_ROLLUPS = envbool("LOOMVIEW_ROLLUPS", True)
# Bearer token for /metrics (Prometheus); without it, /metrics wants a session
# or an API token like /api/.
LOOMVIEW_METRICS_TOKEN = envstr("LOOMVIEW_METRICS_TOKEN", "")
LOOMVIEW_FORWARDER_LEASE_SECONDS = envint("LOOMVIEW_FORWARDER_LEASE_SECONDS", 15, minimum=2)
# Retention (tracing/retention.py), in days; 0 keeps everything. Spans, run
# summaries, archived histories, rollups and finished exports go with the first,
# the audit log with the second (usually longer).
LOOMVIEW_RETENTION_DAYS = envint("LOOMVIEW_RETENTION_DAYS", 0, minimum=0)
LOOMVIEW_AUDIT_RETENTION_DAYS = envint("LOOMVIEW_AUDIT_RETENTION_DAYS", 0, minimum=0)
# How often the background worker prunes and sweeps closed runs into the archive.
LOOMVIEW_RETENTION_INTERVAL_SECONDS = envint("LOOMVIEW_RETENTION_INTERVAL_SECONDS", 300, minimum=1)
LOOMVIEW_ARCHIVE_INTERVAL_SECONDS = envint("LOOMVIEW_ARCHIVE_INTERVAL_SECONDS", 30, minimum=1)
# Keep closed runs' histories in the store so they outlive Temporal's retention.
LOOMVIEW_ARCHIVE_HISTORIES = envbool("LOOMVIEW_ARCHIVE_HISTORIES", True)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_htmx",
    "template_partials",
    "dashboard",
    "tracing",
    "axes",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "dashboard.middleware.SecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into its answer.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "dashboard.urls"
ASGI_APPLICATION = "dashboard.asgi.application"

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
                "dashboard.context_processors.loomview",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{LOOMVIEW_DATA_DIR / 'loomview.sqlite3'}",
        # Keep connections: opening one (and its PRAGMAs) per OTLP request showed
        # up in the ingest profile.
        conn_max_age=600,
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The dashboard writes from several threads (daphne's sync pool) at once;
    # WAL and a busy timeout keep SQLite from failing with "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            # A larger WAL between checkpoints: ingest writes megabytes a second,
            # and each checkpoint costs an fsync.
            "init_command": (
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; "
                "PRAGMA wal_autocheckpoint=8192; PRAGMA cache_size=-65536;"
            ),
        }
    )
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Live updates reach only the websockets of the process that stored a span with
# the in-memory layer; with Redis they reach every dashboard process.
LOOMVIEW_REDIS_URL = envstr("LOOMVIEW_REDIS_URL", "")
if LOOMVIEW_REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [LOOMVIEW_REDIS_URL], "prefix": "loomview"},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Login throttling (django-axes): after LOOMVIEW_LOGIN_FAILURE_LIMIT failed
# sign-ins from one address, or for one username, further attempts from that
# address or for that username are refused with 429 for
# LOOMVIEW_LOGIN_LOCKOUT_MINUTES. A successful sign-in clears the count.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = envint("LOOMVIEW_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=envint("LOOMVIEW_LOGIN_LOCKOUT_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = ["ip_address", "username"]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "dashboard/login_locked.html"
AXES_HTTP_RESPONSE_CODE = 429
# Behind N reverse proxies, LOOMVIEW_TRUSTED_PROXY_COUNT=N makes the client's
# address the one the outermost proxy put in X-Forwarded-For (default 0: the
# socket's own address), so one address's lockout does not lock everyone out.
LOOMVIEW_TRUSTED_PROXY_COUNT = envint("LOOMVIEW_TRUSTED_PROXY_COUNT", 0, minimum=0)
AXES_CLIENT_IP_CALLABLE = "dashboard.auth.client_address"

# The Content-Security-Policy every response carries (dashboard.middleware).
LOOMVIEW_CSP = CONTENT_SECURITY_POLICY

LOGIN_URL = "dash-login"
LOGIN_REDIRECT_URL = "dash-runs"
LOGOUT_REDIRECT_URL = "dash-login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = LOOMVIEW_DATA_DIR / "staticfiles"

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = envbool("LOOMVIEW_SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": envstr("LOOMVIEW_LOG_LEVEL", "INFO").upper()},
}
