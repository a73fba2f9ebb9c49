"""The README's "Try the support scenario", pasted into a new terminal, works (issue 16).

A fresh copy of the repository's files (``.venv`` linked to the real one) gets an empty
``var/``; ``scripts/run.sh`` runs there as ``make run`` runs it, with the embedded
default whatever this test session uses. The README's shell blocks are then read from
README.md and run as written in ``bash -e`` with only PATH and HOME set -- no SECRET_KEY,
no SECRET_KEY_FILE, no activated venv -- and the scenario is followed through the API: the
run parks for approval, ``lead`` approves it, it succeeds with exactly one $40 credit.

Depends on statuses and the ledger only, never on the planner's wording or step count.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Try the support scenario"
README_ORIGIN = "127.0.0.1:8000"
TOKEN = re.compile(r"^acp_\S+$")


# --- reading the README -----------------------------------------------------------------


def readme_blocks() -> list[str]:
    """The ```sh blocks of the section, in order, exactly as a reader would paste them."""
    text = (ROOT / "README.md").read_text()
    assert SECTION in text, f"README.md has no {SECTION!r} section"
    section = text.split(SECTION, 1)[1]
    section = re.split(r"^## ", section, maxsplit=1, flags=re.MULTILINE)[0]
    return re.findall(r"^```sh\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)


def scenario_blocks() -> tuple[str, str]:
    blocks = readme_blocks()
    start = [b for b in blocks if "issue_token" in b and "curl" in b]
    cli = [b for b in blocks if "run_agent" in b]
    assert len(start) == 1 and len(cli) == 1, f"expected one start block and one run_agent block: {blocks}"
    return start[0], cli[0]


# --- a fresh copy and a clean environment -----------------------------------------------


def fresh_copy(dest: Path) -> Path:
    """The repository's files as they are in the working tree, var/ and the rest of what
    git ignores left out (so var/ does not exist yet). Files not yet added count, as they
    do for the rest of the suite: a new migration is part of what `make run` would run."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True)
    for name in listed.stdout.decode().split("\0"):
        source = ROOT / name
        if not name or not source.is_file():  # deleted in the working tree
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest / name, follow_symlinks=False)
    (dest / ".venv").symlink_to(ROOT / ".venv")
    assert not (dest / "var").exists()
    return dest


def clean_env(**extra: str) -> dict[str, str]:
    """What a new terminal has: PATH (without this venv's bin: nothing is activated) and
    HOME. None of this session's DATABASE_URL, REDIS_URL, SECRET_KEY or VAR_DIR."""
    venv_bin = (ROOT / ".venv" / "bin").resolve()
    path = os.pathsep.join(
        entry for entry in os.environ.get("PATH", os.defpath).split(os.pathsep)
        if entry and Path(entry).resolve() != venv_bin
    )
    return {"PATH": path, "HOME": os.environ.get("HOME", "/root"), **extra}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MakeRun:
    """``scripts/run.sh`` as ``make run`` starts it (the Makefile's ``install`` step is left
    out: it would pip-install the copy into the shared venv). Stopped like Ctrl-C."""

    def __init__(self, copy: Path, port: int, log: Path):
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log
        self.log = open(log, "wb")
        env = clean_env(LANG=os.environ.get("LANG", "C.UTF-8"), PORT=str(port))
        self.proc = subprocess.Popen(
            ["./scripts/run.sh"], cwd=copy, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def wait_healthy(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"scripts/run.sh exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.base}/api/v1/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                last = f"{exc.code} {exc.read()[:300]!r}"
            except (urllib.error.URLError, OSError) as exc:
                last = repr(exc)
            time.sleep(0.5)
        raise AssertionError(f"health not 200 after {timeout}s (last: {last}):\n{self.output()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's group
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        try:  # anything of the group still alive (gunicorn or celery children): SIGKILL
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        self.log.close()


def api(base: str, method: str, path: str, token: str, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{base}{path}", method=method, data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def wait_for_status(server: MakeRun, run_id: str, token: str, wanted: str, timeout: float = 45) -> dict:
    deadline = time.monotonic() + timeout
    run: dict = {}
    while time.monotonic() < deadline:
        code, run = api(server.base, "GET", f"/api/v1/runs/{run_id}", token)
        assert code == 200, run
        if run["status"] == wanted:
            return run
        if run["status"] not in {"queued", "running", "waiting_approval"}:
            break  # ended some other way: no point waiting
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} is {run.get('status')!r}, not {wanted!r}: {run}\n{server.output()}")


def sh(script: str, copy: Path) -> subprocess.CompletedProcess:
    """Run README lines as a reader's new shell would, but stop at the first failure."""
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script], cwd=copy, env=clean_env(),
        capture_output=True, text=True, timeout=60,
    )


# --- the test ---------------------------------------------------------------------------


def test_readme_support_scenario_works_in_a_new_terminal_after_make_run(tmp_path):
    start_block, cli_block = scenario_blocks()
    assert README_ORIGIN in start_block, "the README's curl no longer targets 127.0.0.1:8000"
    copy = fresh_copy(tmp_path / "checkout")
    port = free_port()
    # The README hard-codes port 8000; the server here listens on a free port so the test
    # never collides with a developer's `make run`, and the README's URL is rewritten to it.
    start_block = start_block.replace(README_ORIGIN, f"127.0.0.1:{port}")

    server = MakeRun(copy, port, tmp_path / "make-run.log")
    try:
        server.wait_healthy()
        assert (copy / "var" / "secret_key").is_file()  # written by run.sh, not exported

        # The README block unchanged, with two additions around it: curl also reports its
        # HTTP status (on stderr, so stdout stays the body), and TOKEN is shown at the end.
        script = (
            'curl() { command curl -w "%{stderr}\\nhttp_status=%{http_code}\\n" "$@"; }\n'
            f"{start_block}\n"
            'printf "\\ntoken=%s\\n" "$TOKEN" >&2\n'
        )
        started = sh(script, copy)
        assert started.returncode == 0, f"{started.stdout}\n{started.stderr}"
        token = re.search(r"^token=(.*)$", started.stderr, re.MULTILINE).group(1)
        assert TOKEN.match(token), f"issue_token printed no token:\n{started.stderr}"
        status = re.search(r"^http_status=(\d+)$", started.stderr, re.MULTILINE).group(1)
        assert status in {"200", "201"}, f"{status}: {started.stdout}"
        run_id = json.loads(started.stdout)["id"]
        assert uuid.UUID(run_id)

        parked = wait_for_status(server, run_id, token, "waiting_approval")
        pending = parked["pending_approval"]
        assert pending and pending["tool"] == "apply_credit", parked

        # "Log in as lead, open Approvals, approve it": the same decision over the API, with
        # a token issued the README's way in another clean shell.
        issued = sh(".venv/bin/python manage.py issue_token lead | tail -1", copy)
        assert issued.returncode == 0, issued.stderr
        lead_token = issued.stdout.strip()
        assert TOKEN.match(lead_token), issued
        code, decided = api(server.base, "POST", f"/api/v1/approvals/{pending['id']}/decisions",
                            lead_token, {"decision": "approve", "reason": "duplicate March charge"})
        assert code == 200, decided
        wait_for_status(server, run_id, token, "succeeded")

        # The README's second block: one run from the command line.
        answered = sh(cli_block, copy)
        assert answered.returncode == 0, f"{answered.stdout}\n{answered.stderr}"
    finally:
        server.stop()

    with sqlite3.connect(f"file:{copy / 'var' / 'db.sqlite3'}?mode=ro", uri=True) as db:
        credits = db.execute(
            "SELECT r.public_id, c.amount_cents, cu.code, t.slug FROM agents_creditledger c "
            "JOIN agents_customer cu ON cu.id = c.customer_id "
            "JOIN console_tenant t ON t.id = c.tenant_id "
            "LEFT JOIN agents_agentrun r ON r.id = c.run_id"
        ).fetchall()
        (plan,) = db.execute(
            "SELECT s.plan FROM agents_subscription s JOIN agents_customer cu ON cu.id = s.customer_id "
            "JOIN console_tenant t ON t.id = cu.tenant_id WHERE cu.code = 'C-1001' AND t.slug = 'acme'"
        ).fetchone()
    # A fresh database: the scenario's credit is the only one there is.
    assert credits == [(uuid.UUID(run_id).hex, 4000, "C-1001", "acme")]

    assert "status=succeeded" in answered.stdout, answered.stdout
    answer = re.search(r"^answer: (.*)$", answered.stdout, re.MULTILINE)
    assert answer and plan in answer.group(1).lower(), answered.stdout


def test_the_readme_scenario_blocks_are_found():
    """Cheap guard, no processes: the section still has the blocks the test above runs."""
    start_block, cli_block = scenario_blocks()
    assert "issue_token svc-acme" in start_block and README_ORIGIN in start_block
    # a new terminal has no venv activated: the README names .venv/bin/python
    assert cli_block.strip().startswith(".venv/bin/python manage.py run_agent")
