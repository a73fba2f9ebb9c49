"""Helpers shared by the benchmarks: a scratch database, Django setup, a Celery worker, the
machine line."""

from __future__ import annotations

import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/3")


def db_url(name: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def bench_env(db: str, *, redis: bool = False) -> dict[str, str]:
    env = os.environ.copy()
    env.update(
        {
            "DATABASE_URL": db_url(db),
            "DJANGO_SETTINGS_MODULE": "console.settings",
            "DEBUG": "0",
            "SECRET_KEY": env.get("SECRET_KEY") or secrets.token_urlsafe(48),
            "VAR_DIR": env.get("VAR_DIR") or tempfile.mkdtemp(prefix="acp-bench-"),
            "LOG_LEVEL": "WARNING",
            "AGENT_TENANT_DAILY_CAP_USD": "100000",
        }
    )
    if redis:
        env["REDIS_URL"] = REDIS_URL
        env["CELERY_QUEUE"] = f"acp-bench-{os.getpid()}"
    else:
        env.pop("REDIS_URL", None)
    return env


def create_db(db: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db}"')


def drop_db(db: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def setup_django(env: dict[str, str]) -> None:
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("seed_demo", verbosity=0, stdout=open(os.devnull, "w"))


def start_worker(env: dict[str, str], *, hostname: str, concurrency: int, log=None) -> subprocess.Popen:
    """A real ``celery worker`` (prefork, ``concurrency`` processes) on the benchmark's queue,
    in its own process group (stop it with ``os.killpg(worker.pid, 15)``). Output goes to
    ``log`` (an open binary file), else nowhere."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "console",
            "worker",
            "--loglevel=WARNING",
            f"--concurrency={concurrency}",
            f"--hostname={hostname}",
            f"--queues={env['CELERY_QUEUE']}",
            "--without-gossip",
            "--without-mingle",
        ],
        cwd=ROOT,
        env=env,
        stdout=log if log is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_worker(worker: subprocess.Popen, hostname: str, timeout: float = 60) -> None:
    """Until the worker's heartbeat row appears (it is ready to take runs); RuntimeError if it
    exits or takes longer than ``timeout`` seconds."""
    from console.models import WorkerHeartbeat

    deadline = time.monotonic() + timeout
    while not WorkerHeartbeat.objects.filter(hostname=hostname).exists():
        if time.monotonic() > deadline or worker.poll() is not None:
            raise RuntimeError(f"bench worker {hostname} did not start")
        time.sleep(0.2)


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import psycopg

    with psycopg.connect(ADMIN_URL) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
    return (
        f"{os.cpu_count()} CPU ({cpu}), Python {platform.python_version()}, "
        f"PostgreSQL {version}, {platform.system()} {platform.release()}"
    )


def cpu_by_process(worker_pgid: int | None = None) -> dict[str, float]:
    """CPU seconds (user + system) so far of this machine's processes, grouped: the benchmark
    itself, the Celery worker's process group, PostgreSQL, Redis, everything else. Linux only
    (empty elsewhere); subtract two readings to get what a measured window cost."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    groups: dict[str, float] = {}
    me = os.getpid()
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else ():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        pid, pgid = int(entry.name), int(fields[2])
        seconds = (int(fields[11]) + int(fields[12])) / ticks
        if name.startswith("postgres"):
            # backends that ended in the window were reaped by the postmaster: their CPU is
            # its children's time (a worker that reconnects per task would hide it otherwise)
            seconds += (int(fields[13]) + int(fields[14])) / ticks
        if pid == me:
            group = "benchmark (enqueue + polling)"
        elif worker_pgid is not None and pgid == worker_pgid:
            group = "celery worker"
        elif name.startswith("postgres"):
            group = "postgresql"
        elif name.startswith("redis"):
            group = "redis"
        else:
            group = "other"
        groups[group] = groups.get(group, 0.0) + seconds
    return groups


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in sorted(set(before) | set(after))}


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(values: list[float]) -> str:
    return (
        f"p50 {pct(values, 50):.3f} ms, p95 {pct(values, 95):.3f} ms, "
        f"mean {statistics.fmean(values):.3f} ms (n={len(values)})"
    )
