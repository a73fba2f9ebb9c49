import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_login_shows_role_navigation_and_logout_works(seeded, page_for, screenshot):
    page = page_for("auditor")
    nav = page.locator("nav[aria-label=Main]")
    assert nav.get_by_text("Dashboard").is_visible()
    assert nav.locator("[data-nav=switches]").count() == 0
    assert nav.locator("[data-nav=approvals]").count() == 0
    page.click("text=Log out")
    page.wait_for_url("**/accounts/login/")
    assert page.locator("#id_username").is_visible()


def test_wrong_password_is_refused_with_a_message(seeded, browser, live_server):
    context = browser.new_context(base_url=live_server.url)
    page = context.new_page()
    page.goto("/accounts/login/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", "wrong")
    page.click("button[type=submit]")
    assert page.get_by_text("didn't match").is_visible()
    context.close()


def test_htmx_and_css_are_served_locally_not_from_a_cdn(seeded, page_for, live_server):
    page = page_for("operator")
    assert page.evaluate("typeof window.htmx") == "object"
    sources = page.eval_on_selector_all("script[src], link[href]",
                                        "els => els.map(e => e.src || e.href)")
    assert sources
    assert all(src.startswith(live_server.url) for src in sources), sources
