"""Tail averaging of the policy's weights (stochastic weight averaging, uniform).

RL updates from small groups are noisy: consecutive policies differ by as much as the
training moves them, and the last one is one draw among them. The uniform average of the
weights over the last steps of a run is a steadier final model (Izmailov et al. 2018,
"Averaging Weights Leads to Wider Optima"). Rollouts keep using the current weights; the
average is only what the run hands over at the end.

The average lives in float32 beside the trainable parameters (one extra copy of them; with
LoRA only of the adapter) and is saved in each checkpoint, so a resumed run averages the
same steps as an uninterrupted one. It holds consecutive steps up to the newest, so its
first step is that step minus `count` plus one: a run resumed with another `max_steps` or
`average_last` has another window, and the trainer then starts the average afresh
(`reset`) rather than hand over steps outside it.
"""

from __future__ import annotations

import contextlib

import torch


class WeightAverage:
    """Running uniform mean of `params` over the calls to `update`."""

    def __init__(self, params):
        self.params = list(params)
        self.mean: list[torch.Tensor] | None = None
        self.count = 0

    @torch.no_grad()
    def update(self) -> None:
        self.count += 1
        if self.mean is None:
            self.mean = [p.detach().float().clone() for p in self.params]
            return
        for m, p in zip(self.mean, self.params):
            m.add_(p.detach().float() - m, alpha=1.0 / self.count)

    def reset(self) -> None:
        self.mean, self.count = None, 0

    def first_step(self, last_step: int) -> int:
        """The first step averaged, when `last_step` was the newest (the steps are consecutive)."""
        return last_step - self.count + 1

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": [m.cpu() for m in self.mean] if self.mean is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if state["mean"] is not None and len(state["mean"]) != len(self.params):
            raise ValueError(f"weight average holds {len(state['mean'])} tensors, the model trains {len(self.params)}")
        self.count = state["count"]
        self.mean = None if state["mean"] is None else [m.to(p.device) for m, p in zip(state["mean"], self.params)]

    @contextlib.contextmanager
    def swapped_in(self):
        """The averaged weights in the model inside this context, the trained ones after it."""
        if self.mean is None:
            raise ValueError("no weights averaged yet")
        kept = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, m in zip(self.params, self.mean):
                p.copy_(m.to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for p, k in zip(self.params, kept):
                    p.copy_(k)
