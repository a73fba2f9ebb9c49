"""A real headless browser: Playwright for Python driving Debian's chromium.

Playwright never downloads a browser here: it launches /usr/bin/chromium (installed by
.ci/run with apt). The pages are served by pytest-django's live_server (a real HTTP server
on 127.0.0.1) against the test database.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
LAUNCH_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]


@pytest.fixture(scope="session")
def browser():
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    # Playwright's sync API runs an event loop; Django must allow sync ORM calls beside it.
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=LAUNCH_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page_for(browser, live_server):
    """``page_for(user)`` returns a logged-in page (through the real login form)."""
    from console.seed import demo_password

    contexts = []

    def make(username: str, password: str | None = None):
        context = browser.new_context(base_url=live_server.url, viewport={"width": 1280,
                                                                            "height": 900})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15000)
        page.goto("/accounts/login/")
        page.fill("#id_username", username)
        page.fill("#id_password", password or demo_password(username))
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: "/accounts/login/" not in url)
        return page

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def screenshot(settings):
    """Save a full-page screenshot. Into docs/screenshots/ with UPDATE_SCREENSHOTS=1 (how the
    README's pictures are refreshed), else into the test session's scratch directory so a
    plain test run leaves the work tree clean."""
    target = SCREENSHOTS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else (
        Path(settings.VAR_DIR) / "screenshots")

    def take(page, name: str) -> Path:
        target.mkdir(parents=True, exist_ok=True)
        path = target / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
