"""Forks of a trajectory: the edit a person makes at one step, and the prefix it applies to.

A fork keeps the tokens of a trajectory up to a cut, exactly as they were (sampled tokens
with their logprobs and loss mask 1, injected ones with mask 0), applies one edit, and the
rollout loop continues from there (`Rollout.continue_from`). What a person writes or edits
is injected: tokenized once and masked out of the loss, like every observation.

The four edits of step `k`:

| edit       | cut                                   | then                                            |
| ---------- | ------------------------------------- | ----------------------------------------------- |
| `text`     | before step k                         | the text stands in for the agent's output there |
| `query`    | before search step k                  | `<search> query </search>` in its place         |
| `passages` | after search step k's action          | these passages are its observation              |
| `message`  | after step k (and its observation)    | a user message, then the agent goes on          |

Cutting before step k keeps the observation and any corrective message that came before
it, and the segments of earlier drops: the fork's context is exactly what the policy saw.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from agent.types import Passage, Segment, Trajectory

FORK_EDITS = ("text", "query", "passages", "message")


@dataclass(frozen=True)
class Fork:
    """One edit at step `step` of a trajectory (see the module docstring)."""

    step: int  # index into Trajectory.steps
    edit: str  # one of FORK_EDITS
    text: str = ""  # the agent's text, the query, or the user message
    passages: tuple[Passage, ...] = field(default_factory=tuple)  # for edit 'passages'

    def __post_init__(self) -> None:
        if self.edit not in FORK_EDITS:
            raise ValueError(f"Fork.edit must be one of {FORK_EDITS}, got {self.edit!r}")
        if self.edit != "passages" and not self.text.strip():
            raise ValueError(f"Fork.text is empty: a {self.edit!r} fork needs the text to put in")


@dataclass
class Prefix:
    """A trajectory cut for a fork, with what the loop needs to go on from it."""

    traj: Trajectory  # a copy: the original is never changed
    invalid: int  # invalid actions so far (they count toward max_invalid)
    judgeable: tuple[int, int] | None  # response span of an observation a judge may still drop
    judgeable_step: int | None  # index of the search step that observation belongs to


def check_fork(traj: Trajectory, fork: Fork) -> None:
    """Raise ValueError naming the step when `fork` cannot apply to `traj`."""
    n = len(traj.steps)
    if not 0 <= fork.step < n:
        raise ValueError(f"fork at step {fork.step}: the trajectory has steps 0..{n - 1}")
    kind = traj.steps[fork.step].kind
    if fork.edit in ("query", "passages") and kind != "search":
        raise ValueError(f"fork edit {fork.edit!r} at step {fork.step}: that step is a {kind}, not a search")


def cut_before(traj: Trajectory, index: int) -> Prefix:
    """Everything the trajectory holds before step `index` (`index == len(steps)`: all of it)."""
    steps = traj.steps
    if not 0 <= index <= len(steps):
        raise ValueError(f"cut before step {index}: the trajectory has steps 0..{len(steps) - 1}")
    if index == len(steps):
        seg_index, cut = len(traj.segments) - 1, len(traj.segments[-1].response_ids)
    else:
        seg_index, cut = steps[index].segment, steps[index].span[0]
    out = _truncated(traj, index, seg_index, cut)
    end, last = cut, index - 1
    if last >= 0 and out.steps[last].kind == "think" and out.steps[last].span[1] == cut:
        end, last = out.steps[last].span[0], last - 1  # the think opens the turn whose action is cut
    judgeable = judgeable_step = None
    if last >= 0 and out.steps[last].kind == "search" and out.steps[last].segment == seg_index:
        start = out.steps[last].span[1]
        if start < end:  # its observation was injected and only the cut turn came after it
            judgeable, judgeable_step = (start, end), last
    return Prefix(out, sum(s.kind == "invalid" for s in out.steps), judgeable, judgeable_step)


def cut_after_action(traj: Trajectory, index: int) -> Prefix:
    """Step `index` kept up to the end of its own tokens; its observation and later steps cut."""
    step = traj.steps[index]
    out = _truncated(traj, index + 1, step.segment, step.span[1])
    kept = out.steps[index]
    kept.passages, kept.error, kept.dropped = [], None, False
    return Prefix(out, sum(s.kind == "invalid" for s in out.steps), None, None)


def prefix_for(traj: Trajectory, fork: Fork) -> Prefix:
    """The prefix `fork` continues from (see the module docstring's table)."""
    check_fork(traj, fork)
    if fork.edit == "passages":
        return cut_after_action(traj, fork.step)
    if fork.edit == "message":
        return cut_before(traj, fork.step + 1)
    return cut_before(traj, fork.step)


def _truncated(traj: Trajectory, n_steps: int, seg_index: int, cut: int) -> Trajectory:
    """A deep copy keeping steps[:n_steps], segments[:seg_index] whole and segment
    `seg_index` up to response position `cut`; drops by judges that were cut are undone."""
    seg = traj.segments[seg_index]
    segments = copy.deepcopy(traj.segments[:seg_index]) + [Segment(
        list(seg.context_ids), seg.response_ids[:cut], seg.loss_mask[:cut], seg.logprobs[:cut])]
    steps = copy.deepcopy(traj.steps[:n_steps])
    # A drop is made by the judge right after the search; a search whose judge was cut is not dropped.
    for i, step in enumerate(steps):
        if step.dropped and (i + 1 >= len(steps) or steps[i + 1].kind != "judge"):
            step.dropped = False
    return Trajectory(traj.example_id, traj.group_id, traj.sample, segments, steps, answer=None, finish="",
                      policy_version=traj.policy_version)
