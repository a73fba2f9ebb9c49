"""Settings refuse insecure or malformed production configuration, loudly.

Each case loads ``console.settings`` in a subprocess whose environment holds only PATH,
HOME and what the case sets, as a new shell would; VAR_DIR always points at the test's
own directory, so a developer's ``var/secret_key`` can never make a case pass or fail.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PRINT_KEY = (
    "import django; django.setup(); from django.conf import settings; "
    "print('loaded'); print('key=' + settings.SECRET_KEY)"
)


def _load_settings(var_dir: Path, **env) -> subprocess.CompletedProcess:
    clean = {"PATH": os.environ.get("PATH", os.defpath), "HOME": os.environ.get("HOME", "/"),
             "VAR_DIR": str(var_dir), "DJANGO_SETTINGS_MODULE": "console.settings"}
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-c", PRINT_KEY],
        cwd=ROOT, env=clean, capture_output=True, text=True, timeout=60,
    )


def _key(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    assert "loaded" in result.stdout
    return result.stdout.split("key=", 1)[1].strip()


GOOD_SECRET = "k" * 20 + "-long-random-production-secret"
VAR_SECRET = "v" * 20 + "-the-secret-make-run-wrote"
ENV_SECRET = "e" * 20 + "-the-secret-in-SECRET_KEY"
FILE_SECRET = "f" * 20 + "-the-secret-in-SECRET_KEY_FILE"


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
def test_settings_refuse_insecure_or_malformed_config(env, message, tmp_path):
    result = _load_settings(tmp_path, **env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert message in result.stderr


def test_settings_accept_a_good_production_config(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text(GOOD_SECRET + "\n")
    result = _load_settings(tmp_path, DEBUG="0", SECRET_KEY_FILE=str(secret),
                            DATABASE_URL="postgres://postgres@127.0.0.1:5432/acp",
                            REDIS_URL="redis://127.0.0.1:6379/0")
    assert _key(result) == GOOD_SECRET


def test_debug_without_secret_is_allowed_for_local_development(tmp_path):
    result = _load_settings(tmp_path, DEBUG="1")
    assert _key(result).startswith("django-insecure")


# --- the secret `make run` wrote, for commands typed in another shell (issue 16) --------


def test_without_secret_variables_settings_read_the_file_make_run_wrote(tmp_path):
    (tmp_path / "secret_key").write_text(VAR_SECRET + "\n")
    assert _key(_load_settings(tmp_path, DEBUG="0")) == VAR_SECRET
    # DEBUG on signs with it too, rather than with the debug-only key
    assert _key(_load_settings(tmp_path, DEBUG="1")) == VAR_SECRET


def test_var_dir_defaults_to_var_in_the_repository():
    """With VAR_DIR unset the file is <repo>/var/secret_key -- the one scripts/run.sh writes
    from the repository root. Read-only check: the developer's var/ is not touched."""
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": os.environ.get("HOME", "/"),
           "SECRET_KEY": GOOD_SECRET,  # so the file is not read
           # so settings create no var/db.sqlite3, var/broker/ in the repository
           "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/acp",
           "REDIS_URL": "redis://127.0.0.1:6379/0"}
    result = subprocess.run(
        [sys.executable, "-c", "from console import settings; print(settings.VAR_DIR)"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == ROOT / "var"
    assert "VAR_DIR:-$PWD/var" in (ROOT / "scripts" / "run.sh").read_text()


def test_secret_variables_win_over_the_file(tmp_path):
    (tmp_path / "secret_key").write_text(VAR_SECRET + "\n")
    secret_file = tmp_path / "from-env"
    secret_file.write_text(FILE_SECRET + "\n")
    assert _key(_load_settings(tmp_path, DEBUG="0", SECRET_KEY=ENV_SECRET)) == ENV_SECRET
    both = _load_settings(tmp_path, DEBUG="0", SECRET_KEY=ENV_SECRET, SECRET_KEY_FILE=str(secret_file))
    assert _key(both) == FILE_SECRET  # SECRET_KEY_FILE over SECRET_KEY, as before


def test_a_weak_secret_variable_is_refused_not_replaced_by_the_file(tmp_path):
    """An explicit secret that is bad is an error to fix, not a reason to quietly use
    another key."""
    (tmp_path / "secret_key").write_text(VAR_SECRET + "\n")
    empty = tmp_path / "empty"
    empty.write_text("")
    for env in ({"SECRET_KEY": "short"}, {"SECRET_KEY_FILE": str(empty)}):
        result = _load_settings(tmp_path, DEBUG="0", **env)
        assert result.returncode != 0
        assert "SECRET_KEY is missing or insecure" in result.stderr
        assert VAR_SECRET not in result.stdout
    assert f"SECRET_KEY_FILE={str(empty)!r} holds no strong key" in result.stderr


def test_no_secret_anywhere_with_debug_off_refuses_and_names_the_file(tmp_path):
    result = _load_settings(tmp_path, DEBUG="0")
    assert result.returncode != 0
    assert "ImproperlyConfigured: SECRET_KEY is missing or insecure while DEBUG is off" in result.stderr
    assert f"there is no {tmp_path / 'secret_key'}" in result.stderr
    assert "make run" in result.stderr
    result = _load_settings(tmp_path)  # DEBUG's default is off
    assert "SECRET_KEY is missing or insecure while DEBUG is off" in result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("\n", "is empty"),
        ("too-short\n", "does not hold a strong key"),
        ("django-insecure-" + "x" * 40, "does not hold a strong key"),
    ],
)
@pytest.mark.parametrize("debug", ["0", "1"])
def test_a_bad_secret_file_is_refused_naming_it_even_with_debug_on(tmp_path, content, message, debug):
    path = tmp_path / "secret_key"
    path.write_text(content)
    result = _load_settings(tmp_path, DEBUG=debug)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert f"SECRET_KEY: {path} {message}" in result.stderr
    assert "make run` writes a new one" in result.stderr


def test_an_unreadable_secret_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "secret_key"
    path.mkdir()  # unreadable as a file for every user, root included (chmod 000 is not)
    result = _load_settings(tmp_path, DEBUG="0")
    assert result.returncode != 0
    assert f"SECRET_KEY: {path} exists but cannot be read" in result.stderr


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_a_secret_file_without_read_permission_is_refused_naming_it(tmp_path):
    path = tmp_path / "secret_key"
    path.write_text(VAR_SECRET)
    path.chmod(0)
    try:
        result = _load_settings(tmp_path, DEBUG="0")
    finally:
        path.chmod(0o600)
    assert result.returncode != 0
    assert f"SECRET_KEY: {path} exists but cannot be read" in result.stderr
    assert "Permission denied" in result.stderr
