"""Test settings: only what tests need to differ.

Each test session gets its own scratch directory (filesystem broker, file cache, SQLite
test database) and its own Celery queue name, exported to the environment so that the
real worker processes the end-to-end tests start use the same ones.
"""

import os
import tempfile

os.environ.setdefault("DEBUG", "0")
os.environ.setdefault("SECRET_KEY", "test-secret-key-that-is-long-enough-for-the-check-0123456789")
os.environ.setdefault("VAR_DIR", tempfile.mkdtemp(prefix="acp-test-"))
os.environ.setdefault("CELERY_QUEUE", f"acp-test-{os.getpid()}")
# Fast heartbeats so "is a worker up / down" answers within seconds in tests.
os.environ.setdefault("WORKER_HEARTBEAT_SECONDS", "1")

from console.settings import *  # noqa: F403
from console.settings import DATABASES, VAR_DIR

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
WHITENOISE_AUTOREFRESH = True

if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # A file, not :memory:, so worker processes started by the tests see the same data.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
