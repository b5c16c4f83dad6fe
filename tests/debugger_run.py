"""A small run directory for the debugger's tests: two training steps of three questions x three
samples, rolled out by scripted engines over fixed passages (one of them hostile HTML)."""

from __future__ import annotations

import json

from agent.rollout import Rollout, RolloutConfig
from agent.traces import TraceWriter, trajectory_record
from agent.types import Example, Passage
from fakes import ScriptedEngine, FixedRetriever

HOSTILE = Passage("x9", '<img src=x onerror="window.__pwned=1">',
                  "<script>window.__pwned=1</script> Orin Kael was born in Velmora, not Dastmoor.", 0.95)
PASSAGES = [
    Passage("d1", "Orin Kale", "Orin Kale was born in Dastmoor.", 0.9),
    Passage("d2", "Orin Kael", "Orin Kael was born in Velmora.", 0.8),
    Passage("d3", "Velmora", "Velmora is a city in Dastria.", 0.7),
    HOSTILE,
]
EXAMPLES = [
    Example("q1", "Where was Orin Kael born?", ["Velmora"], support=["d2"], meta={"hops": 1, "type": "birthplace"}),
    Example("q2", "Which country is Velmora in?", ["Dastria"], support=["d3"], meta={"hops": 1, "type": "country"}),
    Example("q3", "In which country was Orin Kael born?", ["Dastria"], support=["d2", "d3"], meta={"hops": 2, "type": "country"}),
]
SCRIPTS = [  # one per sample of a group: they share the first search, then part
    ["<search>Orin Kael</search>", "<answer>Velmora</answer>"],
    ["<search>Orin Kael</search>", "<judge>not useful</judge>", "<search>Velmora</search>", "<answer>Dastmoor</answer>"],
    ["<think>who is Orin Kael</think><search>Orin Kael</search>", "<judge>useful</judge>", "<answer>Dastria</answer>"],
]
CFG = RolloutConfig(passages_per_search=3, max_doc_tokens=24)


def reward_of(traj, example) -> float:
    return 1.0 if traj.answer in example.answers else 0.0


def write_run(root, tokenizer, steps: int = 2):
    """traces.jsonl and metrics.jsonl of a `steps`-step run under `root`; returns `root`."""
    root.mkdir(parents=True, exist_ok=True)
    writer, metrics = TraceWriter(root / "traces.jsonl"), []
    for step in range(1, steps + 1):
        records, rewards = [], []
        for ex in EXAMPLES:
            group = []
            for sample, script in enumerate(SCRIPTS):
                [traj] = Rollout(ScriptedEngine(tokenizer, script), FixedRetriever(PASSAGES), CFG, tokenizer)([ex])
                traj.group_id, traj.sample, traj.policy_version = f"s{step}:{ex.id}", sample, step - 1
                group.append(traj)
            values = [reward_of(t, ex) + 0.1 * sum(s.kind == "search" for s in t.steps) for t in group]
            mean = sum(values) / len(values)
            for traj, value in zip(group, values):
                per_step = [0.1 if s.kind == "search" else 0.0 for s in traj.steps]
                records.append(trajectory_record(
                    traj, ex, tokenizer, step=step, reward=value, rewards={"em": reward_of(traj, ex), "search": value - reward_of(traj, ex)},
                    step_rewards=per_step, advantage=round(value - mean, 4),
                    step_advantages=[round(value - mean + r, 4) for r in per_step]))
                rewards.append(value)
        writer.write(records)
        metrics.append({"step": step, "reward": sum(rewards) / len(rewards), "em": 0.4 + 0.1 * step})
    (root / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return root
