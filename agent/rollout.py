"""The multi-turn agent loop: one batched rollout over examples x G samples.

Each turn generates for every active trajectory at once, parses each output into an
action, sends every search query of the turn to the retriever in one call, and appends
what comes back. Generated ids are kept exactly as sampled (loss_mask 1); everything the
environment injects is tokenized once and appended with loss_mask 0. Nothing the policy
generated is ever decoded and re-encoded into the training ids.

A `<judge>not useful</judge>` right after an observation removes that observation from
the context of every later turn (ReSeek). The trajectory then starts a new `Segment` whose
context is the edited one, so the trainer scores each token against the context the
policy actually saw when it produced it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from retrieval.types import Passage, Retriever

from agent.actions import NOT_USEFUL, STOP_TAGS, parse_action
from agent.engines.base import Engine, SamplingParams
from agent.prompts import (
    NO_RESULTS,
    OBSERVATION_CLOSE,
    OBSERVATION_OPEN,
    corrective_message,
    passage_header,
    render_prompt_ids,
)
from agent.types import Example, Segment, Step, Trajectory


@dataclass
class RolloutConfig:
    """Budgets and sampling of the agent loop."""

    max_turns: int = 10  # generation turns per trajectory (a search, a judge and an answer are 3 turns)
    max_new_tokens: int = 64  # tokens the policy may generate in one turn
    max_response_tokens: int = 1536  # sampled + injected tokens over the whole trajectory
    max_context_tokens: int = 2048  # prompt + visible response: the model's window
    top_k: int = 3  # passages per search
    max_doc_tokens: int = 64  # tokens kept of each passage's text
    max_answer_chars: int = 200  # longer answers are invalid actions
    max_invalid: int = 3  # invalid actions before the trajectory ends with finish='invalid'
    max_searches: int | None = None  # searches allowed; one more is an invalid action (None = no cap)
    prompt_style: str = "auto"  # auto | chat | compact (see agent.prompts)
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k_sampling: int = 0  # 0 = off
    seed: int | None = None  # seeds every turn's sampling; same seed, same rollouts
    # The first `greedy_samples` samples of each group decode greedily (logprobs at
    # `temperature` all the same, as the trainer recomputes them): the policy's own greedy
    # answer competes inside its group. 0 = every sample at `temperature`.
    greedy_samples: int = 0

    def __post_init__(self) -> None:
        for name in ("max_turns", "max_new_tokens", "max_response_tokens", "max_context_tokens", "top_k", "max_invalid"):
            if getattr(self, name) < 1:
                raise ValueError(f"RolloutConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_doc_tokens < 0:
            raise ValueError(f"RolloutConfig.max_doc_tokens must be >= 0, got {self.max_doc_tokens}")
        if self.greedy_samples < 0:
            raise ValueError(f"RolloutConfig.greedy_samples must be >= 0, got {self.greedy_samples}")


@dataclass
class _Run:
    """Mutable state of one trajectory while it is being rolled out."""

    traj: Trajectory
    example: Example
    invalid: int = 0
    # Response span [start, end) of the latest observation, while a judge may still drop it.
    judgeable: tuple[int, int] | None = None
    judgeable_step: Step | None = None
    done: bool = False

    @property
    def segment(self) -> Segment:
        return self.traj.segments[-1]

    @property
    def n_visible(self) -> int:
        return len(self.segment.context_ids) + len(self.segment.response_ids)

    def finish(self, reason: str) -> None:
        self.traj.finish, self.done = reason, True


class TokenCache:
    """Tokenizes injected text once per distinct string (passages repeat across samples)."""

    def __init__(self, tokenizer, maxsize: int = 200_000):
        self.tokenizer, self.maxsize, self._ids = tokenizer, maxsize, {}

    def __call__(self, text: str) -> list[int]:
        ids = self._ids.get(text)
        if ids is None:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(self._ids) >= self.maxsize:
                self._ids.clear()
            self._ids[text] = ids
        return ids


def stop_params(tokenizer) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Closing tags as stop token ids where they are single tokens, else as stop strings."""
    vocab = tokenizer.get_vocab()
    ids = tuple(vocab[t] for t in STOP_TAGS if t in vocab)
    strings = tuple(t for t in STOP_TAGS if t not in vocab)
    return ids, strings


def token_index_after(tokenizer, ids: list[int], marker: str) -> int | None:
    """Smallest m such that decode(ids[:m]) contains `marker` (None if it never does)."""
    single = tokenizer.get_vocab().get(marker)
    if single is not None and single in ids:
        return ids.index(single) + 1
    if marker not in tokenizer.decode(ids, skip_special_tokens=False):
        return None
    lo, hi = 1, len(ids)
    while lo < hi:  # the property is monotone in m, so bisect over prefixes
        mid = (lo + hi) // 2
        if marker in tokenizer.decode(ids[:mid], skip_special_tokens=False):
            hi = mid
        else:
            lo = mid + 1
    return lo


class Rollout:
    """Runs the agent loop for one engine, retriever and tokenizer."""

    def __init__(self, engine: Engine, retriever: Retriever, cfg: RolloutConfig | None = None, tokenizer=None):
        self.engine, self.retriever = engine, retriever
        self.cfg = cfg or RolloutConfig()
        self.tokenizer = tokenizer or engine.tokenizer
        self.tokens = TokenCache(self.tokenizer)
        self.stop_ids, self.stop_strings = stop_params(self.tokenizer)

    def __call__(
        self, examples: list[Example], group_size: int = 1, *, policy_version: int = 0, group_prefix: str = ""
    ) -> list[Trajectory]:
        """Roll out `group_size` samples of every example; returns them example-major."""
        runs = self._start(examples, group_size, policy_version, group_prefix)
        for turn in range(self.cfg.max_turns):
            active = [r for r in runs if not r.done]
            if not active:
                break
            self._turn(active, turn)
        for run in runs:
            if not run.done:
                run.finish("max_turns")
        return [run.traj for run in runs]

    # -- setup -------------------------------------------------------------------------

    def _start(self, examples, group_size, policy_version, group_prefix) -> list[_Run]:
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        runs, seen = [], {}
        for example in examples:
            prompt = render_prompt_ids(self.tokenizer, example.question, self.cfg.prompt_style)
            n = seen[example.id] = seen.get(example.id, 0) + 1
            group_id = f"{group_prefix}{example.id}" + (f"#{n - 1}" if n > 1 else "")
            for sample in range(group_size):
                traj = Trajectory(
                    example_id=example.id,
                    group_id=group_id,
                    sample=sample,
                    segments=[Segment(context_ids=list(prompt))],
                    policy_version=policy_version,
                )
                runs.append(_Run(traj, example))
        return runs

    # -- one turn ----------------------------------------------------------------------

    def _turn(self, active: list[_Run], turn: int) -> None:
        cfg = self.cfg
        ready = []
        for run in active:
            if self._room(run) < 1:
                run.finish("max_tokens")
            else:
                ready.append(run)
        if not ready:
            return
        params = SamplingParams(
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k_sampling,
            stop_token_ids=self.stop_ids,
            stop_strings=self.stop_strings,
            seed=None if cfg.seed is None else cfg.seed * 1_000_003 + turn,
            greedy_rows=frozenset(i for i, run in enumerate(ready) if run.traj.sample < cfg.greedy_samples),
        )
        outputs = self.engine.generate([run.segment.full_ids for run in ready], params)

        searches: list[tuple[_Run, Step]] = []
        for run, out in zip(ready, outputs):
            room = self._room(run)
            ids, logprobs = list(out.token_ids), list(out.logprobs)
            over_budget = len(ids) > room
            if over_budget:  # sampled past the budget: keep what fits, the tail was never seen
                ids, logprobs = ids[:room], logprobs[:room]
            step = self._record_turn(run, ids, logprobs)
            if over_budget and step.kind != "answer":
                run.finish("max_tokens")
                continue
            self._act(run, step, searches)
        if searches:
            self._search(searches)

    def _room(self, run: _Run) -> int:
        """Tokens this trajectory may still append, by both budgets."""
        used = run.traj.n_response_tokens
        return min(self.cfg.max_response_tokens - used, self.cfg.max_context_tokens - run.n_visible)

    def _record_turn(self, run: _Run, ids: list[int], logprobs: list[float]) -> Step:
        """Append the sampled ids and parse them into steps (a think step, then the action)."""
        seg, seg_index = run.segment, len(run.traj.segments) - 1
        start = len(seg.response_ids)
        seg.append(ids, sampled=True, logprobs=logprobs)
        end = len(seg.response_ids)
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        action = parse_action(text, self.cfg.max_answer_chars)
        if action.kind == "invalid":
            step = Step("invalid", text, (start, end), segment=seg_index, error=action.error)
            run.traj.steps.append(step)
            return step
        action_start = start
        if action.think is not None:
            think_end = token_index_after(self.tokenizer, ids, "</think>")
            action_start = start + (think_end if think_end is not None else 0)
            run.traj.steps.append(Step("think", action.think, (start, action_start), segment=seg_index))
        step = Step(action.kind, action.text, (action_start, end), segment=seg_index)
        run.traj.steps.append(step)
        return step

    def _act(self, run: _Run, step: Step, searches: list) -> None:
        judgeable, run.judgeable = run.judgeable, None
        judged_step, run.judgeable_step = run.judgeable_step, None
        if step.kind == "answer":
            run.traj.answer = step.text
            run.finish("answered")
        elif step.kind == "search":
            n_searches = sum(s.kind == "search" for s in run.traj.steps)
            if self.cfg.max_searches is not None and n_searches > self.cfg.max_searches:
                self._invalid(run, step, f"search budget of {self.cfg.max_searches} used up: answer now")
            else:
                searches.append((run, step))
        elif step.kind == "judge":
            if judgeable is None:
                self._invalid(run, step, "judge must directly follow an observation")
            elif step.text == NOT_USEFUL:
                judged_step.dropped = True
                self._drop(run, judgeable)
        else:
            self._invalid(run, step, step.error or "invalid action")

    def _invalid(self, run: _Run, step: Step, error: str) -> None:
        step.kind, step.error = "invalid", error
        run.invalid += 1
        if run.invalid >= self.cfg.max_invalid:
            run.finish("invalid")
            return
        self._inject(run, self.tokens(corrective_message(error)))

    def _drop(self, run: _Run, span: tuple[int, int]) -> None:
        """Start a new segment whose context omits the observation at response `span`."""
        seg = run.segment
        start, end = len(seg.context_ids) + span[0], len(seg.context_ids) + span[1]
        full = seg.full_ids
        run.traj.segments.append(Segment(context_ids=full[:start] + full[end:]))

    def _inject(self, run: _Run, ids: list[int]) -> bool:
        """Append environment tokens; finishes the trajectory when they do not fit."""
        if len(ids) > self._room(run):
            run.finish("max_tokens")
            return False
        run.segment.append(ids, sampled=False)
        return True

    # -- retrieval ---------------------------------------------------------------------

    def _search(self, searches: list[tuple[_Run, Step]]) -> None:
        queries = [step.text for _, step in searches]
        try:
            results = self.retriever.search(queries, self.cfg.top_k)
            error = None
        except Exception as exc:  # a failing retriever is an outcome of the step, not a crash
            results, error = [[] for _ in queries], f"search failed: {type(exc).__name__}: {exc}"
        for (run, step), passages in zip(searches, results):
            step.passages = list(passages)
            step.error = error
            start = len(run.segment.response_ids)
            if self._inject(run, self._observation_ids(step.passages, error)):
                run.judgeable, run.judgeable_step = (start, len(run.segment.response_ids)), step

    def _observation_ids(self, passages: list[Passage], error: str | None) -> list[int]:
        ids = list(self.tokens(OBSERVATION_OPEN))
        if error:
            ids += self.tokens(error)
        elif not passages:
            ids += self.tokens(NO_RESULTS)
        for rank, passage in enumerate(passages, 1):
            ids += self.tokens(passage_header(rank, passage))
            ids += self.tokens(passage.text)[: self.cfg.max_doc_tokens]
            ids += self.tokens("\n")
        return ids + self.tokens(OBSERVATION_CLOSE)
