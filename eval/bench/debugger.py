"""How the trace debugger keeps up with a large run: time to first view and to open a trajectory.

    python -m eval.bench.debugger                      # 100k traces in /tmp/searchrl-bench-debugger
    python -m eval.bench.debugger --traces 20000 --dir /tmp/bench

Writes a traces.jsonl of `--traces` generated trajectories shaped like a training run's (three
searches with three passages each, a judge, an answer; about 280 response tokens with masks
and logprobs; rewards, advantages, step and group ids; about 8 KB a line, where the embedded
default's training traces have a median of 6.5 KB), starts `python -m eval.debugger` on it
in its own process, and measures over HTTP, and in a headless Chromium where one is installed:

- first view: from the server's start until the overview's first page of traces is answered
  (the page shows it while the rest of the file is still being indexed);
- open a trajectory: one trajectory's view, of the first page while the file is being indexed,
  then at the start, middle and end of the file;
- the tokens and group views of one trace, a filtered and sorted list over every trace, and
  the time until the whole file is indexed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)
WORDS = ("Velmora Dastria Orin Kael Zentrova Guild Mira Solen Ashen Lantern Acur Grei founded born city country "
         "wrote mentor river ship machine event").split()


def fake_record(i: int, rng: random.Random) -> dict:
    """A training-run record with realistic sizes (the text is nonsense, the shapes are not)."""
    step, group, sample = i // 192 + 1, i // 4, i % 4
    words = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))
    passages = [{"id": f"d{rng.randrange(150_000)}", "title": words(2), "text": words(28), "score": round(rng.random(), 4)}
                for _ in range(3)]
    steps, spans, pos = [], [], 0
    for kind, n in (("search", 9), ("judge", 5), ("search", 9), ("search", 9), ("answer", 7)):  # sampled tokens
        steps.append({"kind": kind, "text": words(3) if kind != "judge" else rng.choice(["useful", "not useful"]),
                      "span": [pos, pos + n], "passages": passages if kind == "search" else [], "dropped": False,
                      "segment": 0, "error": None})
        pos += n + (70 if kind == "search" else 0)  # + the observation
    n_tokens = pos
    mask = [1] * n_tokens
    for s in steps:
        if s["kind"] == "search":
            mask[s["span"][1]: s["span"][1] + 70] = [0] * 70
    answer = words(2)
    reward = round(rng.random() * 1.5, 4)
    return {
        "version": 1, "example_id": f"q{group % 3000}", "group_id": f"s{step}:q{group % 3000}", "sample": sample,
        "policy_version": step - 1, "finish": "answered", "answer": answer, "steps": steps,
        "segments": [{"context_ids": [rng.randrange(2048) for _ in range(24)],
                      "response_ids": [rng.randrange(2048) for _ in range(n_tokens)], "loss_mask": mask,
                      "logprobs": [round(-rng.random() * 2, 4) if m else 0.0 for m in mask]}],
        "question": f"Where was {words(2)} born?", "golden_answers": [answer if rng.random() < 0.3 else words(2)],
        "support": [passages[0]["id"]], "meta": {"hops": 1 + i % 3, "type": "birthplace"},
        "segment_texts": [words(n_tokens // 3)],
        "messages": [{"role": "user", "content": "question"}, {"role": "assistant", "content": words(n_tokens // 3)}],
        "step": step, "reward": reward, "rewards": {"em": float(reward > 1), "judge": 0.2}, "step_rewards": [0.0] * 5,
        "advantage": round(rng.gauss(0, 1), 4), "step_advantages": [0.0] * 5,
    }


def write_traces(path: Path, n: int) -> None:
    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps(fake_record(i, rng)) + "\n")


def timed(fn, repeats: int = 1) -> float:
    """Median wall seconds of `fn()` over `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def first_view(url: str, start: float, limit: float = 300.0) -> float:
    """Seconds from `start` until the overview's first page of traces is answered (the server
    may still be starting: connection errors are retried, for `limit` seconds at most)."""
    while time.perf_counter() - start < limit:
        with contextlib.suppress(httpx.HTTPError, KeyError):  # not up yet, or not indexed this far
            httpx.get(url + "/", timeout=5).raise_for_status()
            httpx.get(url + "/api/runs", timeout=5).raise_for_status()
            if len(httpx.get(url + "/api/runs/0/traces?limit=50", timeout=5).json()["rows"]) == 50:
                return time.perf_counter() - start
        time.sleep(0.02)
    raise RuntimeError(f"{url} did not answer the overview's first page within {limit:.0f} s")


def browser_figures(url: str, n: int) -> dict:
    from eval.debugger import browser

    if browser.missing():
        return {}
    out = {}
    with browser.chromium() as chromium:
        page = chromium.new_page(viewport={"width": 1280, "height": 900})

        def show(hash_: str) -> None:
            page.goto(f"{url}/#{hash_}")
            page.wait_for_selector(f'body[data-ready="{hash_}"]', state="attached", timeout=60_000)

        out["page: overview shown (browser)"] = timed(lambda: show("/"), 3)
        out["page: trajectory shown (browser, last trace)"] = timed(lambda: show(f"/t/0.0.{n - 1}"), 3)
        out["page: tokens view shown (browser)"] = timed(lambda: show(f"/t/0.0.{n // 2}/tokens"), 3)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m eval.bench.debugger", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--traces", type=int, default=100_000)
    p.add_argument("--dir", type=Path, default=Path("/tmp/searchrl-bench-debugger"))
    p.add_argument("--port", type=int, default=7871)
    args = p.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / "traces.jsonl"
    if not path.exists() or sum(1 for _ in open(path, "rb")) != args.traces:
        console.print(f"writing {args.traces:,} traces to {path}")
        write_traces(path, args.traces)
    size_mb = path.stat().st_size / 1e6
    url = f"http://127.0.0.1:{args.port}"
    start = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "eval.debugger", str(args.dir), "--port", str(args.port)],
                              stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    figures = {}
    try:
        figures["first view: overview's first page answered"] = first_view(url, start)
        n = args.traces
        figures["open a trajectory of the first page, while indexing (HTTP)"] = timed(
            lambda: httpx.get(f"{url}/api/trace/0.0.10").raise_for_status(), 5)
        while httpx.get(url + "/api/runs").json()["runs"][0]["indexing"]:
            time.sleep(0.2)
        figures["whole file indexed (in the background)"] = time.perf_counter() - start
        figures["open a trajectory (HTTP; start, middle, end of the file)"] = timed(
            lambda: [httpx.get(f"{url}/api/trace/0.0.{i}").raise_for_status() for i in (0, n // 2, n - 1)], 5) / 3
        figures["tokens view of a trace (HTTP)"] = timed(lambda: httpx.get(f"{url}/api/trace/0.0.{n // 2}/tokens"), 5)
        figures["group view of a trace (HTTP)"] = timed(lambda: httpx.get(f"{url}/api/trace/0.0.{n // 2}/group"), 5)
        query = "/api/runs/0/traces?q=velmora&correct=false&sort=reward&desc=true&limit=50"
        figures[f"filter + sort over all {n:,} traces (HTTP)"] = timed(lambda: httpx.get(url + query), 5)
        figures.update(browser_figures(url, n))
        rss = int(next(line.split()[1] for line in open(f"/proc/{server.pid}/status") if line.startswith("VmRSS")))
    finally:
        server.terminate()
        server.wait(timeout=10)
    table = Table(title=f"trace debugger on {args.traces:,} traces ({size_mb:,.0f} MB), {os.cpu_count()} cores")
    table.add_column("what")
    table.add_column("seconds", justify="right")
    for what, seconds in figures.items():
        table.add_row(what, f"{seconds:.3f}")
    table.add_row("server memory after indexing (RSS)", f"{rss / 1024:,.0f} MB")
    Console().print(table)
    Console().print(f"command: python -m eval.bench.debugger --traces {args.traces}")
    return figures


if __name__ == "__main__":
    main()
