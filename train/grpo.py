"""GRPO for search agents, with step rewards placed on the tokens that end each step.

    python train/grpo.py                               # the embedded default, end to end
    python train/grpo.py --config grpo.yaml --model Qwen/Qwen2.5-3B-Instruct --lora_r 16

What it simplifies: one process, rollouts with the in-process `hf` engine over the trained
model (or, where the hardware computes bf16, a bf16 copy of it synced by one weight copy
per step: `--rollout_dtype`) or an in-process vLLM engine loaded with the trained weights
after every update (`--rollout_engine vllm`, with truncated importance sampling:
`--tis_cap`), one batch of questions per step rolled out with a GRPO group
of samples each (twice the questions trained on by default, the groups whose samples
scored differently kept first: `--oversample`), scored by the reward spec, turned into token-level advantages
(`train.advantages`) and used for `updates_per_batch` passes of the clipped loss
(`train.loss`). Old logprobs are the sampler's: the engine reports them at the sampling
temperature, as `token_logprobs` recomputes them, so the first pass starts at ratio 1 up
to bf16 rounding (`--autocast`, `--rollout_dtype`; eval/bench/train.py measures the gap);
with `--tis_cap` the ratio is taken against the trainer's own instead.

With no model given it builds the embedded default (world, dense index, tiny policy
warm-started by SFT; cached) and trains that. A run resumes from the newest complete
checkpoint in `output_dir`; lines written after it in metrics.jsonl / traces.jsonl are
dropped first, so each step appears once. The run's model is `output_dir/final`: the
average of the weights over the last `average_last` steps (`train.averaging`), which is
also what the final test evaluation scores.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console

from agent.engines.hf import HFEngine
from agent.rollout import Rollout, RolloutConfig
from agent.traces import TraceWriter, trajectory_record
from train.averaging import WeightAverage
from train.checkpoint import latest_checkpoint, load_trainer_state, save_atomic, save_checkpoint
from train.config import doc, parse_config
from train.demos import progress_bar
from train.loss import KL_ESTIMATORS
from train.metrics_log import Trackers, append_jsonl, plot_curves, truncate_after
from train.policy import freeze_embeddings, load_policy, machine, rollout_model, sampler_weights, training_attention
from train.update import advantages_for, group_stats, policy_update

console = Console(stderr=True)

DEFAULT_REWARDS = ('[{"name": "em", "weight": 1.0}, {"name": "judge", "weight": 0.2}, {"name": "correctness", "weight": 0.5}, '
                   '{"name": "grounding", "weight": 1.0, "r_search": 0.5}]')


@dataclass
class GRPOConfig:
    model: str = doc("'tiny' (the embedded default, built on first use) or a HF model directory / hub id", "tiny")
    data: str = doc("generated world directory (train/dev/test.jsonl, corpus.jsonl) or a QA directory", "data/world-0")
    index: str = doc("retrieval index directory (retrieval.build) or server URL", "indexes/world-0")
    train_data: str | None = doc("QA directory whose train split the rollouts are drawn from, searching "
                                 "train_index (default: data's own train split and index); dev and test stay data's", None)
    train_index: str | None = doc("retrieval index of train_data (directory or server URL; required with it)", None)
    output_dir: str = doc("checkpoints, metrics.jsonl, traces.jsonl and plots", "outputs/grpo")
    max_steps: int = doc("optimizer steps (batches of questions)", 40)
    questions_per_step: int = doc("questions trained on per step (rolled out: this x oversample)", 24)
    group_size: int = doc("samples per question (the GRPO group). On the tiny default, 32 questions x 4 "
                          "raised test EM on every seed (+2.4 to +3.6) where 16 x 8 moved it by -0.2 to "
                          "+3.6, for 1.09x the time a step", 4)
    learning_rate: float = doc("AdamW learning rate (peak, after warmup)", 1e-4)
    adam_eps: float = doc("AdamW epsilon: the gradient scale below which a weight's update shrinks in proportion "
                          "to its gradient instead of moving by about the learning rate. On the tiny default 1e-5 "
                          "gained what 1e-8 does over five seeds (train/RESULTS.md)", 1e-8)
    lr_schedule: str = doc("constant | linear | cosine: the learning rate from the end of warmup to max_steps", "constant")
    warmup_steps: int = doc("linear warmup steps", 0)
    average_last: int = doc("the final model (output_dir/final) is the uniform average of the weights after each of the "
                            "last N steps (tail averaging, train/averaging.py); 0 = the last weights", 30)
    temperature: float = doc("sampling temperature of rollouts (a tiny model's tail at 1.0 is noise)", 0.3)
    greedy_samples: int = doc("samples of each group decoded greedily (the rest at --temperature): the policy's greedy "
                              "answer, the one evaluated, then takes part in its group's comparison (rollout_engine=hf)", 0)
    top_k: int | None = doc("passages per search (default: 2 for the tiny policy, as in its warm start; else 3)", None)
    max_turns: int = doc("turns per trajectory", 10)
    max_new_tokens: int = doc("tokens per turn", 64)
    rewards: str = doc("reward spec: a JSON list of {name, weight, ...} (see rewards/registry.py)", DEFAULT_REWARDS)
    advantage: str = doc("process (GRPO outcome + normalised step rewards) | grpo | dr_grpo | rloo | reinforce_pp", "process")
    process_weight: float = doc("weight of the process advantage (advantage=process)", 0.5)
    outcome_credit: str = doc(
        "advantage=process: where the outcome advantage lands. sequence: every sampled token gets its trajectory's "
        "(GRPO) | tree: each sampled token gets the change it makes in the mean outcome of the group's samples "
        "sharing the stream before it (train/tree_credit.py): 0 on what the samples share, the credit where "
        "they part, adding up to the trajectory's GRPO advantage. On the tiny default's 0.234 warm start tree gained "
        "+3.2 test EM over 4 seeds against +2.3, higher on every seed (train/RESULTS.md)", "tree")
    negative_weight: float = doc("scale of negative advantages (1 = as estimated; < 1 pushes less on worse-than-average samples)", 0.3)
    scale_by_std: bool = doc("advantage=process: divide group-centred rewards by the group's std (GRPO); false "
                             "centres only (Dr.GRPO), so a group whose rewards differ by a hair gets a hair of "
                             "advantage, not a full unit (outcome-only: advantage=grpo against dr_grpo)", True)
    process_by_kind: bool = doc("normalise each step reward among the group's steps of the same kind (searches with "
                                "searches), not among all its steps", True)
    clip_low: float = doc("lower clip of the ratio: 1 - clip_low", 0.2)
    clip_high: float = doc("upper clip of the ratio: 1 + clip_high (clip-higher when > clip_low)", 0.28)
    kl_coef: float = doc("weight of the KL term to the reference model (0 = none, no reference held). On the "
                         "tiny default's recipe 6 warm start it keeps the warm start's right answers: without it, "
                         "runs turned 24-34% of them wrong on test (7-23% with 0.1) while winning 14-15% of its "
                         "wrong ones (7-12%), and 16 x 8 samples with float32 rollouts gained +1.3 test EM points "
                         "over 3 seeds against +2.1 with 0.1 (train/RESULTS.md); its reference forward is 11-12% of a step", 0.1)
    kl_estimator: str = doc("k1 | k2 | k3 (estimates from the sampled token) | full (exact, over the vocabulary at each "
                            "trained position; holds the reference's distributions there: for small vocabularies)", "k3")
    entropy_coef: float = doc("weight of the entropy bonus", 0.0)
    entropy_top_share: float = doc("share of sampled tokens, the highest-entropy ones under the policy, that carry the "
                                   "policy-gradient loss (Wang et al. 2025 train on 0.2); the KL and entropy terms "
                                   "keep every token, and the loss is still averaged over all of them. 1 = all", 1.0)
    aggregation: str = doc("token_mean | seq_mean_token_mean | dr_grpo", "token_mean")
    updates_per_batch: int = doc("passes over each batch (PPO epochs)", 1)
    minibatch_rows: int = doc("most segments per optimizer step within a pass (distinct ones when identical rows "
                                "are merged); a pass takes as few minibatches as that allows, sized alike", 128)
    oversample: float = doc(
        "roll out questions_per_step x this many questions and train on questions_per_step of their groups, those "
        "whose samples scored differently first, settled ones only to fill up (DAPO's dynamic sampling, from one "
        "larger rollout); every rolled-out trajectory is still traced. 1 = train on every group. On the tiny "
        "default, 24 of 48 over 40 steps gained +3.1 test EM over 3 seeds (every seed), where 32 of 32 over 50 steps, "
        "in about the same time, gained +1.3 (train/RESULTS.md)", 2.0)
    skip_settled_groups: bool = doc(
        "give no advantage to a group whose samples all scored the same total reward (DAPO's dynamic sampling; "
        "its step rewards are dropped too) and, without KL or entropy terms, leave its rows out of the update: "
        "~40% of the tiny default's groups, a step ~20% cheaper. Off: on the tiny default those groups' step "
        "rewards are what keeps it searching (train/RESULTS.md)", False)
    skip_zero_advantage: bool = doc(
        "leave rows whose advantages are all 0 out of the update (no KL/entropy term only), as DAPO's dynamic "
        "sampling: cheaper, but the token mean is then over fewer rows, so each step is larger", False)
    merge_duplicate_rows: bool = doc(
        "train identical rows (same tokens, sampler logprobs and advantages: one trajectory sampled several times "
        "in a group) once, weighted by their count: the same loss and gradient for fewer forward and backward "
        "passes (41-46% fewer rows on the tiny default)", True)
    sft_coef: float = doc("weight of a supervised term in every update: the mean cross-entropy of the scripted "
                          "oracle's demonstrations of the step's questions (as PPO-ptx mixes in pretraining; needs "
                          "data with reasoning chains, a generated world). 0 = pure RL", 0.0)
    max_grad_norm: float = doc("gradient clipping norm", 1.0)
    freeze_embeddings: bool = doc("train neither the token embeddings nor the output head (tied or not): the update "
                                  "then goes through the transformer blocks only. On the tiny default it gained what "
                                  "the default does over 3 seeds (+2.5 test EM; train/RESULTS.md)", False)
    attn_implementation: str = doc(
        "attention kernels of the trained model: auto (eager for the tiny default, whose update it makes ~10% "
        "faster on a CPU; else the model's default, SDPA: train/policy.py, training_attention) | eager | sdpa | "
        "any value transformers accepts. A bf16 rollout copy keeps SDPA", "auto")
    lora_r: int = doc("LoRA rank (0 = full fine-tuning)", 0)
    gradient_checkpointing: bool = doc("trade compute for memory", False)
    dtype: str = doc("auto (bf16 on a GPU that has it, else fp32) | float32 | bfloat16", "auto")
    autocast: str = doc("bf16 autocast of the update and reference forwards: auto (where the CPU or GPU computes "
                        "bf16 natively) | bf16 | none. The first pass's ratio is then 1 up to bf16 rounding "
                        "(eval/bench/train.py measures it)", "auto")
    rollout_dtype: str = doc("auto (a bf16 copy of a float32 model samples the rollouts where the hardware computes "
                             "bf16 natively; synced after every update) | bf16 | same (rollouts share the trained "
                             "model). Greedy evaluations always use the trained model itself", "auto")
    rollout_engine: str = doc("hf (in-process, over the trained model or its bf16 copy: --rollout_dtype) | vllm (an "
                              "in-process vllm.LLM built from the model directory; the trained weights, LoRA merged, "
                              "are loaded into it after every update). Greedy evaluations stay on hf", "hf")
    vllm_gpu_memory_utilization: float = doc("rollout_engine=vllm: share of the GPU's memory vLLM may take (the "
                                             "trainer needs the rest)", 0.4)
    tis_cap: float | None = doc(
        "truncated importance sampling when the sampler is not the trainer: each token's loss is weighted by "
        "min(pi_trainer / pi_sampler, tis_cap) and the PPO ratio is taken against the trainer's own logprobs "
        "(0 = off: the ratio is taken against the sampler's). Default: 2 with vllm, off with hf, whose bf16 copy "
        "differs from the trainer by bf16 rounding only", None)
    eval_every: int = doc("steps between greedy dev evaluations (0 = only before training)", 0)
    eval_questions: int = doc("dev questions per evaluation", 200)
    test_questions: int = doc("test questions evaluated greedily before and after training (0 = none)", 500)
    save_every: int = doc("steps between checkpoints", 10)
    keep_last: int = doc("checkpoints kept", 2)
    report_to: str = doc("none | tensorboard | wandb | trackio (comma-separated)", "none")
    resume: bool = doc("resume from the newest complete checkpoint in output_dir", True)
    seed: int = doc("seed of data order, rollouts and initialisation", 0)

    def __post_init__(self):
        if self.rollout_engine not in ("hf", "vllm"):
            raise ValueError(f"rollout_engine must be hf or vllm, got {self.rollout_engine!r}")
        if self.tis_cap is None:
            self.tis_cap = 2.0 if self.rollout_engine == "vllm" else 0.0
        if self.tis_cap < 0:
            raise ValueError(f"tis_cap must be >= 0 (0 = off), got {self.tis_cap}")
        if self.kl_estimator not in (*KL_ESTIMATORS, "full"):
            raise ValueError(f"kl_estimator must be one of {', '.join(KL_ESTIMATORS)}, full; got {self.kl_estimator!r}")
        if (self.train_data is None) != (self.train_index is None):
            raise ValueError("train_data and train_index go together: the train questions need the index of their "
                             f"own corpus (got train_data={self.train_data!r}, train_index={self.train_index!r})")
        if self.greedy_samples and self.rollout_engine != "hf":
            raise ValueError("greedy_samples needs rollout_engine=hf (vLLM cannot decode some rows of a batch greedily "
                             "with logprobs at the sampling temperature)")
        if not 0 <= self.greedy_samples < self.group_size:
            raise ValueError(f"greedy_samples must be in [0, group_size={self.group_size}) (a group needs a sampled "
                             f"trajectory to compare with), got {self.greedy_samples}")
        if self.outcome_credit not in ("sequence", "tree"):
            raise ValueError(f"outcome_credit must be sequence or tree, got {self.outcome_credit!r}")
        if not self.adam_eps > 0:
            raise ValueError(f"adam_eps must be > 0, got {self.adam_eps}")
        if not 0 < self.entropy_top_share <= 1:
            raise ValueError(f"entropy_top_share must be in (0, 1] (1 = every token), got {self.entropy_top_share}")


def policy_path(cfg) -> str:
    """The directory or hub id to load: `tiny` is the embedded warm start, built on first use
    (without the build's own dev evaluation: a run evaluates dev itself)."""
    if cfg.model != "tiny":
        return cfg.model
    from train.prepare import ensure_default

    return str(ensure_default(cfg.data, cfg.index, eval_questions=0)[2])


def passages_per_search(cfg) -> int:
    """`cfg.top_k`, or its default: 2 for the tiny policy, as in its warm start; else 3."""
    return cfg.top_k if cfg.top_k is not None else (2 if cfg.model == "tiny" else 3)


def prepare_update(policy, cfg) -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer]:
    """Ready the trained model for its updates, after the rollout engine has taken its copy (which
    keeps its own attention: eager attention samples no faster): the training attention, frozen
    embeddings where asked, and AdamW over the weights that stay trainable, with no weight decay
    (the KL term holds the policy near its start) and a short second-moment memory (0.99) for a
    policy that moves every step. Returns (trainable weights, optimizer)."""
    attention = training_attention(cfg.attn_implementation, tiny=cfg.model == "tiny")
    if attention:
        policy.model.set_attn_implementation(attention)
    if cfg.freeze_embeddings:
        freeze_embeddings(policy.model)
    trainable = [p for p in policy.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, betas=(0.9, 0.99), eps=cfg.adam_eps, weight_decay=0.0)
    return trainable, optimizer


def lr_scheduler(optimizer, cfg):
    """Warmup then `cfg.lr_schedule` to max_steps, stepped once per step of questions."""
    from transformers import get_scheduler

    names = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}
    if cfg.lr_schedule not in names:
        raise ValueError(f"lr_schedule must be one of {sorted(names)}, got {cfg.lr_schedule!r}")
    return get_scheduler(names[cfg.lr_schedule], optimizer, num_warmup_steps=cfg.warmup_steps,
                         num_training_steps=cfg.max_steps)


def next_questions(examples: list, cursor: dict, n: int, seed: int) -> tuple[list, dict]:
    """The next `n` questions of a per-epoch seeded shuffle; the cursor is checkpointed."""
    epoch, pos = cursor["epoch"], cursor["pos"]
    out = []
    while len(out) < n:
        order = list(range(len(examples)))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        take = order[pos : pos + n - len(out)]
        out += [examples[i] for i in take]
        pos += len(take)
        if pos >= len(examples):
            epoch, pos = epoch + 1, 0
    return out, {"epoch": epoch, "pos": pos}


def pick_groups(trajs: list, scores: list, n_groups: int) -> list[int]:
    """Indices, in rollout order, of the trajectories of `n_groups` groups: first the groups
    whose samples scored different total rewards (they carry the policy gradient), then
    settled ones (all samples alike) to fill up; every index when there are no more groups
    than that. Every sample of a kept group is kept."""
    values: dict[str, set[float]] = {}
    for t, s in zip(trajs, scores):
        values.setdefault(t.group_id, set()).add(s.value)
    ranked = [g for g, v in values.items() if len(v) > 1] + [g for g, v in values.items() if len(v) == 1]
    kept = set(ranked[:n_groups])
    return [i for i, t in enumerate(trajs) if t.group_id in kept]


def make_rollout_engine(cfg: GRPOConfig, policy, model_path, engine: HFEngine):
    """The engine rollouts sample from: `engine` itself (the trained model), an `HFEngine`
    over its bf16 copy, or a `VLLMEngine` loaded with the trained weights (a resumed run's,
    LoRA merged)."""
    if cfg.rollout_engine == "hf":
        sampler = rollout_model(policy, cfg.rollout_dtype)
        return engine if sampler is policy.model else HFEngine(sampler, policy.tokenizer)
    from agent.engines.vllm import VLLMEngine

    weight = next(policy.model.parameters())
    vllm_engine = VLLMEngine(str(model_path), dtype=str(weight.dtype).removeprefix("torch."), seed=cfg.seed,
                             enforce_eager=weight.device.type != "cuda",
                             gpu_memory_utilization=cfg.vllm_gpu_memory_utilization)
    vllm_engine.update_weights(sampler_weights(policy))
    return vllm_engine


def oracle_demos(questions, retriever, tokenizer, title_of, rcfg: RolloutConfig, held_out: set[str], pad_id: int):
    """The oracle's right answers to `questions` as one training batch (None when there are
    none), without any that reads a held-out entity's name, as the warm start's SFT. They
    retrieve as the policy's rollouts do (`rcfg`'s passages and prompt), within the oracle's
    own turn budgets (it writes whole actions)."""
    from train.batching import collate_segments
    from train.demos import right_oracle_answers, training_segments, without_names

    unique = list({ex.id: ex for ex in questions}.values())
    greedy = RolloutConfig(top_k=rcfg.top_k, max_doc_tokens=rcfg.max_doc_tokens, prompt_style=rcfg.prompt_style,
                           temperature=0.0)
    right = right_oracle_answers(unique, retriever, tokenizer, title_of, greedy)
    segments = training_segments(without_names(right, unique, held_out))
    return collate_segments(segments, pad_id) if segments else None


def without_held_out(examples: list, data: str) -> list:
    """`examples` (another dataset's train split) without the questions whose text or
    answers name one of `data`'s dev/test entities (a chance collision of generated names),
    so that no train question asks about an entity the evaluation asks about."""
    from train.demos import examples_without_names, held_out_names

    kept = examples_without_names(examples, held_out_names(data))
    if not kept:
        raise ValueError(f"no train question left: every one names a dev/test entity of {data}")
    return kept


def greedy_eval(engine, retriever, examples, rcfg: RolloutConfig, name: str = "eval", progress=None) -> dict:
    """Greedy rollouts of `examples`, 128 at a time, summarised; shown as a task of
    `progress` (the training loop's bar) or of a bar of its own."""
    from rewards.metrics import summarize

    greedy = RolloutConfig(**{**asdict(rcfg), "temperature": 0.0, "seed": None})
    trajs = []
    own = progress is None
    progress = progress_bar() if own else progress
    with progress if own else contextlib.nullcontext():
        task = progress.add_task(f"greedy {name}", total=len(examples))
        rollout = Rollout(engine, retriever, greedy)
        for i in range(0, len(examples), 128):
            chunk = examples[i : i + 128]
            trajs += rollout(chunk)
            progress.advance(task, len(chunk))
        progress.remove_task(task)
    return summarize(trajs, examples)


def main(argv=None) -> dict:
    cfg = parse_config(GRPOConfig, argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    # -- setup: data, retriever, rewards, policy ----------------------------------------------
    from agent.data.qa import load_qa
    from retrieval import open_retriever
    from rewards.registry import build_reward

    model_path = policy_path(cfg)
    train_data, train_index = cfg.train_data or cfg.data, cfg.train_index or cfg.index
    train_set, dev_set = load_qa(train_data, "train"), load_qa(cfg.data, "dev")[: cfg.eval_questions]
    test_set = load_qa(cfg.data, "test")[: cfg.test_questions] if cfg.test_questions else []
    if cfg.train_data:
        train_set = without_held_out(train_set, cfg.data)
    by_id = {ex.id: ex for ex in train_set}
    retriever = open_retriever(cfg.index)  # dev and test
    train_retriever = retriever if train_index == cfg.index else open_retriever(train_index)
    reward = build_reward(json.loads(cfg.rewards) if isinstance(cfg.rewards, str) else cfg.rewards)
    demo_source = None
    if cfg.sft_coef:
        from retrieval.corpus import load_corpus
        from train.demos import held_out_names

        corpus = load_corpus(Path(train_data) / "corpus.jsonl")
        demo_source = (lambda d: corpus.passage(d).title, held_out_names(cfg.data))
    resume = latest_checkpoint(out) if cfg.resume else None
    policy = load_policy(model_path, resume_from=resume, lora_r=cfg.lora_r, need_reference=cfg.kl_coef > 0,
                         gradient_checkpointing=cfg.gradient_checkpointing, dtype=cfg.dtype)
    engine = HFEngine(policy.model, policy.tokenizer)  # greedy evaluations: the trained weights themselves
    rollout_engine = make_rollout_engine(cfg, policy, model_path, engine)
    trainable, optimizer = prepare_update(policy, cfg)
    scheduler = lr_scheduler(optimizer, cfg)
    average = WeightAverage(trainable)
    cfg.top_k = passages_per_search(cfg)
    rcfg = RolloutConfig(top_k=cfg.top_k, max_turns=cfg.max_turns, max_new_tokens=cfg.max_new_tokens,
                         temperature=cfg.temperature, greedy_samples=cfg.greedy_samples)
    metrics_path, traces = out / "metrics.jsonl", TraceWriter(out / "traces.jsonl")
    trackers = Trackers(cfg.report_to, out, asdict(cfg))

    step, cursor, summary = 0, {"epoch": 0, "pos": 0}, {}
    if resume:
        state = load_trainer_state(resume, optimizer, scheduler)
        for group in optimizer.param_groups:  # the saved state carries its own epsilon: this run's applies
            group["eps"] = cfg.adam_eps
        step, cursor = state["step"], state["cursor"]
        if "average" in state["extra"]:
            average.load_state_dict(state["extra"]["average"])
            window, first = max(1, cfg.max_steps - cfg.average_last + 1), average.first_step(step)
            if average.count and first != window and step < cfg.max_steps:
                console.print(f"the weight average of steps {first}-{step} is dropped: with max_steps "
                              f"{cfg.max_steps} and average_last {cfg.average_last} the final model averages steps "
                              f"from {max(window, step + 1)} on")
                average.reset()
        dropped = truncate_after(metrics_path, step) + truncate_after(out / "traces.jsonl", step)
        console.print(f"resumed from {resume} (step {step}; {dropped} lines after it dropped)")
        summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    elif test_set:
        summary["test_before"] = greedy_eval(engine, retriever, test_set, rcfg, "test")
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        console.print(f"test EM before training: {summary['test_before']['em']:.3f}")
    if not resume and dev_set:
        dev = greedy_eval(engine, retriever, dev_set, rcfg, "dev")
        append_jsonl(metrics_path, [{"step": 0, "dev_em": dev["em"]}])
        console.print(f"dev EM before training: {dev['em']:.3f} (n={dev['n']})")

    # -- the loop: rollout -> score -> advantages -> update -> log ------------------------------
    if cfg.oversample < 1:
        raise ValueError(f"oversample must be >= 1 (questions rolled out per question trained), got {cfg.oversample}")
    n_rolled = math.ceil(cfg.questions_per_step * cfg.oversample)
    progress = progress_bar()
    task = progress.add_task("grpo", total=cfg.max_steps, completed=min(step, cfg.max_steps))
    with progress:
        while step < cfg.max_steps:
            t0 = time.perf_counter()
            questions, cursor = next_questions(train_set, cursor, n_rolled, cfg.seed)
            rollout = Rollout(rollout_engine, train_retriever, RolloutConfig(**{**asdict(rcfg), "seed": cfg.seed * 100_003 + step}))
            rolled = rollout(questions, cfg.group_size, policy_version=step, group_prefix=f"s{step}:")
            rolled_examples = [by_id[t.example_id] for t in rolled]
            t1 = time.perf_counter()
            rolled_scores = reward(rolled, rolled_examples)
            t2 = time.perf_counter()
            kept = pick_groups(rolled, rolled_scores, cfg.questions_per_step)
            trajs, examples, scores = ([xs[i] for i in kept] for xs in (rolled, rolled_examples, rolled_scores))
            questions = list({ex.id: ex for ex in examples}.values())
            adv = advantages_for(trajs, scores, cfg, policy.tokenizer.pad_token_id)
            demos = oracle_demos(questions, train_retriever, policy.tokenizer, demo_source[0], rcfg, demo_source[1],
                                 policy.tokenizer.pad_token_id) if demo_source else None
            lr = scheduler.get_last_lr()[0]
            update = policy_update(policy, adv, cfg, optimizer, seed=cfg.seed * 7919 + step, demos=demos)
            scheduler.step()  # once per step of questions, however many minibatches it took
            if rollout_engine is not engine:  # the sampler holds its own copy of the weights
                rollout_engine.update_weights(sampler_weights(policy))
            t3 = time.perf_counter()
            step += 1
            if step > cfg.max_steps - cfg.average_last:
                average.update()

            record = {"step": step, "reward": sum(s.value for s in rolled_scores) / len(rolled_scores),
                      **group_stats(rolled, rolled_examples, rolled_scores),
                      **update, "lr": lr, "rollout_s": t1 - t0, "reward_s": t2 - t1, "update_s": t3 - t2,
                      "tokens_per_s": sum(t.n_sampled_tokens for t in rolled) / (t1 - t0)}
            if n_rolled > cfg.questions_per_step:
                record["groups_trained"] = len(questions)
            if cfg.eval_every and step % cfg.eval_every == 0 and dev_set:
                record["dev_em"] = greedy_eval(engine, retriever, dev_set, rcfg, "dev", progress)["em"]
            advantage = dict(zip(kept, adv.per_traj))  # a trajectory left out of the update has none
            traces.write([trajectory_record(t, ex, policy.tokenizer, step=step, reward=s.value, rewards=s.parts,
                                            advantage=advantage.get(i)) for i, (t, ex, s)
                          in enumerate(zip(rolled, rolled_examples, rolled_scores))])
            append_jsonl(metrics_path, [record])
            trackers.log(record, step)
            kl = record.get("kl_ref", record["approx_kl"])  # to the reference when a KL term trains, else to the sampler
            progress.console.print(
                f"step {step:>4} · reward {record['reward']:.3f} · EM {record['em']:.3f} · KL {kl:.4f} · "
                f"entropy {record['entropy']:.3f} · searches {record['searches']:.2f} · valid {record['valid']:.3f} · "
                f"{record['tokens_per_s']:.0f} tok/s" + (f" · dev EM {record['dev_em']:.3f}" if "dev_em" in record else ""),
                highlight=False)
            progress.update(task, completed=step, description=f"grpo · reward {record['reward']:.3f} · EM {record['em']:.3f}")
            if step % cfg.save_every == 0 or step == cfg.max_steps:
                save_checkpoint(out, step, policy.model, policy.tokenizer, optimizer, scheduler, cursor=cursor,
                                config=cfg, keep_last=cfg.keep_last, extra={"average": average.state_dict()})

    # -- the end: the final model and its held-out test EM against the warm start, curves ------
    averaged = average.count > 0
    with average.swapped_in() if averaged else contextlib.nullcontext():
        save_atomic(policy.model, policy.tokenizer, out / "final")
        # A rerun of a finished run keeps its evaluation; one resumed to more steps makes its own.
        if test_set and summary.get("test_after", {}).get("step") != step:
            summary["test_after"] = {**greedy_eval(engine, retriever, test_set, rcfg, "test"), "step": step}
    summary["final_model"] = {"path": str(out / "final"), "averaged_steps": average.count,
                              **({"averaged_from_step": average.first_step(step)} if averaged else {})}
    summary["machine"] = machine()
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if "test_before" in summary and "test_after" in summary:
        before, after = summary["test_before"]["em"], summary["test_after"]["em"]
        how = f", weights averaged over the last {average.count} steps" if averaged else ""
        console.print(f"held-out test EM: {before:.3f} (warm start) -> {after:.3f} after {cfg.max_steps} steps "
                      f"({after - before:+.3f}{how})")
    console.print(f"final model: {out / 'final'}")
    plot_curves(metrics_path, out / "curves.png")
    return summary


if __name__ == "__main__":
    main()
