"""The page (services/gateway/static/) in a real headless Chromium, against every service as a process.

A finished sim character: the page takes the API key, shows every shot beside the references, filters them,
records a vote cast with its buttons, draws the provider charts and the scorecard, raises no JavaScript error,
and fits the viewport at 1280 px and at phone width. Screenshots of each view go to test-artifacts/.

Needs Debian's `chromium` and the `playwright` package (its own browsers are never downloaded): without them the
test skips, unless LIKENESS_REQUIRE_BROWSER=1 (CI), where it fails.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from tests.e2e.conftest import RunningSystem
from tests.e2e.test_sample_character import submit_sample, wait_completed

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Error, Page, Request, ViewportSize

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}


def _chromium_or_skip() -> str:
    """The Debian chromium binary, with playwright importable; skip (or fail, in CI) when either is missing."""
    problems = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("the playwright package is not installed (pip install the dev extra)")
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(executable).exists():
        problems.append("no chromium binary (apt-get install chromium)")
    if problems:
        reason = "browser test cannot run: " + "; ".join(problems)
        if os.environ.get("LIKENESS_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " and LIKENESS_REQUIRE_BROWSER=1")
        pytest.skip(reason)
    return executable


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: the test may run as root in a container, where chromium's sandbox cannot start
        launched = playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


class PageWatch:
    """A page with everything that should not happen collected: JavaScript errors and requests off loopback."""

    def __init__(self, browser: Browser, viewport: ViewportSize) -> None:
        self.context = browser.new_context(viewport=viewport)
        self.page: Page = self.context.new_page()
        self.errors: list[str] = []
        self.off_host: list[str] = []
        self.page.on("console", self._on_console)
        self.page.on("pageerror", self._on_page_error)
        self.page.on("request", self._check_host)

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text} ({message.location.get('url')})")

    def _on_page_error(self, error: Error) -> None:
        self.errors.append(f"page error: {error.name}: {error.message}")

    def _check_host(self, request: Request) -> None:
        url = urlsplit(request.url)
        if url.scheme in {"http", "https", "ws", "wss"} and url.hostname != "127.0.0.1":
            self.off_host.append(request.url)

    def sign_in(self, base_url: str, api_key: str) -> None:
        response = self.page.goto(f"{base_url}/")  # redirects to /ui/, which needs no key
        assert response is not None
        assert response.ok, response.status
        assert self.page.url == f"{base_url}/ui/"
        assert "script-src 'self'" in response.headers["content-security-policy"]
        self.page.get_by_label("API key", exact=True).fill(api_key)
        self.page.get_by_role("button", name="Open").click()
        self.page.get_by_role("heading", name="Characters").wait_for()

    def fits(self) -> None:
        """The page body never scrolls sideways (wide tables scroll inside their own box)."""
        scroll_width, viewport_width = self.page.evaluate(
            "() => [document.documentElement.scrollWidth, window.innerWidth]"
        )
        assert scroll_width <= viewport_width, f"{self.page.url}: {scroll_width} px wide in {viewport_width} px"

    def shoot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=ARTIFACTS / f"page-{name}.png", full_page=True)

    def close(self) -> None:
        self.context.close()
        assert self.errors == [], self.errors
        assert self.off_host == [], self.off_host


def _wait_images(page: Page) -> None:
    page.wait_for_function(
        "() => [...document.querySelectorAll('main img')].every(img => img.complete && img.naturalWidth > 0)"
    )


def _evaluation(system: RunningSystem, character_id: str, until: Any, timeout_s: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        response = system.client.http.get("/v1/evaluation", params={"character_id": character_id})
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        if until(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def test_page_shows_every_shot_records_a_vote_and_fits_desktop_and_phone(
    system: RunningSystem, browser: Browser
) -> None:
    character_id = submit_sample(system)
    character = wait_completed(system, character_id)
    shots = character["shots"]
    api_key = system.client.http.headers["X-API-Key"]

    desktop = PageWatch(browser, DESKTOP)
    page = desktop.page
    desktop.sign_in(system.base_url, api_key)
    desktop.fits()
    desktop.shoot("characters-1280")

    # the character: every shot, each beside the references
    page.locator(f'a[href="#/characters/{character_id}"]').click()
    cards = page.locator(".shot-card")
    cards.nth(len(shots) - 1).wait_for()
    assert cards.count() == len(shots) == 15
    assert {cards.nth(i).get_attribute("data-shot-id") for i in range(15)} == {s["shot_id"] for s in shots}
    assert page.locator(".shot-card .refs img").count() == 15 * len(character["references"])
    _wait_images(page)
    assert "offline simulator" in page.locator(".note").inner_text()
    desktop.fits()
    desktop.shoot("character-1280")

    # filtering by verdict leaves exactly the shots with that verdict
    same = sum(1 for s in shots if s["score"]["verdict"] == "same")
    page.get_by_label("Verdict", exact=True).select_option("same")
    assert page.locator(".shot-card:visible").count() == same
    assert page.get_by_role("status").filter(has_text="Showing").inner_text() == f"Showing {same} of 15 shots"
    page.get_by_label("Verdict", exact=True).select_option("")
    assert page.locator(".shot-card:visible").count() == 15

    # the providers: charts drawn as SVG, the scorecard with its tier
    page.get_by_role("link", name="Providers").click()
    page.locator("figure.chart svg rect.bar").first.wait_for()
    assert page.locator("figure.chart").count() == 4
    scorecard = page.locator("tr.scorecard-row", has=page.locator("th", has_text="sim"))
    assert "tier" in scorecard.inner_text()
    desktop.fits()
    desktop.shoot("providers-1280")

    # a vote through the buttons; the answer is the opposite of the machine's, so it is listed for review
    first = next(s for s in shots if s["image"] is not None)
    answer = "no" if first["score"]["verdict"] == "same" else "yes"
    rater = f"rater-{uuid.uuid4().hex[:8]}"
    page.goto(f"{system.base_url}/ui/#/evaluate/{character_id}")
    page.get_by_label("Your name", exact=True).fill(rater)
    page.get_by_role("button", name=answer.capitalize(), exact=True).click()
    page.get_by_role("status").filter(has_text="Recorded").wait_for()
    evaluation = _evaluation(system, character_id, until=lambda body: body["votes"] >= 1)
    assert evaluation["votes"] == 1
    (review,) = evaluation["disagreements"]
    assert (review["shot_id"], review["votes"]) == (first["shot_id"], {rater: answer})
    page.locator(".disagreements").filter(has_text=rater).wait_for()  # the page's own figures refresh
    _wait_images(page)
    desktop.fits()
    desktop.shoot("evaluate-1280")
    desktop.close()

    # the same views at phone width
    phone = PageWatch(browser, PHONE)
    phone.sign_in(system.base_url, api_key)
    phone.fits()
    phone.shoot("characters-390")
    for name, view, ready in [
        ("character", f"characters/{character_id}", ".shot-card"),
        ("providers", "compare", "figure.chart svg"),
        ("evaluate", f"evaluate/{character_id}", ".disagreements"),
    ]:
        phone.page.goto(f"{system.base_url}/ui/#/{view}")
        phone.page.locator(ready).first.wait_for()
        _wait_images(phone.page)
        phone.fits()
        phone.shoot(f"{name}-390")
    phone.close()
