"""The debugger's views in a terminal (rich): for `eval.show` and `eval.chat`.

Trace text is always put in `rich.text.Text` objects, never in markup: a passage holding
`[bold]` or `[link=...]` prints as those characters.
"""

from __future__ import annotations

import math

from rich.console import Group
from rich.panel import Panel
from rich.text import Text

KIND_STYLES = {"think": "magenta", "search": "blue", "judge": "yellow", "answer": "green", "invalid": "red"}


def _num(x, signed: bool = False) -> str:
    if x is None:
        return "–"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def header(view: dict) -> Panel:
    body = Text()
    body.append(view["question"], style="bold")
    body.append("\ngold: ", style="dim")
    body.append(", ".join(view["golden_answers"]) or "–", style="bold yellow")
    facts = [f"finish {view['finish']}", f"answer {view['answer']!r}" if view["answer"] is not None else "no answer"]
    if view.get("em") is not None:
        facts.append(f"EM {view['em']:g} · F1 {view['f1']:.2f}")
    if view.get("category"):
        facts.append(view["category"].replace("_", " "))
    if view.get("reward") is not None:
        facts.append(f"reward {_num(view['reward'])}")
    if view.get("advantage") is not None:
        facts.append(f"advantage {_num(view['advantage'], True)}")
    body.append("\n" + " · ".join(facts), style="dim")
    if view.get("rewards"):
        body.append("\nreward parts: " + " · ".join(f"{k} {_num(v)}" for k, v in view["rewards"].items()), style="dim")
    if view.get("fork"):
        body.append(f"\nfork of {view['parent']} at step {view['fork']['step']} ({view['fork']['edit']} edited)",
                    style="magenta")
    title = Text(f"{view['id']}" + (f" · step {view['step']}" if view.get("step") is not None else ""))
    return Panel(body, title=title, title_align="left", border_style="bright_black")


def card(c: dict) -> Panel:
    """One step as a panel: what the agent did, what came back, and what it earned."""
    style = KIND_STYLES.get(c["kind"], "white")
    body = Text()
    if c["kind"] == "search":
        body.append(c["text"], style="bold blue")
        if c.get("error"):
            body.append(f"\n{c['error']}", style="red")
        for rank, p in enumerate(c.get("passages", []), 1):
            body.append(f"\n{rank}. ", style="dim")
            body.append(p["title"], style="bold strike" if c["dropped"] else "bold")
            body.append(f"  {p['id']}" + (f" · {p['score']:.2f}" if p.get("score") is not None else ""), style="dim")
            if p.get("gold"):
                body.append("  ★ gold", style="bold yellow")
            body.append("\n   " + p["text"], style="dim strike" if c["dropped"] else "")
    elif c["kind"] == "judge":
        body.append(c["text"], style="bold")
        if c.get("ideal"):
            right = c["ideal"] == c["text"]
            body.append(f"   ideal: {c['ideal']} {'✓' if right else '✗'}", style="green" if right else "red")
    elif c["kind"] == "answer":
        body.append(c["text"], style="bold green")
        if c.get("em") is not None:
            body.append(f"   EM {c['em']:g} · F1 {c['f1']:.2f}", style="dim")
    elif c["kind"] == "invalid":
        body.append((c.get("error") or "invalid action") + "\n", style="red")
        body.append(c["text"], style="dim")
    else:
        body.append(c["text"], style="italic")
    title = Text(f"{c['index']} · {c['kind']}", style=f"bold {style}")
    for flag, on in (("dropped by the judge", c.get("dropped")), ("edited", c.get("edited"))):
        if on:
            title.append(f"  {flag}", style="yellow")
    values = [f"reward {_num(c['reward'], True)}" if c.get("reward") is not None else "",
              f"adv {_num(c['advantage'], True)}" if c.get("advantage") is not None else ""]
    subtitle = Text(" · ".join(v for v in values if v), style="dim") if any(values) else None
    return Panel(body, title=title, title_align="left", subtitle=subtitle, subtitle_align="right", border_style=style)


def trajectory(view: dict) -> Group:
    return Group(header(view), *(card(c) for c in view["cards"]))


def tokens(view: dict) -> Group:
    """Response tokens: sampled ones coloured from red (unlikely) to plain (likely), injected ones
    dim on grey, each step's start marked."""
    parts = []
    for seg in view["segments"]:
        text = Text()
        starts = {s["start"]: s for s in seg["steps"]}
        for i, (_, piece, mask, logprob) in enumerate(seg["tokens"]):
            if i in starts:
                step = starts[i]
                text.append(f"⟦{step['index']} {step['kind']}⟧", style=f"bold {KIND_STYLES.get(step['kind'], 'white')}")
            if mask:
                unlikely = 1 - math.exp(logprob)
                text.append(piece, style=f"on rgb({int(60 + 170 * unlikely)},40,30)" if unlikely > 0.1 else "")
            else:
                text.append(piece, style="grey50 on grey15")
        title = f"segment {seg['index']} · {seg['context_tokens']} context tokens · {len(seg['tokens'])} response tokens"
        parts.append(Panel(text, title=title, title_align="left", border_style="bright_black"))
    legend = Text(f"{view['sampled']} sampled tokens (trained on; red = unlikely to the sampler) · "
                  f"{view['injected']} injected (loss mask 0, grey)", style="dim")
    return Group(legend, *parts)
