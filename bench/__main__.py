"""A tiny benchmark runner.

    python -m bench                 # list the benchmarks
    python -m bench audit           # run every bench/audit_*.py module
    python -m bench audit_chain     # run one module
    python -m bench audit -- --events 500   # pass arguments through to each module

A benchmark is a module ``bench/<area>_<name>.py`` with ``main(argv: list[str]) -> int``.
Add ``bench/runtime_*.py`` (or any prefix) and it is picked up; modules starting with an
underscore are helpers and never run. Each module prepares and drops its own database and
prints its results (and the machine it ran on); copy them into docs/benchmarks.md.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules([str(HERE)])
                  if not m.name.startswith("_"))


def main(argv: list[str]) -> int:
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1:]
    else:
        passthrough = []
    names = available()
    if not argv:
        print("usage: python -m bench NAME [NAME ...] [-- ARGS]\n\navailable:")
        for name in names:
            print(" ", name)
        return 0
    selected: list[str] = []
    for wanted in argv:
        matches = [n for n in names if n == wanted or n.startswith(wanted + "_")]
        if not matches:
            print(f"no benchmark matches {wanted!r}; available: {', '.join(names)}",
                  file=sys.stderr)
            return 2
        selected += [m for m in matches if m not in selected]
    status = 0
    for name in selected:
        print(f"== bench.{name}", flush=True)
        module = importlib.import_module(f"bench.{name}")
        status = max(status, int(module.main(passthrough) or 0))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
