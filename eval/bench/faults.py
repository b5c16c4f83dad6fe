"""Fault injection: kill GRPO runs at random points, damage their checkpoints, make their
retriever fail for a while, and count what they lost.

    python -m eval.bench.faults                 # 5 to 10 minutes on 2 cores; writes runs/faults/

Each fault kind drives runs of the trainer (`train/grpo.py`, a fresh child process at every
start) into its fault, restarts them until they finish, and makes one row of the table:

  injected          faults that happened (a kill that fired, a checkpoint damaged, a retriever
                    window that met a request)
  runs survived     runs that, restarted after every fault, finished (exit 0, final model and
                    test evaluation in summary.json)
  traj. lost        trajectories of the uninterrupted run's traces.jsonl missing from the
                    run's own at the end (target 0)
  traj. duplicated  trajectories the run's traces.jsonl holds more than once (target 0)
  resumes matched   restarts after a fault whose metrics.jsonl, when the process ended, held
                    each step once with the uninterrupted run's reward, EM, loss, KL, entropy
                    and gradient norm (within 1e-5); for a retriever fault, runs (one start
                    each) whose metrics.jsonl so matched and whose test EM before and after
                    training were the uninterrupted run's

Kinds: SIGKILL at a random point of the rollout, the update, the checkpoint write or the trace
append of a random step (a trace append is killed after a random share of its bytes reached
the file: a torn line), and a damaged newest checkpoint (an empty model.safetensors, a trainer
state cut in half, an empty summary.json, a missing completion marker) after a kill. A kill
comes from inside the child: `run_child` wraps the phase's function there (a monkeypatch of
the child only; the trainer has no hook for it) and, on the chosen call, SIGKILLs its own
process after a random delay within the phase's usual length, or at the phase's end if that
comes first, so every kill lands inside its phase. The uninterrupted run is the same command
with no fault, which also measures each phase's length.

Retriever kinds: the run searches (`--index http://...`) a `FlakyServer` the bench serves on a
thread over the same BM25 index, which fails twice, each time from a random /retrieve request
of the run for 1 to 3 s: down (its socket closed), slow past the client's timeout, slow within
it (answers late but right), 500s, or garbage (not JSON, or not the wire format). The trainer
keeps its default `--on_retrieval_failure pause`: a step or evaluation whose searches failed is
rolled out again, same questions and seed, once /health answers; so every metric should be the
uninterrupted run's, which is the same command against a server that never fails. A failed
request fails a whole turn's searches, past the default threshold of 10% at this size. The
trainer's flags set neither the client's timeout and retries (30 s, 3 retries) nor its pauses
(5 s, doubling): the child gets a 2 s timeout, 1 retry and pauses from 0.2 s (`_quick_retries`),
or each window would cost minutes. These runs are by the embedded default's warm-started policy
with turns of 24 tokens, since the random model below never writes a search.

The runs are the embedded default's recipe at test size (as tests/test_grpo.py trains): a
300-entity generated world with its BM25 index and a random 2-layer tiny Qwen2, 4 steps of
2 questions x 3 samples, a checkpoint every step, the two newest kept.

A new kind is one more function `(Bench, random.Random) -> Row` in `FAULTS`: it starts runs
with `Bench.start`, restarts them with `Bench.finish`, and counts its faults in its row.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from eval.bench.flaky_server import CLIENT, FlakyServer, Window

ROOT = Path(__file__).resolve().parents[2]
PHASES = ("rollout", "update", "checkpoint write", "trace append")
COMPARED = ("reward", "em", "loss", "approx_kl", "entropy", "grad_norm")
CHILD = "import sys; from eval.bench.faults import run_child; run_child(sys.argv[1:])"

console = Console()


# -- inside the child: the trainer with a fault waiting in one phase ----------------------------


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _torn_write(writer, records: list[dict], share: float) -> None:
    """What TraceWriter.write appends, cut after `share` of its bytes, synced: a write the
    kill caught midway."""
    blob = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    with open(writer.path, "ab") as f:
        f.write(blob[: int(len(blob) * share)])
        f.flush()
        os.fsync(f.fileno())


def run_child(argv: list[str]) -> None:
    """`train/grpo.py`'s main on `argv[1:]`, with the fault `argv[0]` (JSON) waiting: {"phase",
    "call": the phase's n-th call in this process, "delay": seconds into it, "share": of a trace
    append's bytes}, or {"observe": a file for each phase's call lengths}. A phase is the calls
    of one function: the rollout is a `Rollout` call made by `train_step` (not by an evaluation)."""
    import agent.rollout
    import agent.traces
    import train.grpo

    spec, lengths, in_step = json.loads(argv[0]), {phase: [] for phase in PHASES}, [False]
    if "client" in spec:
        _quick_retries(spec["client"], spec["pause"])
    owners = {"rollout": (agent.rollout.Rollout, "__call__"), "update": (train.grpo, "policy_update"),
              "checkpoint write": (train.grpo, "save_checkpoint"), "trace append": (agent.traces.TraceWriter, "write")}
    for phase, (owner, name) in owners.items():
        counts = (lambda: in_step[0]) if phase == "rollout" else (lambda: True)
        setattr(owner, name, _faulty(getattr(owner, name), phase, spec, lengths[phase], counts))
    train_step = train.grpo.train_step

    def step(*args, **kwargs):
        in_step[0] = True
        try:
            return train_step(*args, **kwargs)
        finally:
            in_step[0] = False

    train.grpo.train_step = step
    train.grpo.main(argv[1:])
    if "observe" in spec:
        Path(spec["observe"]).write_text(json.dumps(lengths))


def _quick_retries(client: dict, pause: dict) -> None:
    """Every `HTTPRetriever` of the child with `client`'s timeout, retries and backoff, and the
    trainer's pauses with `pause`'s first and longest wait: the trainer's flags set neither
    (a timeout of 30 s and a first pause of 5 s would make each retriever fault last minutes)."""
    import retrieval.client
    import train.grpo

    http = retrieval.client.HTTPRetriever

    class Quick(http):
        def __init__(self, url: str, **_ignored):
            super().__init__(url, **client)

    retrieval.client.HTTPRetriever = Quick
    train.grpo.SearchGuard = functools.partial(train.grpo.SearchGuard, **pause)


def _faulty(fn, phase: str, spec: dict, lengths: list[float], counts=lambda: True):
    """`fn` as a phase: its calls while `counts()` are counted and timed, and the one `spec`
    names dies inside."""
    calls = 0

    def wrapper(*args, **kwargs):
        nonlocal calls
        if not counts():
            return fn(*args, **kwargs)
        calls += 1
        if spec.get("phase") == phase and spec["call"] == calls:
            if phase == "trace append":
                _torn_write(args[0], args[1], spec["share"])
                _die()
            threading.Timer(spec["delay"], _die).start()
            fn(*args, **kwargs)
            _die()  # the phase ended before the timer: die at its end, still inside it
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        lengths.append(time.perf_counter() - start)
        return out

    return wrapper


# -- the parent: runs, restarts and the count ---------------------------------------------------


@dataclass
class Row:
    """One fault kind's line of the table."""

    kind: str
    injected: int = 0
    runs: int = 0
    survived: int = 0
    lost: int = 0
    duplicated: int = 0
    resumes: int = 0
    matched: int = 0


@dataclass
class Bench:
    """The runs' world, index and model, the trainer's flags, and the uninterrupted run."""

    work: Path
    world: Path
    index: Path
    model: Path
    steps: int = 4
    baseline_metrics: list[dict] = field(default_factory=list)
    baseline_keys: set = field(default_factory=set)
    lengths: dict = field(default_factory=dict)  # phase -> the uninterrupted run's mean call length (s)
    policy: Path | None = None  # a warm-started policy that searches: the retriever faults' runs
    extra: tuple[str, ...] = ()  # trainer flags over `flags`' own
    uninterrupted: str = "uninterrupted"  # the uninterrupted run's directory in `work`
    requests: int = 0  # /retrieve requests of the uninterrupted run (a searching bench's)
    searching: Bench | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def flags(self, out: Path) -> list[str]:
        return ["--model", str(self.model), "--data", str(self.world), "--index", str(self.index), "--output_dir", str(out),
                "--max_steps", str(self.steps), "--questions_per_step", "2", "--group_size", "3", "--oversample", "1",
                "--max_turns", "2", "--max_new_tokens", "6", "--eval_every", "0", "--eval_questions", "3",
                "--test_questions", "3", "--save_every", "1", "--keep_last", "2", "--learning_rate", "1e-3",
                "--temperature", "1.0", "--entropy_coef", "0.01", *self.extra]

    def start(self, out: Path, fault: dict, flags: tuple[str, ...] = ()) -> int:
        """One start of the run in `out` with `fault` waiting (and trainer `flags` over the bench's,
        such as another --index); its exit status (-9: killed)."""
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}
        out.mkdir(parents=True, exist_ok=True)
        log_path = out.with_name(out.name + ".log")
        with open(log_path, "a") as log:
            log.write(f"\n=== start with fault {json.dumps(fault)}\n")
            log.flush()
            code = subprocess.run([sys.executable, "-c", CHILD, json.dumps(fault), *self.flags(out), *flags], cwd=ROOT, env=env,
                                  stdout=log, stderr=subprocess.STDOUT, timeout=900, check=False).returncode
        if code not in (0, -signal.SIGKILL):
            console.print(f"[red]{out}: a start exited with status {code}; see {log_path}")
        return code

    def run_baseline(self) -> None:
        out, observed = self.work / "uninterrupted", self.work / "phase-lengths.json"
        if self.start(out, {"observe": str(observed)}) != 0:
            raise RuntimeError(f"the uninterrupted run failed: see {out}.log")
        self.baseline_metrics = step_metrics(out)
        self.baseline_keys = set(trajectory_keys(out))
        lengths = json.loads(observed.read_text())
        missing = [phase for phase in PHASES if not lengths[phase]]
        if missing:  # the trainer no longer calls the function a phase is watched through
            raise RuntimeError(f"the uninterrupted run never entered {', '.join(missing)}: see run_child's phases")
        self.lengths = {phase: sum(v) / len(v) for phase, v in lengths.items()}

    def steps_done(self, out: Path) -> int:
        from train.checkpoint import latest_checkpoint

        checkpoint = latest_checkpoint(out)
        return int(checkpoint.name.split("-")[1]) if checkpoint else 0

    def matches(self, out: Path) -> bool:
        """Whether `out`'s metrics.jsonl holds each step once, in order, as the uninterrupted run's."""
        rows = step_metrics(out)
        return [r["step"] for r in rows] == list(range(1, len(rows) + 1)) and all(
            math.isclose(r[k], b[k], rel_tol=1e-5, abs_tol=1e-7) for r, b in zip(rows, self.baseline_metrics)
            for k in COMPARED)

    def same_tests(self, out: Path) -> bool:
        """Whether `out`'s summary holds the uninterrupted run's test EM before and after training."""
        summaries = [json.loads((run / "summary.json").read_text()) for run in (out, self.work / self.uninterrupted)]
        return all(summaries[0].get(k, {}).get("em") == summaries[1][k]["em"] for k in ("test_before", "test_after"))

    def start_searching(self, out: Path, windows: list[Window]) -> tuple[int, FlakyServer]:
        """One start of the run in `out` searching a `FlakyServer` over the bench's index that
        fails through `windows`; its exit status and the server."""
        from retrieval import open_retriever

        server = FlakyServer(open_retriever(self.index, cache_size=0), windows)
        try:
            code = self.start(out, {"client": CLIENT, "pause": PAUSE}, ("--index", server.url))
        finally:
            server.close()
        return code, server

    def searcher(self) -> Bench:
        """The bench of the retriever faults, made once: the same runs by `policy` (the random
        tiny model never writes a search, so a retriever fault would never meet one), with turns
        of 24 tokens so that a search fits; its uninterrupted run searches a `FlakyServer` that
        never fails, and counts the /retrieve requests a run makes."""
        with self.lock:
            if self.searching is None:
                bench = Bench(self.work, self.world, self.index, self.policy, self.steps, extra=("--max_new_tokens", "24"),
                              uninterrupted="retriever-uninterrupted")
                out = self.work / bench.uninterrupted
                code, server = bench.start_searching(out, [])
                if code != 0 or not server.requests:
                    raise RuntimeError(f"the uninterrupted run of the retriever faults failed or never searched: see {out}.log")
                bench.baseline_metrics, bench.baseline_keys = step_metrics(out), set(trajectory_keys(out))
                bench.requests, self.searching = server.requests, bench
            return self.searching

    def finish(self, out: Path, row: Row) -> None:
        """Restart the run in `out` with no fault and add its outcome to `row`."""
        self.tally(out, row, self.start(out, {}), self.matches(out))

    def tally(self, out: Path, row: Row, code: int, matched: bool) -> None:
        """Add to `row` the run in `out` whose last start exited with `code`, and whether it `matched`."""
        row.resumes += 1
        row.matched += matched
        summary = out / "summary.json"
        row.survived += code == 0 and summary.exists() and {"final_model", "test_after"} <= set(json.loads(summary.read_text()))
        keys = trajectory_keys(out)
        row.lost += len(self.baseline_keys - set(keys))
        row.duplicated += len(keys) - len(set(keys))


def step_metrics(out: Path) -> list[dict]:
    from agent.traces import read_traces

    path = out / "metrics.jsonl"
    with warnings.catch_warnings():  # a torn last line is what some faults leave; the reader skips it
        warnings.simplefilter("ignore")
        return [r for r in read_traces(path) if r["step"] > 0] if path.exists() else []


def trajectory_keys(out: Path) -> list[tuple]:
    """(step, group, sample) of every trajectory in `out`'s traces.jsonl, repeats included."""
    from agent.traces import read_traces

    return [(t["step"], t["group_id"], t["sample"]) for t in read_traces(out / "traces.jsonl")]


def sigkill(phase: str, runs: int = 2, kills: int = 3):
    """The fault kind 'SIGKILL in `phase`': `runs` runs, each killed `kills` times at a random
    point of the phase in a random remaining step, then restarted to the end."""

    def kind(bench: Bench, rng: random.Random) -> Row:
        row = Row(f"SIGKILL in {phase}", runs=runs)
        for i in range(runs):
            out = bench.work / f"kill-{phase.replace(' ', '-')}-{i}"
            for start in range(kills):
                left = bench.steps - bench.steps_done(out)
                if left == 0:  # killed after its last checkpoint was complete: only the final evaluation is left
                    break
                fault = {"phase": phase, "call": rng.randint(1, left), "delay": rng.uniform(0, bench.lengths[phase]),
                         "share": rng.random()}
                killed = bench.start(out, fault) == -signal.SIGKILL
                row.injected += killed
                if start:  # this start resumed after the previous kill
                    row.resumes += 1
                    row.matched += bench.matches(out)
            bench.finish(out, row)
        return row

    return kind


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGES = {"model.safetensors": _empty, "trainer_state.pt": _cut_in_half, "summary.json": _empty,
           "complete.json": os.remove}


def damaged_checkpoint(damages: dict = DAMAGES):
    """The fault kind 'damaged newest checkpoint': for each of `damages` (file -> damage), a run
    killed at the start of a step >= 3, its newest checkpoint damaged so, then restarted to the
    end (it must fall back to the checkpoint before)."""

    def kind(bench: Bench, rng: random.Random) -> Row:
        row = Row("damaged newest checkpoint", runs=len(damages))
        for name, damage in damages.items():
            out = bench.work / f"damaged-{name}"
            bench.start(out, {"phase": "rollout", "call": rng.randint(3, bench.steps), "delay": 0.0})
            steps = bench.steps_done(out)
            damage(out / f"checkpoint-{steps}" / name)
            row.injected += bench.steps_done(out) == steps - 1  # the damage made the checkpoint incomplete
            bench.finish(out, row)
        return row

    return kind


# -- retriever faults: the runs search a server of the bench's that fails for a while ----------

PAUSE = {"first_wait": 0.2, "max_wait": 1.0}  # the child's pauses on failed searches
MODES = {"down": "retriever down", "slow": "retriever slow, past the client's timeout",
         "within": "retriever slow, within the client's timeout", "500": "retriever answers 500",
         "garbage": "retriever answers garbage"}


def retriever_fault(mode: str, runs: int = 1, windows: int = 2):
    """The fault kind `MODES[mode]`: `runs` runs searching a `FlakyServer` that fails `windows`
    times, from a random /retrieve request of the run for 1 to 3 s, each run in one start
    (the trainer pauses on the failed searches and rolls the step or evaluation out again)."""

    def kind(bench: Bench, rng: random.Random) -> Row:
        row, bench = Row(MODES[mode], runs=runs), bench.searcher()
        for i in range(runs):
            ats = sorted(rng.sample(range(1, bench.requests + 1), windows))
            planned = [Window(mode, at, rng.uniform(1.0, 3.0)) for at in ats]
            out = bench.work / f"retriever-{mode}-{i}"
            code, _ = bench.start_searching(out, planned)
            row.injected += sum(w.hits > 0 for w in planned)
            bench.tally(out, row, code, bench.matches(out) and bench.same_tests(out))
        return row

    return kind


FAULTS = [*(sigkill(phase) for phase in PHASES), damaged_checkpoint(), *(retriever_fault(mode) for mode in MODES)]


def build_bench(work: Path) -> Bench:
    """The runs' world (300 entities), its BM25 index and a random tiny model, built in `work`;
    and the embedded default's warm-started policy (built once in data/, minutes)."""
    from agent.data.world import WorldConfig, generate_world, write_world
    from retrieval.build import build_index
    from train.prepare import DEFAULT_DATA, DEFAULT_INDEX, ensure_tiny_policy
    from train.tiny import (
        TinyModelConfig,
        build_model,
        save_model_dir,
        tokenizer_for_world,
    )

    world, index, model = work / "world", work / "bm25", work / "model"
    if not (world / "corpus.jsonl").exists():
        write_world(generate_world(WorldConfig(seed=2, entities=300)), world)
    if not (index / "index.json").exists():
        build_index(world / "corpus.jsonl", index, "bm25", progress=False)
    if not (model / "config.json").exists():
        tokenizer = tokenizer_for_world(world, vocab_size=512)
        size = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
                               max_positions=512)
        save_model_dir(build_model(tokenizer, size, seed=0), tokenizer, model)
    return Bench(work, world, index, model, policy=ensure_tiny_policy(ROOT / DEFAULT_DATA, ROOT / DEFAULT_INDEX))


def table(rows: list[Row]) -> Table:
    out = Table(title="faults injected into GRPO runs, and what the runs kept")
    for column in ("fault", "injected", "runs survived", "traj. lost", "traj. duplicated", "resumes matched"):
        out.add_column(column, justify="left" if column == "fault" else "right")
    for r in rows:
        out.add_row(r.kind, str(r.injected), f"{r.survived}/{r.runs}", str(r.lost), str(r.duplicated),
                    f"{r.matched}/{r.resumes}")
    return out


def main(argv=None) -> list[Row]:
    p = argparse.ArgumentParser(prog="python -m eval.bench.faults", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/faults"), help="work directory (rebuilt runs, cached world)")
    p.add_argument("--seed", type=int, default=0, help="seeds where and when the faults strike")
    p.add_argument("--workers", type=int, default=2, help="fault kinds run side by side")
    args = p.parse_args(argv)
    start = time.perf_counter()
    bench = build_bench(args.out)
    for old in [*args.out.glob("kill-*"), *args.out.glob("damaged-*"), *args.out.glob("retriever-*"),
                *args.out.glob("uninterrupted*")]:
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    bench.run_baseline()
    with ThreadPoolExecutor(args.workers) as pool:
        rows = list(pool.map(lambda i: FAULTS[i](bench, random.Random(f"{args.seed}-{i}")), range(len(FAULTS))))
    console.print(table(rows))
    console.print(f"{sum(r.injected for r in rows)} faults in {time.perf_counter() - start:.0f} s; "
                  f"runs and their logs in {args.out}")
    (args.out / "faults.json").write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
