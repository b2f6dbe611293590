"""The Space in a real browser: Playwright driving Debian's Chromium (never `playwright install`).

Filters the leaderboard, compares merges, runs one Playground merge and generates, and saves a screenshot of each
tab to space/screenshots/ (committed for the README). Every request must stay on 127.0.0.1.
Chromium comes from apt (`apt-get install -y chromium`); without it this test FAILS, it does not skip.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

SPACE = Path(__file__).resolve().parents[1] / "space"
sys.path.insert(0, str(SPACE))
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = SPACE / "screenshots"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    import app
    import space_data as sd
    from space_playground import LocalFamilyBackend

    from tests.tiny import make_family

    root = tmp_path_factory.mktemp("pg-browser")
    make_family(root, n_experts=2)
    for name in ("math", "coding"):  # experts named by domain, with task rows, as the mini-MergeBench lays out
        shutil.move(root / f"expert{1 if name == 'math' else 2}", root / f"expert-{name}")
    (root / "tasks").mkdir()
    rows = {"math": ("two plus three equals", " five"), "coding": ("def add(a, b):", " return a + b"),
            "general": ("the quick brown fox", " jumps over the lazy dog")}
    for name, (p, c) in rows.items():
        (root / "tasks" / f"{name}.jsonl").write_text(json.dumps({"prompt": p, "completion": c}) + "\n")
    demo = app.build_app(sd.Store(SPACE / "sample_results", use_hub=False), LocalFamilyBackend(root), "")
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, share=False, prevent_thread_lock=True,
                            quiet=True, ssr_mode=False)
    yield url
    demo.close()


def test_space_in_chromium(app_url):
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: install it with `apt-get install -y chromium` "
                    "(`make` installs it the same way); this test never skips")
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(exist_ok=True)
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
            expect(page.locator("#lb-count")).to_contain_text("91 of 91 rows shown")
            page.locator("#lb-base input").click()
            page.get_by_role("option", name="mini-base", exact=True).click()
            expect(page.locator("#lb-count")).to_contain_text("10 of 91 rows shown")
            expect(table).to_contain_text("task_arithmetic_tuned")
            expect(table).not_to_contain_text("published (MergeBench paper)")
            page.screenshot(path=str(SHOTS / "leaderboard.png"), full_page=True)
            page.locator("#lb-methods input").click()
            page.get_by_role("option", name="ties", exact=True).click()
            page.keyboard.press("Escape")
            expect(page.locator("#lb-count")).to_contain_text("1 of 91 rows shown")
            expect(table).to_contain_text("density=0.3")

            # Compare: the two preselected merges plus one picked by hand.
            page.get_by_role("tab", name="Compare").click()
            page.locator("#cmp-pick input").click()
            page.get_by_role("option", name="ties · ties (results folder)", exact=True).click()
            page.keyboard.press("Escape")  # a multiselect stays open after a pick
            page.locator("#compare-btn").click()
            expect(page.locator("#cmp-status")).to_contain_text("Comparing 3 merges", timeout=15_000)
            expect(page.locator("#cmp-bars img")).to_be_visible()
            expect(page.locator("#cmp-delta")).to_contain_text("Δ dare vs consensus")
            expect(page.locator("#cmp-config")).to_contain_text("parameters.density")
            page.screenshot(path=str(SHOTS / "compare.png"), full_page=True)

            # Trade-offs: three figures rendered.
            page.get_by_role("tab", name="Trade-offs").click()
            for pid in ("#to-forgetting", "#to-cost", "#to-published"):
                expect(page.locator(f"{pid} img")).to_be_visible(timeout=15_000)
            page.screenshot(path=str(SHOTS / "tradeoffs.png"), full_page=True)

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
            page.screenshot(path=str(SHOTS / "playground.png"), full_page=True)
        finally:
            browser.close()
    hosts = {urlparse(u).hostname for u in requests if u.startswith("http")}
    assert hosts == {"127.0.0.1"}, f"requests left 127.0.0.1: {sorted(hosts)}"
    assert not errors, errors
    for name in ("leaderboard", "compare", "tradeoffs", "playground"):
        assert (SHOTS / f"{name}.png").stat().st_size > 10_000
