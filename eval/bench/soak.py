"""A soak of the retrieval server: many clients at once, one large request in the mix.

    python -m eval.bench.soak                                   # this checkout's server, indexes/world-0
    python -m eval.bench.soak --baseline /path/to/other/checkout --seconds 20

Starts `python -m retrieval.server` (result cache off, so every query is searched) in its own
process on 127.0.0.1 and, for each of two modes, runs `--clients` client threads for
`--seconds`, each sending small requests (`--small-queries` questions of the index's world,
topk 3) one after another:

1. connection per request: a new TCP connection for each request, closed after the answer
   (what `urllib` and the project's `HTTPRetriever` do);
2. keep-alive: one connection per client, reused.

A moment into each mode, one large request (`--large-queries`, by default Search-R1's
512 x 5 = 2,560) is sent the way Search-R1's client sends it: one POST of
{"queries", "topk": 3, "return_scores": true}, reading `["result"]`. The mode ends when the
clients stop and the large request has its answer. Reported per mode: errors of the small
requests (resets, time-outs past the client's 30 s, non-200 answers: target 0), their p50 /
p99 / max latency, requests/s, the large request's status and time, and the server's peak
RSS. With --baseline, the server of another checkout (e.g. the main branch) is soaked the
same way, in the same run, for a before/after table.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

__all__ = ["main"]

console = Console()
if not console.is_terminal:  # a log file: room for the whole table
    console.width = 150
HERE = Path(__file__).resolve().parents[2]  # this checkout
MODES = ("connection per request", "keep-alive")


@dataclass
class Soak:
    """One server under one mode."""

    server: str
    mode: str
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, of answered small requests
    errors: Counter = field(default_factory=Counter)
    large: str = "not sent"
    peak_rss: int = 0


# ----------------------------------------------------------------------------- the server

class ServerProcess:
    """`python -m retrieval.server` of a checkout, in its own process, with its RSS sampled."""

    def __init__(self, checkout: Path, index: str, port: int, log: Path):
        command = [sys.executable, "-m", "retrieval.server", "--index", index, "--port", str(port), "--cache-size", "0"]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the checkout's own packages
        self.log = log
        self.process = subprocess.Popen(command, cwd=checkout, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        self.port = port
        self._peak, self._sampling = 0, threading.Event()

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited ({self.process.returncode}): {self.log.read_text()[-500:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError(f"the server did not answer /health within {timeout:.0f} s; see {self.log}")
        # One search before the clock starts: a server that loads its encoder lazily loads it now.
        search_r1_call(self.port, ["warm-up"], timeout)

    def rss(self) -> int:
        """Resident bytes now (Linux /proc)."""
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def sample_peak(self) -> threading.Event:
        """Samples RSS every 0.1 s into `peak` until the returned event is set."""
        stop = threading.Event()
        self._peak = self.rss()

        def sample():
            while not stop.wait(0.1):
                self._peak = max(self._peak, self.rss())

        threading.Thread(target=sample, daemon=True).start()
        return stop

    @property
    def peak(self) -> int:
        return self._peak

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


# ----------------------------------------------------------------------------- clients

def small_client(port: int, mode: str, queries: list[str], n: int, seed: int, stop_at: float, timeout: float,
                 soak: Soak, lock: threading.Lock) -> None:
    """Sends requests of `n` random queries until `stop_at`; records latencies and errors."""
    rng = random.Random(seed)
    per_request = mode == MODES[0]
    headers = {"Content-Type": "application/json", **({"Connection": "close"} if per_request else {})}
    connection = None
    while time.monotonic() < stop_at:
        batch = [queries[rng.randrange(len(queries))] for _ in range(n)]
        body = json.dumps({"queries": batch, "topk": 3, "return_scores": True})
        error = None
        started = time.perf_counter()
        try:
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            connection.request("POST", "/retrieve", body, headers)
            response = connection.getresponse()
            data = response.read()
            if response.status != 200:
                error = f"HTTP {response.status}"
            elif len(json.loads(data)["result"]) != n:
                error = "wrong number of results"
            if per_request or response.will_close:
                connection.close()
                connection = None
        except (OSError, http.client.HTTPException) as err:  # resets, time-outs, refused connections
            error = "time-out" if isinstance(err, TimeoutError) else type(err).__name__
            if connection is not None:
                connection.close()
            connection = None
        elapsed = time.perf_counter() - started
        with lock:
            if error:
                soak.errors[error] += 1
            else:
                soak.latencies.append(elapsed)
    if connection is not None:
        connection.close()


def search_r1_call(port: int, queries: list[str], timeout: float) -> tuple[str, bool]:
    """One POST as Search-R1's `_batch_search` sends it; (what happened, whether it succeeded)."""
    payload = {"queries": queries, "topk": 3, "return_scores": True}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/retrieve", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            result = json.loads(response.read())["result"]
        ok = len(result) == len(queries) and all({"document", "score"} <= set(hit) for hits in result for hit in hits)
        return f"200 in {time.perf_counter() - started:.1f} s" + ("" if ok else " (malformed)"), ok
    except urllib.error.HTTPError as err:
        message = json.loads(err.read() or b"{}").get("error", err.reason)
        return f"HTTP {err.code} ({str(message)[:40]}...)", False
    except (OSError, http.client.HTTPException) as err:
        return f"{type(err).__name__} after {time.perf_counter() - started:.1f} s", False


def soak_mode(server: ServerProcess, name: str, mode: str, queries: list[str], args) -> Soak:
    soak, lock = Soak(name, mode), threading.Lock()
    stop_sampling = server.sample_peak()
    started = time.monotonic()
    stop_at = started + args.seconds
    clients = [threading.Thread(target=small_client, args=(server.port, mode, queries, args.small_queries, i, stop_at,
                                                           args.timeout, soak, lock)) for i in range(args.clients)]
    for thread in clients:
        thread.start()
    large = None
    if args.large_queries:
        time.sleep(min(2.0, args.seconds / 5))  # the clients are going when it arrives
        batch = [queries[i % len(queries)] for i in range(args.large_queries)]

        def send_large():
            soak.large = search_r1_call(server.port, batch, args.large_timeout)[0]

        large = threading.Thread(target=send_large)
        large.start()
    for thread in clients:
        thread.join()
    if large is not None:
        large.join()
    soak.seconds = time.monotonic() - started
    stop_sampling.set()
    soak.peak_rss = server.peak
    return soak


# ----------------------------------------------------------------------------- main

def world_questions(index: str, limit: int = 5000) -> list[str]:
    """Questions of the world the index was built from (test/dev/train JSONL beside its corpus)."""
    meta = json.loads((Path(index) / "index.json").read_text())
    folder = Path(meta["corpus"]).parent
    questions = []
    for split in ("test", "dev", "train"):
        path = folder / f"{split}.jsonl"
        if path.exists():
            with path.open() as f:
                questions += [json.loads(line)["question"] for line in f if line.strip()]
    if not questions:
        raise SystemExit(f"no questions (test/dev/train.jsonl) beside {meta['corpus']}")
    return questions[:limit]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def report(soaks: list[Soak], args, standalone: dict[str, str]) -> None:
    table = Table(title=f"retrieval server soak: {args.clients} clients x {args.seconds:.0f} s per mode, "
                        f"{args.index}, small requests of {args.small_queries} queries, "
                        f"one large request of {args.large_queries:,}")
    for column in ("server", "mode", "answered", "errors", "p50 ms", "p99 ms", "max ms", "req/s",
                   f"large request ({args.large_queries:,} q)", "peak RSS MB"):
        table.add_column(column, justify="left" if column in ("server", "mode", "errors") else "right")
    for soak in soaks:
        lat = soak.latencies
        errors = ", ".join(f"{n} {kind}" for kind, n in soak.errors.most_common()) or "0"
        ms = ([f"{value * 1e3:,.0f}" for value in (percentile(lat, 50), percentile(lat, 99), max(lat))]
              if lat else ["-"] * 3)
        table.add_row(soak.server, soak.mode, f"{len(lat):,}", errors, *ms, f"{len(lat) / soak.seconds:,.1f}",
                      soak.large, f"{soak.peak_rss / 2**20:,.0f}")
    console.print(table)
    for name, outcome in standalone.items():
        console.print(f"{name}: one Search-R1-style call of {args.large_queries:,} queries, idle server: {outcome}")
    if args.baseline:
        console.print(f"baseline: the server of {args.baseline}")
    console.print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--index", default="indexes/world-0", help="index directory (with index.json)")
    parser.add_argument("--clients", type=int, default=32, help="client threads sending small requests")
    parser.add_argument("--seconds", type=float, default=20, help="how long the clients send, per mode")
    parser.add_argument("--small-queries", type=int, default=1, help="queries per small request")
    parser.add_argument("--large-queries", type=int, default=2560, help="queries of the large request (0: none)")
    parser.add_argument("--timeout", type=float, default=30, help="a small request's client time-out, in seconds")
    parser.add_argument("--large-timeout", type=float, default=600, help="the large request's time-out, in seconds")
    parser.add_argument("--baseline", default=None, help="another checkout whose server is soaked too (before/after)")
    args = parser.parse_args(argv)

    index = str(Path(args.index).resolve())
    queries = world_questions(index)
    servers = [("this checkout", HERE)] + ([("baseline", Path(args.baseline))] if args.baseline else [])
    soaks, standalone = [], {}
    log_dir = Path(tempfile.mkdtemp(prefix="searchrl-soak-"))
    for name, checkout in servers:
        server = ServerProcess(checkout, index, free_port(), log_dir / f"{len(soaks)}.log")
        try:
            with console.status(f"{name}: starting the server (loading {args.index})"):
                server.wait_ready()
            for mode in MODES:
                with console.status(f"{name}: {mode}, {args.clients} clients for {args.seconds:.0f} s"):
                    soaks.append(soak_mode(server, name, mode, queries, args))
                console.print(f"{name}, {mode}: {len(soaks[-1].latencies):,} answered, errors "
                              f"{dict(soaks[-1].errors) or 0}, large: {soaks[-1].large}")
            if args.large_queries:
                batch = [queries[-1 - i % len(queries)] for i in range(args.large_queries)]
                standalone[name] = search_r1_call(server.port, batch, args.large_timeout)[0]
        finally:
            server.stop()
    report(soaks, args, standalone)
    return 0 if all(not s.errors for s in soaks if s.server == servers[0][0]) else 1


if __name__ == "__main__":
    sys.exit(main())
