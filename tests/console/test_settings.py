"""Settings refuse insecure or malformed production configuration, loudly."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_settings(**env):
    full = {k: v for k, v in os.environ.items()
            if k not in {"SECRET_KEY", "SECRET_KEY_FILE", "DEBUG", "DATABASE_URL", "REDIS_URL"}}
    full.update(env)
    full["DJANGO_SETTINGS_MODULE"] = "console.settings"
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); print('loaded')"],
        cwd=ROOT, env=full, capture_output=True, text=True, timeout=60,
    )


GOOD_SECRET = "k" * 20 + "-long-random-production-secret"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEBUG": "0"}, "SECRET_KEY is missing or insecure"),
        ({"DEBUG": "0", "SECRET_KEY": "short"}, "SECRET_KEY is missing or insecure"),
        ({"DEBUG": "0", "SECRET_KEY": "django-insecure-" + "x" * 40},
         "SECRET_KEY is missing or insecure"),
        ({"DEBUG": "maybe"}, "DEBUG='maybe' is not a boolean"),
        ({"SECRET_KEY": GOOD_SECRET, "DATABASE_URL": "mysql://x@y/z"}, "DATABASE_URL has scheme"),
        ({"SECRET_KEY": GOOD_SECRET, "DATABASE_URL": "postgres://"}, "missing a host"),
        ({"SECRET_KEY": GOOD_SECRET, "REDIS_URL": "http://localhost"}, "REDIS_URL="),
        ({"SECRET_KEY": GOOD_SECRET, "REDIS_URL": "redis://localhost:notaport/0"},
         "invalid port"),
        ({"SECRET_KEY_FILE": "/nonexistent/secret"}, "cannot be read"),
    ],
)
def test_settings_refuse_insecure_or_malformed_config(env, message):
    result = _load_settings(**env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert message in result.stderr


def test_settings_accept_a_good_production_config(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text(GOOD_SECRET + "\n")
    result = _load_settings(DEBUG="0", SECRET_KEY_FILE=str(secret),
                            DATABASE_URL="postgres://postgres@127.0.0.1:5432/acp",
                            REDIS_URL="redis://127.0.0.1:6379/0", VAR_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "loaded" in result.stdout


def test_debug_without_secret_is_allowed_for_local_development(tmp_path):
    result = _load_settings(DEBUG="1", VAR_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
