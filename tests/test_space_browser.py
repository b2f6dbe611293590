"""The deployed Space in a real browser: Playwright driving Debian's Chromium (never `playwright install`).

The app is the copy `hfmerge space deploy` put on the loopback Hub, downloaded and run from its own files in a
venv built from its requirements.txt (tests/space_deployed.py). Filters the leaderboard, compares merges, runs
one Playground merge and generates, and saves a screenshot of each tab (to a temp folder, or to the folder
``HFMERGE_SCREENSHOTS`` names: `make screenshots` refreshes the README's space/screenshots/). Every request must
stay on 127.0.0.1.
Chromium comes from apt (`apt-get install -y chromium`); without it this test FAILS, it does not skip.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

SPACE = Path(__file__).resolve().parents[1] / "space"
sys.path.insert(0, str(SPACE))
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")

from tests.space_deployed import deployed_space  # noqa: E402, F401 - the shared session fixture


@pytest.fixture(scope="module")
def app_url(deployed_space):  # noqa: F811 - the copy deployed to the loopback Hub, run from its own files
    return deployed_space.url


def test_space_in_chromium(app_url, tmp_path):
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: install it with `apt-get install -y chromium` "
                    "(`make` installs it the same way); this test never skips")
    from playwright.sync_api import expect, sync_playwright

    shots = Path(os.environ.get("HFMERGE_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    started = time.time()
    n = len(list((deployed_space_folder(app_url)).iterdir())) + 1 + 81  # results folder + Hub + published
    requests, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(app_url)

            # Leaderboard: everything, then one base, then one method of it.
            table = page.locator("#leaderboard")
            expect(table).to_contain_text("published (MergeBench paper)", timeout=20_000)
            expect(page.locator("#lb-count")).to_contain_text(f"{n} of {n} rows shown")
            header = table.locator("thead tr").first.bounding_box()
            assert header and header["height"] <= 80, f"leaderboard header row is {header} px tall"
            assert page.locator("#lb-notice").inner_text().count("Hub") <= 1  # the notice shows once
            page.locator("#lb-base input").click()
            page.get_by_role("option", name="mini-base", exact=True).click()
            expect(page.locator("#lb-count")).to_contain_text(f"{n - 81} of {n} rows shown")
            expect(table).to_contain_text("task_arithmetic_tuned")
            expect(table).to_contain_text("community-soup")  # the Hub model tagged hfmerge
            expect(table).not_to_contain_text("published (MergeBench paper)")
            page.screenshot(path=str(shots / "leaderboard.png"), full_page=True)
            page.locator("#lb-methods input").click()
            page.get_by_role("option", name="ties", exact=True).click()
            page.keyboard.press("Escape")
            expect(page.locator("#lb-count")).to_contain_text(f"1 of {n} rows shown")
            expect(table).to_contain_text("density=0.3")

            # Compare: the two preselected merges plus one picked by hand.
            page.get_by_role("tab", name="Compare").click()
            page.locator("#cmp-pick input").click()
            page.get_by_role("option", name="ties · ties (results folder)", exact=True).click()
            page.keyboard.press("Escape")  # a multiselect stays open after a pick
            page.locator("#compare-btn").click()
            expect(page.locator("#cmp-status")).to_contain_text("Comparing 3 merges", timeout=15_000)
            expect(page.locator("#cmp-bars img")).to_be_visible()
            first, second = sorted(p.name for p in deployed_space_folder(app_url).iterdir())[:2]  # preselected
            expect(page.locator("#cmp-delta")).to_contain_text(f"Δ {second} vs {first}")
            expect(page.locator("#cmp-config")).to_contain_text("parameters.density")
            page.screenshot(path=str(shots / "compare.png"), full_page=True)

            # Trade-offs: three figures rendered.
            page.get_by_role("tab", name="Trade-offs").click()
            for pid in ("#to-forgetting", "#to-cost", "#to-published"):
                expect(page.locator(f"{pid} img")).to_be_visible(timeout=15_000)
            page.screenshot(path=str(shots / "tradeoffs.png"), full_page=True)

            # Playground: one TIES merge with moved sliders, its point on the plot, then generation side by side.
            page.get_by_role("tab", name="Playground").click()
            page.locator("#pg-method input").click()
            page.get_by_role("option", name="ties", exact=True).click()
            density = page.locator("#pg-density input[type=number]")
            expect(density).to_be_visible()
            density.fill("0.5")
            density.press("Enter")
            page.locator("#pg-run").click()
            expect(page.locator("#pg-status")).to_contain_text("Merged with ties", timeout=30_000)
            expect(page.locator("#pg-status")).to_contain_text("density=0.5")
            expect(page.locator("#pg-table")).to_contain_text("coding")
            page.locator("#pg-generate").click()
            expect(page.locator("#pg-out-b textarea")).not_to_have_value("", timeout=20_000)
            page.screenshot(path=str(shots / "playground.png"), full_page=True)
        finally:
            browser.close()
    hosts = {urlparse(u).hostname for u in requests if u.startswith("http")}
    assert hosts == {"127.0.0.1"}, f"requests left 127.0.0.1: {sorted(hosts)}"
    assert not errors, errors
    for name in ("leaderboard", "compare", "tradeoffs", "playground"):
        shot = shots / f"{name}.png"
        assert shot.stat().st_size > 10_000 and shot.stat().st_mtime >= started  # written by this run


def deployed_space_folder(url: str) -> Path:
    from tests.space_deployed import _STATE

    assert _STATE["space"].url == url
    return _STATE["space"].folder / "results"
