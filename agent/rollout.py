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

`continue_from` / `stream_from` go on from a fork of a finished trajectory: its tokens up to
the fork's step as they were, then a person's edit (injected, loss mask 0), then the same
loop (`agent/fork.py` says which edits there are and where each one cuts).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from retrieval.types import Passage, Retriever

from agent.actions import NOT_USEFUL, STOP_TAGS, format_action, parse_action
from agent.engines.base import Engine, SamplingParams
from agent.fields import check_fields, doc
from agent.fork import Fork, prefix_for
from agent.prompts import (
    NO_RESULTS,
    OBSERVATION_CLOSE,
    OBSERVATION_OPEN,
    PROMPT_STYLES,
    SEARCH_FAILED,
    corrective_message,
    passage_header,
    render_prompt_ids,
    user_message,
)
from agent.types import Example, Segment, Step, Trajectory, TrajectoryGroup


@dataclass
class RolloutConfig:
    """Budgets and sampling of the agent loop."""

    max_turns: int = doc("generation turns per trajectory (a search, a judge and an answer are 3 turns)", 10, ge=1)
    max_new_tokens: int = doc("tokens the policy may generate in one turn", 64, ge=1)
    max_response_tokens: int = doc("sampled + injected tokens of one trajectory, all turns together", 1536, ge=1)
    max_context_tokens: int = doc("prompt + visible response tokens: the model's window", 2048, ge=1)
    passages_per_search: int | None = doc("passages each search returns (the retriever's k); none lets the entry "
                                          "point choose (train/grpo.py: 2 for the tiny model, else 3)", 3, ge=1)
    max_doc_tokens: int = doc("tokens kept of each passage's text", 64, ge=0)
    max_answer_chars: int = doc("longest answer in characters; a longer one is an invalid action", 200, ge=1)
    max_invalid: int = doc("invalid actions before the trajectory ends with finish=invalid", 3, ge=1)
    max_searches: int | None = doc("searches allowed per trajectory; one more is an invalid action (none = no cap)",
                                   None, ge=0)
    prompt_style: str = doc("auto | chat (the tokenizer's chat template) | compact (see agent/prompts.py)", "auto",
                            choices=PROMPT_STYLES)
    temperature: float = doc("sampling temperature (0 = greedy); logprobs are log softmax(logits / T)", 1.0, ge=0)
    top_p: float = doc("nucleus sampling: the smallest set of tokens holding this much probability (1 = off)", 1.0,
                       gt=0, le=1)
    top_k_sampling: int = doc("sample among the k most likely tokens only (0 = off)", 0, ge=0)

    def __post_init__(self) -> None:
        check_fields(self)


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
        self, examples: list[Example], group_size: int = 1, *, policy_version: int = 0, group_prefix: str = "",
        seed: int | None = None,
    ) -> list[Trajectory]:
        """Roll out `group_size` samples of every example; returns them example-major.
        `seed` seeds every turn's sampling: same seed, same rollouts."""
        *_, trajectories = self.stream(examples, group_size, policy_version=policy_version, group_prefix=group_prefix,
                                       seed=seed)  # the last of what the stream yields: the finished rollout
        return trajectories

    def stream(self, examples: list[Example], group_size: int = 1, *, policy_version: int = 0, group_prefix: str = "",
               seed: int | None = None) -> Iterator[list[Trajectory]]:
        """`__call__`, yielding the trajectories (the same objects, growing) after every turn and
        once finished: for a person watching the agent (`eval.chat`)."""
        if self.cfg.passages_per_search is None:
            raise ValueError("RolloutConfig.passages_per_search is None: set how many passages a search returns")
        runs = self._start(examples, group_size, policy_version, group_prefix)
        for _ in self._loop(runs, seed):
            yield [run.traj for run in runs]
        yield [run.traj for run in runs]

    def groups(self, examples: list[Example], group_size: int, **kwargs) -> list[TrajectoryGroup]:
        """`group_size` samples of every example, as one `TrajectoryGroup` per example."""
        trajectories = self(examples, group_size, **kwargs)
        return TrajectoryGroup.of(trajectories, [ex for ex in examples for _ in range(group_size)])

    def continue_from(self, forks: list[tuple[Trajectory, Example, Fork]], *, seed: int | None = None) -> list[Trajectory]:
        """Each (trajectory, its example, a fork of it) continued after the fork's edit; new
        trajectories, the originals are left as they were. A fork has `max_turns` turns of its own."""
        *_, trajectories = self.stream_from(forks, seed=seed)
        return trajectories

    def stream_from(self, forks: list[tuple[Trajectory, Example, Fork]], *,
                    seed: int | None = None) -> Iterator[list[Trajectory]]:
        """`continue_from`, yielding the trajectories (the same objects, growing) once the edit is
        applied, after every turn, and once finished."""
        if self.cfg.passages_per_search is None:
            raise ValueError("RolloutConfig.passages_per_search is None: set how many passages a search returns")
        runs, searches = [], []
        for traj, example, fork in forks:
            prefix = prefix_for(traj, fork)
            judged = None if prefix.judgeable_step is None else prefix.traj.steps[prefix.judgeable_step]
            run = _Run(prefix.traj, example, invalid=prefix.invalid, judgeable=prefix.judgeable, judgeable_step=judged)
            self._apply_edit(run, fork, searches)
            runs.append(run)
        if searches:
            self._search(searches)
        yield [run.traj for run in runs]
        for _ in self._loop(runs, seed):
            yield [run.traj for run in runs]
        yield [run.traj for run in runs]

    def _loop(self, runs: list[_Run], seed: int | None) -> Iterator[None]:
        """Turns until every run is done or `max_turns` are used; yields after each turn."""
        for turn in range(self.cfg.max_turns):
            active = [r for r in runs if not r.done]
            if not active:
                break
            self._turn(active, self.sampling_params(turn, seed))
            yield
        for run in runs:
            if not run.done:
                run.finish("max_turns")

    def _apply_edit(self, run: _Run, fork: Fork, searches: list) -> None:
        """Put a fork's edit at the end of its prefix, as injected tokens."""
        if fork.edit == "passages":
            step = run.traj.steps[fork.step]
            step.passages = list(fork.passages)
            start = len(run.segment.response_ids)
            if self._inject(run, self._observation_ids(step.passages, None)):
                run.judgeable, run.judgeable_step = (start, len(run.segment.response_ids)), step
            return
        text = user_message(fork.text) if fork.edit == "message" else (
            format_action("search", fork.text.strip()) if fork.edit == "query" else fork.text)
        ids = self.tokens(text)
        room = self._room(run)
        if len(ids) > room:
            raise ValueError(f"fork at step {fork.step}: the {fork.edit} is {len(ids)} tokens and only {room} fit "
                             "the rollout's token budgets")
        if fork.edit == "message":
            run.judgeable = run.judgeable_step = None  # a judge must directly follow its observation
            run.segment.append(ids, sampled=False)
            return
        self._act(run, self._record_turn(run, ids, [], sampled=False), searches)

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

    def sampling_params(self, turn: int, seed: int | None) -> SamplingParams:
        """What the engine samples turn `turn` with: the config's sampling, stops at the closing
        tags, and a seed of its own for each turn."""
        cfg = self.cfg
        return SamplingParams(
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k_sampling,
            stop_token_ids=self.stop_ids,
            stop_strings=self.stop_strings,
            seed=None if seed is None else seed * 1_000_003 + turn,
        )

    def _turn(self, active: list[_Run], params: SamplingParams) -> None:
        ready = []
        for run in active:
            if self._room(run) < 1:
                run.finish("max_tokens")
            else:
                ready.append(run)
        if not ready:
            return
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

    def _record_turn(self, run: _Run, ids: list[int], logprobs: list[float], sampled: bool = True) -> Step:
        """Append the turn's ids (sampled, or a person's edit: injected) and parse them into steps
        (a think step, then the action)."""
        seg, seg_index = run.segment, len(run.traj.segments) - 1
        start = len(seg.response_ids)
        seg.append(ids, sampled=sampled, logprobs=logprobs if sampled else None)
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
        results, error = self._retrieve([step.text for _, step in searches])
        for (run, step), passages in zip(searches, results):
            step.passages = passages
            step.error = error
            start = len(run.segment.response_ids)
            if self._inject(run, self._observation_ids(step.passages, error)):
                run.judgeable, run.judgeable_step = (start, len(run.segment.response_ids)), step

    def _retrieve(self, queries: list[str]) -> tuple[list[list[Passage]], str | None]:
        """Each query's passages; or, when the retriever raised or answered a different number
        of queries than it was asked (no answer can be matched to its query then), no passages
        and why the search failed: a failing retriever is an outcome of the step, not a crash."""
        try:
            results = self.retriever.search(queries, self.cfg.passages_per_search)
        except Exception as exc:
            return [[] for _ in queries], f"search failed: {type(exc).__name__}: {exc}"
        if len(results) != len(queries):
            return [[] for _ in queries], (f"search failed: the retriever answered {len(queries)} queries with "
                                           f"{len(results)} result lists")
        return [list(passages) for passages in results], None

    def _observation_ids(self, passages: list[Passage], error: str | None) -> list[int]:
        """The injected `<information>` block: the passages, or a plain line saying the search
        failed (its cause is for the trace, not the policy) or found nothing."""
        ids = list(self.tokens(OBSERVATION_OPEN))
        if error:
            ids += self.tokens(SEARCH_FAILED)
        elif not passages:
            ids += self.tokens(NO_RESULTS)
        for rank, passage in enumerate(passages, 1):
            ids += self.tokens(passage_header(rank, passage))
            ids += self.tokens(passage.text)[: self.cfg.max_doc_tokens]
            ids += self.tokens("\n")
        return ids + self.tokens(OBSERVATION_CLOSE)


class SearchesFailed(RuntimeError):
    """More searches failed than the caller allows (an evaluation: any; training: its threshold)."""


@dataclass(frozen=True)
class SearchTally:
    """How many of some trajectories' searches there were and how many failed (a failed
    search is a search step whose `error` says why the retriever did not answer it)."""

    searches: int
    failed: int
    first_error: str | None  # the first failed search's error, for a message

    @staticmethod
    def of(trajectories: list[Trajectory]) -> SearchTally:
        searches = [s for t in trajectories for s in t.steps if s.kind == "search"]
        failed = [s.error for s in searches if s.error is not None]
        return SearchTally(len(searches), len(failed), failed[0] if failed else None)

    @property
    def failure_rate(self) -> float:
        """The share of the searches that failed (0 without searches)."""
        return self.failed / self.searches if self.searches else 0.0
