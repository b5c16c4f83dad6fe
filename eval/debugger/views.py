"""What each view of the debugger shows, as plain data: the page and the terminal render these.

- `trajectory_view`: the question, then one card per step (think text, a search's query and
  passages with the gold ones marked, a judge's verdict and its ideal label, the answer
  with EM / F1), each with its step reward and advantage where the trace has them.
- `tokens_view`: every response token with its mask and sampler logprob, and where each
  step's tokens start and end: what was trained on.
- `group_view`: the samples of one question side by side, and the step where each one parts
  from the others.
"""

from __future__ import annotations

from agent.traces import record_steps
from eval.debugger.rows import example_of, outcome, trace_id
from rewards.outcome import exact_match, f1_score


def gold_passage_ids(record: dict) -> set[str]:
    """Support passages of the question, and those of each hop of its reasoning chain."""
    gold = set(record.get("support", []))
    for hop in record.get("meta", {}).get("chain", []) or []:
        if isinstance(hop, dict):
            gold.update(hop.get("support", []) or [])
    return gold


def judge_labels(record: dict) -> list[str | None]:
    """The ideal verdict of each judge step: the evaluation's, else from support labels (None
    where the question has none: guessing one would need an embedding model)."""
    n = len(record.get("steps", []))
    scored = record.get("eval", {}).get("judge_labels")
    if scored and len(scored) == n:
        return scored
    example = example_of(record)
    if not example.support or not any(s["kind"] == "judge" for s in record.get("steps", [])):
        return [None] * n
    from agent.types import Trajectory
    from rewards.judge import ideal_labels

    traj = Trajectory(example.id, "", 0, [], record_steps(record), record.get("answer"), record.get("finish", ""))
    return ideal_labels(traj, example)


def _injected(record: dict, step: dict) -> bool:
    """True when every token of the step was put there, not sampled (an edit of a fork)."""
    segments = record.get("segments", [])
    if step["segment"] >= len(segments):
        return False
    mask = segments[step["segment"]]["loss_mask"][step["span"][0]:step["span"][1]]
    return bool(mask) and not any(mask)


def _at(values, i):
    return values[i] if values is not None and i < len(values) else None


def step_cards(record: dict) -> list[dict]:
    gold, labels = gold_passage_ids(record), judge_labels(record)
    golds = list(record.get("golden_answers", []))
    cards = []
    for i, step in enumerate(record.get("steps", [])):
        card = {"index": i, "kind": step["kind"], "text": step["text"], "segment": step.get("segment", 0),
                "span": step["span"], "dropped": step.get("dropped", False), "error": step.get("error"),
                "reward": _at(record.get("step_rewards"), i), "advantage": _at(record.get("step_advantages"), i),
                "edited": _injected(record, step)}
        if step["kind"] == "search":
            card["passages"] = [{"id": p["id"], "title": p.get("title", ""), "text": p.get("text", ""),
                                 "score": p.get("score"), "gold": p["id"] in gold} for p in step.get("passages", [])]
        if step["kind"] == "judge":
            card["ideal"] = labels[i]
        if step["kind"] == "answer" and golds:
            card["em"], card["f1"] = exact_match(step["text"], golds), round(f1_score(step["text"], golds), 4)
        cards.append(card)
    return cards


def trajectory_view(record: dict) -> dict:
    meta = record.get("meta", {})
    return {
        "id": trace_id(record),
        "question": record.get("question", ""),
        "golden_answers": record.get("golden_answers", []),
        "hops": meta.get("hops"),
        "type": meta.get("type"),
        "answer": record.get("answer"),
        "finish": record.get("finish"),
        **outcome(record),
        "reward": record.get("reward"),
        "rewards": record.get("rewards") or {},
        "advantage": record.get("advantage"),
        "step": record.get("step"),
        "group": record.get("group_id"),
        "sample": record.get("sample"),
        "policy_version": record.get("policy_version"),
        "policy": record.get("policy"),
        "parent": record.get("parent"),
        "fork": record.get("fork"),
        "cards": step_cards(record),
    }


def tokens_view(record: dict, tokenizer=None) -> dict:
    """Per segment: the context's length and text, and each response token as
    [id, text, loss mask, sampler logprob]; `steps` mark where each step's tokens lie.
    Without a tokenizer, a token's text is its id."""
    def piece(i: int) -> str:
        return tokenizer.decode([i], skip_special_tokens=False) if tokenizer is not None else f"#{i}"

    segments = []
    for n, seg in enumerate(record.get("segments", [])):
        context = seg["context_ids"]
        segments.append({
            "index": n,
            "context_tokens": len(context),
            "context_text": tokenizer.decode(context, skip_special_tokens=False) if tokenizer is not None else None,
            "tokens": [[t, piece(t), m, round(lp, 4)] for t, m, lp in zip(seg["response_ids"], seg["loss_mask"], seg["logprobs"])],
            "steps": [{"index": i, "kind": s["kind"], "start": s["span"][0], "end": s["span"][1]}
                      for i, s in enumerate(record.get("steps", [])) if s.get("segment", 0) == n],
        })
    sampled = sum(sum(s["loss_mask"]) for s in record.get("segments", []))
    total = sum(len(s["loss_mask"]) for s in record.get("segments", []))
    return {"id": trace_id(record), "question": record.get("question", ""), "segments": segments,
            "sampled": sampled, "injected": total - sampled, "decoded": tokenizer is not None}


def parting_steps(step_lists: list[list[tuple[str, str]]]) -> list[int]:
    """For each sample's (kind, text) steps: the index of the first step where it parts from the
    sample that follows it longest (its length when another sample holds all of it).

    >>> parting_steps([[("search", "a"), ("answer", "x")], [("search", "a"), ("answer", "y")], [("search", "b")]])
    [1, 1, 0]
    """
    out = []
    for i, mine in enumerate(step_lists):
        best = 0
        for j, other in enumerate(step_lists):
            if i == j:
                continue
            n = 0
            while n < min(len(mine), len(other)) and mine[n] == other[n]:
                n += 1
            best = max(best, n)
        out.append(best)
    return out


def group_view(records: list[dict]) -> dict:
    """The samples of one group, in sample order, with where each parts from the rest."""
    records = sorted(records, key=lambda r: r.get("sample", 0))
    steps = [[(s["kind"], s["text"]) for s in r.get("steps", [])] for r in records]
    parts = parting_steps(steps)
    shared = min(parts) if parts else 0
    first = records[0] if records else {}
    return {
        "group": first.get("group_id"),
        "question": first.get("question", ""),
        "golden_answers": first.get("golden_answers", []),
        "step": first.get("step"),
        "shared_steps": shared,  # steps every sample took alike
        "samples": [{"id": trace_id(r), "sample": r.get("sample"), "reward": r.get("reward"),
                     "advantage": r.get("advantage"), "answer": r.get("answer"), "finish": r.get("finish"),
                     **outcome(r), "parts_at": p,
                     "steps": [{"kind": s["kind"], "text": s["text"], "dropped": s.get("dropped", False)}
                               for s in r.get("steps", [])]}
                    for r, p in zip(records, parts)],
    }

