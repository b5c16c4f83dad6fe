"""The debugger's page in a real headless Chromium: load a run, filter, open a trajectory, its
tokens and its group, fork a step with an edited query and watch the continuation arrive;
hostile trace text stays text. One browser and one server for the module."""

import pytest

from debugger_run import PASSAGES, write_run
from eval.debugger import browser
from eval.debugger.app import build_runs, create_app
from eval.debugger.forking import Toolbox
from eval.debugger.sources import find_runs
from fakes import FixedRetriever, ScriptedEngine

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(browser.missing() is not None, reason=f"browser tests skipped: {browser.missing()}")]


@pytest.fixture(scope="module")
def site(tiny_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    write_run(root / "run", tiny_tokenizer)
    tiny_tokenizer.save_pretrained(root / "tokenizer")
    runs = build_runs(find_runs([root / "run"]), str(root / "tokenizer"))
    toolbox = Toolbox({"scripted": ScriptedEngine(tiny_tokenizer, lambda ids, call: "<answer>Velmora</answer>")},
                      {"fixed": FixedRetriever(PASSAGES)})
    with browser.serve(create_app(runs, toolbox, follow=0.2)) as url, browser.chromium() as chromium:
        page = chromium.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(10_000)
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        yield url, page, root / "run", errors


def show(page, url, hash_):
    page.goto(f"{url}/#{hash_}")
    page.wait_for_selector(f'body[data-ready="{hash_}"]', state="attached")


def test_overview_lists_and_filters(site):
    url, page, _, errors = site
    show(page, url, "/")
    assert page.locator("tr.trace").count() == 18
    assert page.locator(".chart svg path").count() == 2  # reward and EM curves
    page.select_option("select[name=correct]", "false")
    page.wait_for_selector('body[data-ready="/?run=0&correct=false"]', state="attached")
    assert page.locator("tr.trace").count() == 12 and page.inner_text("#shown") == "1–12 of 12"
    page.fill("input[name=q]", "country velmora")
    page.press("input[name=q]", "Enter")
    page.wait_for_selector('body[data-ready="/?run=0&correct=false&q=country+velmora"]', state="attached")
    assert page.locator("tr.trace").count() == 8  # wrong answers of the two questions with both words
    assert not errors


def test_trajectory_cards_rewards_and_hostile_text(site):
    url, page, _, errors = site
    show(page, url, "/")
    page.click('tr.trace[data-key="0.0.1"]')
    page.wait_for_selector('body[data-ready="/t/0.0.1"]', state="attached")
    cards = page.locator("#cards > .card")
    assert cards.count() == 4
    assert [cards.nth(i).get_attribute("data-kind") for i in range(4)] == ["search", "judge", "search", "answer"]
    first = cards.nth(0).inner_text()
    assert "dropped by the judge" in first and "reward +0.100" in first and "adv -0.167" in first
    assert "ideal: useful ✗" in cards.nth(1).inner_text()
    # the hostile passage is shown as text, and nothing in it ran
    assert '<img src=x onerror="window.__pwned=1">' in first and "<script>window.__pwned=1</script>" in first
    assert page.locator("#cards img, #cards script").count() == 0
    assert page.evaluate("() => window.__pwned") is None
    assert not errors


def test_tokens_and_group_views(site):
    url, page, _, errors = site
    show(page, url, "/t/0.0.1/tokens")
    assert page.locator(".tokens").count() == 2  # two segments: the judge dropped an observation
    assert page.locator(".tok.inj").count() > 0 and page.locator(".tok:not(.inj)").count() == 19
    assert [m.lower() for m in page.locator(".tokens .mark").all_inner_texts()] == ["0 search", "1 judge", "2 search", "3 answer"]
    show(page, url, "/t/0.0.1/group")
    samples = page.locator("#group .sample")
    assert samples.count() == 3
    assert page.locator("#group li.parting").count() == 3
    assert "parts here" in samples.nth(1).inner_text()
    assert not errors


def test_fork_with_an_edited_query_streams_and_branches(site):
    url, page, run, errors = site
    show(page, url, "/t/0.0.1")
    page.locator("#cards > .card").nth(0).get_by_role("button", name="Fork here").click()
    form = page.locator("form.fork")
    assert form.locator("select[name=edit]").input_value() == "query"
    form.locator("textarea[name=text]").fill("Velmora")
    form.get_by_role("button", name="Continue from here").click()
    link = page.wait_for_selector("#fork-link")
    streamed = page.locator(".stream .card")
    assert streamed.count() == 2 and "Velmora" in streamed.nth(0).inner_text() and "edited" in streamed.nth(0).inner_text()
    assert "EM 1" in streamed.nth(1).inner_text()
    assert (run / "forks.jsonl").exists()
    link.click()
    page.wait_for_selector('body[data-ready="/t/0.1.0"]', state="attached")
    assert "A fork of" in page.inner_text(".notice")
    assert page.inner_text(".fork-line").lower() == "forked here: query edited" and page.locator(".card.inherited").count() == 0
    page.click(".notice a")  # back to the parent, which now shows its branch
    page.wait_for_selector('body[data-ready="/t/0.0.1"]', state="attached")
    assert page.locator(".branches a").all_inner_texts() == ["step 0 → Velmora"]
    assert not errors


def test_paths_outside_the_run_are_refused(site):
    url, page, _, _ = site
    for path in ("/files/0/..%2F..%2F..%2F..%2Fetc%2Fpasswd", "/files/0/..%2Ftokenizer%2Ftokenizer.json"):
        response = page.request.get(url + path)
        assert response.status == 403 and "outside the run directory" in response.text()
    assert page.request.get(url + "/files/0/metrics.jsonl").status == 200
