"""GRPO for search agents, with step rewards placed on the tokens that end each step.

    python train/grpo.py                                    # the embedded default, end to end
    python train/grpo.py --config grpo.yaml --model Qwen/Qwen2.5-3B-Instruct --lora_r 16

What it simplifies, one idea each:
1. One process, one policy. Rollouts sample from the trained weights, from a bf16 copy of
   them (`--precision`), or from an in-process vLLM engine loaded with them after every
   update; the sampler's own logprobs are the old logprobs.
2. One batch of questions a step, `group_size` samples each. `oversample` times as many
   questions are rolled out, and the groups whose samples scored differently are trained
   first (DAPO's dynamic sampling); every rolled-out trajectory is traced.
3. Token-level advantages: GRPO's group-relative outcome advantage, placed where a group's
   samples part (tree credit), plus group-normalised step rewards on the tokens that end
   each step (`train/update.py`, `train/advantages.py`).
4. The loss is PPO's clipped surrogate with clip-higher and a KL term to the warm start
   (`train/loss.py`), one pass over the batch; identical rows are trained once, weighted.
5. The run hands over `output_dir/final`, the average of the weights of its last
   `average_last` steps, and evaluates it greedily on the held-out test split.

`train_step` is one step: rollout -> score -> pick groups -> advantages -> update. `main`
checks the config and holds `output_dir` (a second run on it is refused while the first
lives); `run` reads top to bottom: setup, resume, loop, final evaluation. A run resumes from
the newest complete checkpoint in `output_dir` and logs each step once; a step whose searches
failed stops or pauses it before the update (`train/search_guard.py`).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console

from agent.engines.hf import HFEngine
from agent.fields import ConfigError, check_fields
from agent.rollout import Rollout, RolloutConfig
from agent.traces import TraceWriter, trajectory_record
from agent.types import Example, TrajectoryGroup
from retrieval import cli
from rewards.base import set_step
from rewards.registry import build_reward
from train.advantages import AdvantageConfig
from train.averaging import WeightAverage
from train.batching import LogprobsForward
from train.checkpoint import RunState, latest_checkpoint, resume_run, save_atomic, save_checkpoint, write_atomic
from train.config import doc, parse_config, section
from train.demos import StepDemos, progress_bar
from train.distributed import ONE, Processes, whole_copy, whole_weights
from train.hardware import machine, pick_device
from train.lock import hold_output_dir
from train.loss import LossConfig
from train.metrics_log import TRACKERS, Trackers, append_jsonl, plot_curves, truncate_after
from train.policy import (Policy, PolicyConfig, Precision, load_policy, make_sampler, resolve_precision, sampler_weights,
                          training_attention)
from train.questions import check_shares, load_questions, next_questions
from train.search_guard import ON_FAILURE, SearchesFailed, SearchGuard, check_answers
from train.tiny import is_embedded, tiny_policy_dir
from train.update import Advantages, OptimConfig, advantages_for, group_stats, lr_scheduler, make_optimizer, policy_update

console = Console(stderr=True)

DEFAULT_REWARDS = ('[{"name": "em", "weight": 1.0}, {"name": "judge", "weight": 0.2}, {"name": "correctness", "weight": 0.5}, '
                   '{"name": "grounding", "weight": 1.0, "r_search": 0.5}]')


@dataclass
class GRPOConfig:
    """GRPO on a search agent: the run's own settings, then one section per part of a step."""

    data: str = doc("generated world directory (train/dev/test.jsonl, corpus.jsonl) or a QA directory", "data/world-0")
    index: str = doc("retrieval index directory (python -m retrieval.build) or server URL", "indexes/world-0")
    train_data: str | None = doc("QA directory whose train split the rollouts are drawn from, searching "
                                 "train_index (default: data's own); dev and test stay data's", None)
    train_index: str | None = doc("retrieval index of train_data (directory or server URL; required with it)", None)
    retrieval_failure_threshold: float = doc(
        "share of a step's searches that may fail (the retriever raised, or did not answer after its retries) and be "
        "trained on as the policy saw them, an observation saying 'Search failed.'; past it on_retrieval_failure acts "
        "before the update. Evaluations allow no failed search", 0.1, ge=0, le=1)
    on_retrieval_failure: str = doc(
        "stop: end the run with an error naming the retriever (the same command resumes from the last checkpoint) | "
        "pause: wait, 5 s and doubling up to 5 min, until the retrieval server's /health answers, then roll the step "
        "out again. Either way a server that does not answer at start-up stops the run", "pause", choices=ON_FAILURE)
    output_dir: str = doc("checkpoints, metrics.jsonl, traces.jsonl, summary.json and curves.png", "outputs/grpo")
    max_steps: int = doc("training steps (batches of questions)", 40, ge=1)
    questions_per_step: int = doc("questions whose groups the update trains on, per step", 24, ge=1)
    group_size: int = doc("samples per question (the GRPO group)", 4, ge=1)
    oversample: float = doc(
        "DAPO's dynamic sampling (Yu et al. 2025): roll out questions_per_step x this many questions and train on "
        "questions_per_step of their groups, those whose samples scored differently first, settled ones only to "
        "fill up. 1 = train on every group rolled out", 2.0, ge=1)
    rewards: str = doc("reward spec: a JSON list (or YAML list) of {name, weight, ...} (rewards/registry.py)",
                       DEFAULT_REWARDS)
    average_last: int = doc("the final model is the uniform average of the weights after each of the last N steps "
                            "(tail averaging, train/averaging.py); 0 = the last weights", 30, ge=0)
    eval_every: int = doc("steps between greedy dev evaluations (0 = only before training)", 0, ge=0)
    eval_questions: int = doc("dev questions per evaluation", 200, ge=0)
    test_questions: int = doc("test questions evaluated greedily before and after training (0 = none)", 500, ge=0)
    save_every: int = doc("steps between checkpoints (the last step is always saved)", 10, ge=1)
    keep_last: int = doc("complete checkpoints kept on disk, newest first", 2, ge=1)
    report_to: str = doc("none | tensorboard | wandb | trackio (comma-separated)", "none")
    resume: bool = doc("resume from the newest complete checkpoint in output_dir", True)
    seed: int = doc("seed of data order, rollouts and initialisation", 0, ge=0)
    policy: PolicyConfig = section(PolicyConfig)
    rollout: RolloutConfig = section(RolloutConfig, temperature=0.3, passages_per_search=None)
    advantage: AdvantageConfig = section(AdvantageConfig)
    loss: LossConfig = section(LossConfig)
    optim: OptimConfig = section(OptimConfig)

    def __post_init__(self):
        check_fields(self)
        if (self.train_data is None) != (self.train_index is None):
            raise ConfigError("train_data and train_index go together: the train questions need the index of their "
                              f"own corpus (got train_data={self.train_data!r}, train_index={self.train_index!r})")
        unknown = sorted({n.strip() for n in self.report_to.split(",")} - set(TRACKERS))
        if unknown:
            raise ConfigError(f"report_to must be a comma-separated list of {', '.join(TRACKERS)}, got {self.report_to!r}")
        try:
            build_reward(json.loads(self.rewards))
        except json.JSONDecodeError as error:
            raise ConfigError(f"rewards must be a JSON list of reward specs, got {self.rewards!r} ({error})") from None
        # Defaults that depend on another section, derived once here.
        if self.rollout.passages_per_search is None:  # the tiny policy's warm start read 2 passages a search
            self.rollout.passages_per_search = 2 if is_embedded(self.policy.model) else 3
        if self.loss.tis_cap is None:
            self.loss.tis_cap = 2.0 if self.policy.rollout_engine == "vllm" else 0.0


# -- one step -----------------------------------------------------------------------------------


@dataclass
class Trainer:
    """What every step uses, built once by `build_trainer`."""

    cfg: GRPOConfig
    policy: Policy  # the trained model (sharded under FSDP and DeepSpeed ZeRO-3), its tokenizer and reference
    whole: Policy  # its weights whole: `policy` itself, or under FSDP/DeepSpeed a copy refreshed after every
    # update; what the engines, the weight average and the checkpoints read
    precision: Precision
    engine: HFEngine  # over the trained weights (`whole`): the greedy evaluations
    sampler: object  # samples the rollouts: `engine`, an HFEngine over a bf16 copy, or a VLLMEngine
    retriever: object  # searched by the rollouts of train questions
    reward: object  # the reward spec's WeightedSum
    optimizer: torch.optim.Optimizer
    scheduler: object
    average: WeightAverage  # the final model's weight average
    demos: StepDemos | None  # loss.sft_coef: the oracle's demonstrations of each step's questions
    forward: torch.nn.Module  # the update's LogprobsForward of the policy, as accelerate prepared it
    procs: Processes  # this run's processes (one, or N under accelerate launch)
    searches: SearchGuard  # what a rollout whose searches failed does: stop or pause


@dataclass
class StepResult:
    record: dict  # the step's line of metrics.jsonl
    groups: list[TrajectoryGroup]  # every group rolled out by every process, scored
    trained: list[TrajectoryGroup]  # those the update trained on
    advantage: dict[int, float]  # id(trajectory) of those -> its mean advantage (for traces)
    step_advantages: dict[int, list]  # id(trajectory) of those -> its mean advantage per step (for traces)
    advantages: Advantages  # this process's batch and advantages


def build_trainer(cfg: GRPOConfig, model_path: str, retriever, resume_from: Path | None = None,
                  procs: Processes = ONE) -> Trainer:
    """The policy (a resumed run's weights) on its device, its engines, optimizer and schedule,
    and the reward; with several processes, the update's forward and the optimizer prepared by
    accelerate (DDP, FSDP or DeepSpeed), which syncs the gradients."""
    reward = build_reward(json.loads(cfg.rewards))
    device = procs.device if procs.accelerator is not None else pick_device(cfg.policy.device)
    precision = resolve_precision(cfg.policy.precision, device)
    policy = load_policy(model_path, resume_from=resume_from, lora_r=cfg.policy.lora_r, need_reference=cfg.loss.kl_coef > 0,
                         gradient_checkpointing=cfg.policy.gradient_checkpointing, dtype=precision.weights,
                         device=device)
    whole = Policy(whole_copy(policy.model), policy.tokenizer, None) if procs.sharded else policy  # before sharding
    engine = HFEngine(whole.model, policy.tokenizer)
    sampler = make_sampler(cfg.policy, whole, precision, model_path, engine, cfg.seed)
    attention = training_attention(tiny=is_embedded(cfg.policy.model))  # after the sampler took its copy
    if attention:
        policy.model.set_attn_implementation(attention)
    trained = [name for name, p in policy.model.named_parameters() if p.requires_grad]
    trainable = [policy.model.get_parameter(name) for name in trained]
    forward, optimizer = procs.prepare(LogprobsForward(policy.model), make_optimizer(trainable, cfg.optim),
                                       max_grad_norm=cfg.optim.max_grad_norm)
    demos = None
    if cfg.loss.sft_coef:
        demos = StepDemos(cfg.train_data or cfg.data, retriever, policy.tokenizer, cfg.rollout, held_out_data=cfg.data)
    average = WeightAverage(whole.model.get_parameter(name) for name in trained)
    return Trainer(cfg, policy, whole, precision, engine, sampler, retriever, reward, optimizer,
                   lr_scheduler(optimizer, cfg.optim, cfg.max_steps), average, demos, forward, procs,
                   SearchGuard(cfg.retrieval_failure_threshold, cfg.on_retrieval_failure, log=console.print))


def train_step(t: Trainer, questions: list[Example], step: int) -> StepResult:
    """One step on `questions` by a policy that has taken `step` updates: rollout -> score ->
    pick groups -> advantages -> update; returns the step's record and its groups. With several
    processes, `questions` is this process's share and the record covers every process's."""
    cfg = t.cfg
    t0 = time.perf_counter()
    rollout = Rollout(t.sampler, t.retriever, cfg.rollout, t.policy.tokenizer)
    trajectories, searched, paused = t.searches.rollout(
        lambda: rollout(questions, cfg.group_size, policy_version=step, group_prefix=f"s{step}:",
                        seed=cfg.seed * 100_003 + step), t.retriever, f"step {step + 1}", procs=t.procs)
    groups = TrajectoryGroup.of(trajectories, [ex for ex in questions for _ in range(cfg.group_size)])
    if hasattr(t.sampler, "sleep"):  # vLLM on a GPU gives the trainer its memory back
        t.sampler.sleep()
    t0 += paused
    t1 = time.perf_counter()
    set_step([t.reward], step)  # rewards that anneal (Trust-GRPO's weight) follow the updates done
    scores = iter(t.reward(trajectories, [g.example for g in groups for _ in g.trajectories]))
    for g in groups:
        g.scores = [next(scores) for _ in g.trajectories]
    t2 = time.perf_counter()
    trained = pick_groups(groups, cfg.questions_per_step // t.procs.n)
    adv = advantages_for(trained, cfg.advantage, t.policy.tokenizer.pad_token_id)
    demos = t.demos([g.example for g in trained]) if t.demos else None
    lr = t.scheduler.get_last_lr()[0]
    update = policy_update(t.policy, adv, cfg.loss, cfg.optim, t.optimizer, temperature=cfg.rollout.temperature,
                           seed=cfg.seed * 7919 + step, autocast=t.precision.autocast, demos=demos, forward=t.forward,
                           procs=t.procs)
    t.scheduler.step()  # once per step of questions, however many minibatches it took
    if t.whole is not t.policy:  # the shards gathered whole by every process, into the engine's copy
        with whole_weights(t.policy.model) as weights:
            t.engine.update_weights(weights)
    if t.sampler is not t.engine:  # the sampler holds its own copy of the weights
        t.sampler.update_weights(sampler_weights(t.whole))
    t3 = time.perf_counter()
    kept = {id(g) for g in trained}
    per_step = adv.per_step([traj for g in trained for traj in g.trajectories])
    parts = t.procs.gather((groups, [id(g) in kept for g in groups], adv.per_traj, per_step))  # every process's, in order
    groups = [g for gs, _, _, _ in parts for g in gs]
    trained = [g for gs, keep, _, _ in parts for g, k in zip(gs, keep) if k]
    trained_ids = [id(traj) for g in trained for traj in g.trajectories]
    advantage = dict(zip(trained_ids, [a for _, _, per, _ in parts for a in per]))
    step_advantages = dict(zip(trained_ids, [a for *_, steps in parts for a in steps]))
    all_scores = [s for g in groups for s in g.scores]
    record = {"step": step + 1, "reward": sum(s.value for s in all_scores) / len(all_scores), **group_stats(groups),
              **update, "lr": lr, "rollout_s": t1 - t0, "reward_s": t2 - t1, "update_s": t3 - t2,
              "tokens_per_s": sum(traj.n_sampled_tokens for g in groups for traj in g.trajectories) / (t1 - t0)}
    record |= {"search/failed": searched.failed, "search/failure_rate": searched.failure_rate}
    if paused:
        record["search/paused_s"] = paused
    if len(groups) > cfg.questions_per_step:
        record["groups_trained"] = len(trained)
    for part in all_scores[0].parts:  # every reward component's mean, annealed weights included
        record[f"rewards/{part}"] = sum(s.parts[part] for s in all_scores) / len(all_scores)
    return StepResult(record, groups, trained, advantage, step_advantages, adv)


def pick_groups(groups: list[TrajectoryGroup], n: int) -> list[TrajectoryGroup]:
    """`n` of the groups, in rollout order: first those whose samples scored different total
    rewards (they carry the policy gradient), then settled ones to fill up; all of them when
    there are no more than `n`."""
    ranked = [g for g in groups if not g.settled] + [g for g in groups if g.settled]
    kept = {id(g) for g in ranked[:n]}
    return [g for g in groups if id(g) in kept]


# -- around the steps ---------------------------------------------------------------------------


def evaluate_greedy(engine, retriever, examples, rcfg: RolloutConfig, name: str, searches: SearchGuard,
                    progress=None) -> dict:
    """Greedy rollouts of `examples`, 128 at a time, summarised; shown as a task of
    `progress` (the training loop's bar) or of a bar of its own. A batch with a failed search
    stops or pauses as `searches` says."""
    from rewards.metrics import summarize

    greedy = Rollout(engine, retriever, RolloutConfig(**{**asdict(rcfg), "temperature": 0.0}))
    trajs, own = [], progress is None
    progress = progress_bar() if own else progress
    with progress if own else contextlib.nullcontext():
        task = progress.add_task(f"greedy {name}", total=len(examples))
        for i in range(0, len(examples), 128):
            batch = examples[i : i + 128]
            trajs += searches.rollout(lambda batch=batch: greedy(batch), retriever, f"greedy {name}", threshold=0.0)[0]
            progress.advance(task, len(batch))
        progress.remove_task(task)
    return summarize(trajs, examples)


def log_step(result: StepResult, out: Path, traces: TraceWriter, trackers: Trackers, tokenizer, progress, task) -> None:
    """The step's traces (every rolled-out trajectory; those not trained on carry no
    advantage), its metrics line, and a line on the console."""
    record, step = result.record, result.record["step"]
    traces.write([trajectory_record(traj, g.example, tokenizer, step=step, reward=s.value, rewards=s.parts,
                                    step_rewards=s.per_step, advantage=result.advantage.get(id(traj)),
                                    step_advantages=result.step_advantages.get(id(traj)))
                  for g in result.groups for traj, s in zip(g.trajectories, g.scores)])
    append_jsonl(out / "metrics.jsonl", [record])
    trackers.log(record, step)
    kl = record.get("kl_ref", record["approx_kl"])  # to the reference when a KL term trains, else to the sampler
    progress.console.print(
        f"step {step:>4} · reward {record['reward']:.3f} · EM {record['em']:.3f} · KL {kl:.4f} · "
        f"entropy {record['entropy']:.3f} · searches {record['searches']:.2f} · valid {record['valid']:.3f} · "
        f"{record['tokens_per_s']:.0f} tok/s" + (f" · dev EM {record['dev_em']:.3f}" if "dev_em" in record else "")
        + (f" · {record['search/failed']} searches failed" if record.get("search/failed") else ""),
        highlight=False)
    progress.update(task, completed=step, description=f"grpo · reward {record['reward']:.3f} · EM {record['em']:.3f}")


def main(argv=None) -> dict:
    cfg = parse_config(GRPOConfig, argv)  # every field checked before any work starts
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    procs = Processes.launched(cpu=cfg.policy.device == "cpu", lora=cfg.policy.lora_r > 0,  # the main one writes
                               demos=cfg.loss.sft_coef > 0)
    try:
        with hold_output_dir(Path(cfg.output_dir)) if procs.is_main else contextlib.nullcontext():  # one run per output_dir
            return run(cfg, procs)
    except SearchesFailed as err:  # the retriever is down or failing: say so in one line
        raise SystemExit(f"error: {err}") from None


def run(cfg: GRPOConfig, procs: Processes = ONE) -> dict:
    """The run `cfg` describes: setup, resume, the loop, the final evaluation; returns the summary."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    # -- setup: the embedded default (built once, then cached), questions, retrievers, trainer ----
    from retrieval import open_retriever
    from train.prepare import ensure_default

    model_path = cfg.policy.model
    if is_embedded(model_path):
        if procs.is_main:
            ensure_default(cfg.data, cfg.index, model_path, eval_questions=0)  # a run evaluates dev itself
        procs.wait()
        model_path = str(tiny_policy_dir(cfg.data, model_path))
    n_rolled = check_shares(cfg, procs)
    train_set, dev_set, test_set = load_questions(cfg)
    retriever = open_retriever(cfg.index)  # dev and test
    train_retriever = open_retriever(cfg.train_index) if cfg.train_index else retriever
    for r in {id(r): r for r in (retriever, train_retriever)}.values():  # a server down at start-up: stop
        check_answers(r)
    checkpoint = latest_checkpoint(out, log=lambda line: console.print(line, soft_wrap=True)) if cfg.resume else None
    t = build_trainer(cfg, model_path, train_retriever, checkpoint, procs)
    optimizer = procs.checkpointed(t.optimizer, t.policy.model)  # sharded: read and written whole
    traces, trackers = (TraceWriter(out / "traces.jsonl"), Trackers(cfg.report_to, out, asdict(cfg))) if procs.is_main \
        else (None, None)

    # -- resume, or evaluate the starting point ----------------------------------------------------
    if checkpoint:
        state = resume_run(out, checkpoint, optimizer, t.scheduler, t.average, max_steps=cfg.max_steps,
                           average_last=cfg.average_last, processes=procs.n, logs=procs.is_main)
    else:
        state = RunState()
        if procs.is_main:  # started afresh: what a run killed before its first checkpoint logged goes
            for log in ("metrics.jsonl", "traces.jsonl"):
                truncate_after(out / log, -1)
        if test_set and procs.is_main:
            state.summary["test_before"] = evaluate_greedy(t.engine, retriever, test_set, cfg.rollout, "test", t.searches)
            write_atomic(out / "summary.json", json.dumps(state.summary, indent=2) + "\n")
            console.print(f"test EM before training: {state.summary['test_before']['em']:.3f}")
        if dev_set and procs.is_main:
            dev = evaluate_greedy(t.engine, retriever, dev_set, cfg.rollout, "dev", t.searches)
            append_jsonl(out / "metrics.jsonl", [{"step": 0, "dev_em": dev["em"]}])
            console.print(f"dev EM before training: {dev['em']:.3f} (n={dev['n']})")

    # -- the loop: questions -> train_step -> weight average, dev evaluation, logs, checkpoint -----
    share = n_rolled // procs.n
    progress = progress_bar()
    task = progress.add_task("grpo", total=cfg.max_steps, completed=min(state.step, cfg.max_steps))
    with progress if procs.is_main else contextlib.nullcontext():
        while state.step < cfg.max_steps:
            questions, state.cursor = next_questions(train_set, state.cursor, n_rolled, cfg.seed)
            result = train_step(t, questions[procs.index * share : (procs.index + 1) * share], state.step)
            state.step += 1
            if state.step > cfg.max_steps - cfg.average_last:
                t.average.update()
            saving = state.step % cfg.save_every == 0 or state.step == cfg.max_steps
            optimizer_state = optimizer.state_dict() if saving else None  # sharded: gathered, by every process
            if procs.is_main:
                if cfg.eval_every and state.step % cfg.eval_every == 0 and dev_set:
                    result.record["dev_em"] = evaluate_greedy(t.engine, retriever, dev_set, cfg.rollout, "dev", t.searches,
                                                              progress)["em"]
                log_step(result, out, traces, trackers, t.policy.tokenizer, progress, task)
                if saving:
                    save_checkpoint(out, state.step, t.whole.model, t.policy.tokenizer, optimizer_state, t.scheduler,
                                    cursor=state.cursor, config=cfg, keep_last=cfg.keep_last, processes=procs.n,
                                    extra={"average": t.average.state_dict()}, summary=state.summary)
            procs.wait()
    if procs.n > 1 and not procs.weights_agree(t.average.params):
        raise RuntimeError("the processes' weights differ after training: the gradients were not synced")
    summary = finish(t, state, out, retriever, test_set) if procs.is_main else state.summary
    procs.close()  # every process waits for the main one's final evaluation, then leaves together
    return summary


def finish(t: Trainer, state: RunState, out: Path, retriever, test_set: list) -> dict:
    """The final model (the weight average) and its held-out test EM against the warm start, the
    summary and the curves (the main process's work)."""
    cfg, procs, summary, averaged = t.cfg, t.procs, state.summary, t.average.count > 0
    with t.average.swapped_in() if averaged else contextlib.nullcontext():
        save_atomic(t.whole.model, t.policy.tokenizer, out / "final")
        # A rerun of a finished run keeps its evaluation; one resumed to more steps makes its own.
        if test_set and summary.get("test_after", {}).get("step") != state.step:
            summary["test_after"] = {**evaluate_greedy(t.engine, retriever, test_set, cfg.rollout, "test", t.searches),
                                     "step": state.step}
    summary["final_model"] = {"path": str(out / "final"), "averaged_steps": t.average.count,
                              **({"averaged_from_step": t.average.first_step(state.step)} if averaged else {})}
    summary["machine"] = {**machine(), "processes": procs.n}
    write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    if "test_before" in summary and "test_after" in summary:
        before, after = summary["test_before"]["em"], summary["test_after"]["em"]
        how = f", weights averaged over the last {t.average.count} steps" if averaged else ""
        console.print(f"held-out test EM: {before:.3f} (warm start) -> {after:.3f} after {cfg.max_steps} steps "
                      f"({after - before:+.3f}{how})")
    console.print(f"final model: {out / 'final'}")
    plot_curves(out / "metrics.jsonl", out / "curves.png")
    return summary


if __name__ == "__main__":
    cli.run(main)
