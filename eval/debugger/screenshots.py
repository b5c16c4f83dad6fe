"""Screenshots of the debugger's views of a run, rendered by a headless Chromium.

    python -m eval.debugger.screenshots outputs/grpo --out docs/images/

Writes debugger-overview.png, debugger-trajectory.png, debugger-tokens.png, debugger-group.png
and, where the run left a policy to continue with, debugger-fork.png (a fork of the shown
trajectory with an edited query). The trajectory shown is picked for what it shows: a group
whose samples scored differently, a judge step, a gold passage (or pass `--trace KEY`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console

from eval.debugger import browser
from eval.debugger.app import build_runs, create_app
from eval.debugger.sources import find_runs

console = Console(stderr=True)
MAX_BYTES = 300_000  # a screenshot larger than this is stored with a 256-colour palette


def pick_trace(run) -> str:
    """The key of a trace that shows the views at their most telling."""
    run.traces.refresh()
    rows = run.traces.snapshot()

    def score(row) -> float:
        group = [rows[p]["reward"] for p in run.traces.groups.get(row["group"], [])]
        record = run.traces.record(row["position"])
        kinds = [s["kind"] for s in record["steps"]]
        gold = set(record.get("support", []))
        has_gold = any(p["id"] in gold for s in record["steps"] for p in s.get("passages", []))
        return (5 * (len(set(group)) > 1) + 3 * ("judge" in kinds) + 2 * has_gold + (row["em"] or 0)
                + min(len(kinds), 5) - 0.001 * row["position"])

    best = max(rows[: 2000], key=score)
    return f"0.0.{best['position']}"


def shoot(page, url: str, hash_: str, path: Path, *, full: bool = False, height: int = 1400) -> None:
    page.goto(f"{url}/#{hash_}")
    page.wait_for_selector(f'body[data-ready="{hash_}"]', state="attached")
    page.wait_for_timeout(250)
    if full:
        total = page.evaluate("() => document.documentElement.scrollHeight")
        page.set_viewport_size({"width": 1280, "height": min(total, height)})
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": 1280, "height": 860})
    shrink(path)


def shrink(path: Path) -> None:
    if path.stat().st_size > MAX_BYTES:
        from PIL import Image

        Image.open(path).convert("RGB").quantize(colors=256).save(path, optimize=True)


def fork_shot(page, url: str, key: str, path: Path, policy: str) -> bool:
    """Fork the first search of the trajectory with an edited query; screenshot the continuation."""
    page.goto(f"{url}/#/t/{key}")
    page.wait_for_selector(f'body[data-ready="/t/{key}"]', state="attached")
    search = page.locator('#cards > .card[data-kind="search"]').first
    if not search.count():
        return False
    search.get_by_role("button", name="Fork here").click()
    form = page.locator("form.fork")
    form.locator("select[name=policy]").select_option(policy)
    query = form.locator("textarea[name=text]")
    words = query.input_value().split()
    query.fill(" ".join(words[:-1] or words))  # the query without its last word
    form.get_by_role("button", name="Continue from here").click()
    page.wait_for_selector("#fork-link", timeout=120_000)
    page.wait_for_timeout(1300)  # the new cards' highlight fades
    page.evaluate("() => { document.querySelector('.bar').style.position = 'static'; }")  # no header over the card
    box = search.bounding_box()
    top = box["y"] + page.evaluate("() => window.scrollY")
    page.screenshot(path=str(path), full_page=True,
                    clip={"x": 0, "y": max(0, top - 12), "width": 1280, "height": min(box["height"] + 24, 1400)})
    shrink(path)
    return True


def main(argv=None) -> list[Path]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = argparse.ArgumentParser(prog="python -m eval.debugger.screenshots", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("run", help="a run directory or traces file")
    p.add_argument("--out", type=Path, default=Path("docs/images"))
    p.add_argument("--trace", default=None, help="the key of the trajectory to show (default: picked)")
    p.add_argument("--no-fork", action="store_true", help="skip the fork screenshot")
    args = p.parse_args(argv)
    from eval.debugger.__main__ import toolbox_for

    runs = build_runs(find_runs([args.run]))
    toolbox = toolbox_for(runs, argparse.Namespace(data=None, policy=[], index=[], model_name=None, tokenizer=None))
    key = args.trace or pick_trace(runs[0])
    args.out.mkdir(parents=True, exist_ok=True)
    shots = {"overview": ("/", False), "trajectory": (f"/t/{key}", True), "tokens": (f"/t/{key}/tokens", True),
             "group": (f"/t/{key}/group", True)}
    written = []
    with browser.serve(create_app(runs, toolbox, follow=None)) as url, browser.chromium() as chromium:
        page = chromium.new_page(viewport={"width": 1280, "height": 860})
        for name, (hash_, full) in shots.items():
            path = args.out / f"debugger-{name}.png"
            shoot(page, url, hash_, path, full=full)
            written.append(path)
        policy = next((name for name in ("final", "tiny") if name in toolbox.policies), None)
        if policy and not args.no_fork and fork_shot(page, url, key, args.out / "debugger-fork.png", policy):
            written.append(args.out / "debugger-fork.png")
    for path in written:
        console.print(f"wrote {path} ({path.stat().st_size // 1024} KB)")
    return written


if __name__ == "__main__":
    main()
