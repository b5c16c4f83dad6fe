"""An engine over any OpenAI-compatible `/v1/completions` endpoint (e.g. a vLLM server).

The endpoint only speaks text, so prompts are decoded with the local tokenizer and the
completions re-encoded with it: the ids that come back are not necessarily the ids the
server sampled, and there are no logprobs. Hence `exact_tokens = False`: trajectories from
this engine are for evaluation and chat, never for training.

Identical prompts are sent once with `n` = their count (so the server samples them
independently and can share the prefill); distinct prompts go out as concurrent requests.
Only the standard library is used.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from agent.engines.base import Generation, SamplingParams


class OpenAIEngine:
    """Completions client; `vllm_extras` sends vLLM's fields that keep stops in the output
    (`include_stop_str_in_output`, `stop_token_ids`, `skip_special_tokens=False`). Turn it
    off for servers that reject unknown fields: stop token ids are then sent as their text,
    and a stop string is re-appended when the server reports which one matched."""

    exact_tokens = False

    def __init__(
        self,
        base_url: str,
        model: str,
        tokenizer=None,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 2,
        retry_delay: float = 1.0,
        vllm_extras: bool = True,
        max_concurrency: int = 8,
    ):
        if tokenizer is None or isinstance(tokenizer, str):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tokenizer or model)
        self.tokenizer = tokenizer
        self.model = model
        self.url = completions_url(base_url)
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self.vllm_extras = vllm_extras
        self.max_concurrency = max_concurrency

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        unique: dict[tuple[int, ...], list[int]] = {}  # prompt -> rows: one request each, n = len(rows)
        for i, prompt in enumerate(prompts):
            unique.setdefault(tuple(prompt), []).append(i)
        groups = list(unique.items())
        bodies = [self._body(list(ids), len(rows), params, k) for k, (ids, rows) in enumerate(groups)]
        with ThreadPoolExecutor(max_workers=max(1, min(self.max_concurrency, len(bodies)))) as pool:
            answers = list(pool.map(self._post, bodies))
        out: list[Generation | None] = [None] * len(prompts)
        for (_, rows), answer in zip(groups, answers):
            choices = sorted(answer.get("choices", []), key=lambda c: c.get("index", 0))
            if len(choices) != len(rows):
                raise RuntimeError(f"{self.url} returned {len(choices)} choices for n={len(rows)}: {str(answer)[:300]}")
            for row, choice in zip(rows, choices):
                out[row] = self._generation(choice)
        return out

    def _body(self, prompt_ids: list[int], n: int, params: SamplingParams, group: int) -> dict:
        stop = list(params.stop_strings)
        body = {
            "model": self.model,
            "prompt": self.tokenizer.decode(prompt_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False),
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "n": n,
        }
        if params.seed is not None:
            body["seed"] = params.seed + group  # distinct prompts must not share one random stream
        if self.vllm_extras:
            body.update(include_stop_str_in_output=True, skip_special_tokens=False, spaces_between_special_tokens=False)
            if params.stop_token_ids:
                body["stop_token_ids"] = list(params.stop_token_ids)
            if params.top_k > 0:
                body["top_k"] = params.top_k
        else:
            stop += [self.tokenizer.decode([i], skip_special_tokens=False) for i in params.stop_token_ids]
        if stop:
            body["stop"] = stop
        return body

    def _generation(self, choice: dict) -> Generation:
        text = choice.get("text") or ""
        reason = choice.get("finish_reason")
        matched = choice.get("stop_reason")
        if not self.vllm_extras and reason == "stop" and isinstance(matched, str) and not text.endswith(matched):
            text += matched  # standard servers cut the stop string off; our contract keeps it
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return Generation(
            token_ids=ids,
            logprobs=[0.0] * len(ids),
            finish="length" if reason == "length" else "stop",
            meta={"text": text, "finish_reason": reason, "stop_reason": matched},
        )

    def _post(self, body: dict) -> dict:
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        attempts = 1 + max(0, self.retries)
        last_error: Exception | None = None
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.retry_delay * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read().decode("utf-8", "replace")
                try:
                    return json.loads(raw)
                except json.JSONDecodeError as err:
                    raise RuntimeError(f"{self.url} answered with something that is not JSON: {raw[:300]!r}") from err
            except urllib.error.HTTPError as err:
                detail = err.read().decode("utf-8", "replace")[:500]
                if err.code < 500 and err.code != 429:
                    raise RuntimeError(f"{self.url} answered HTTP {err.code}: {detail}") from err
                last_error = RuntimeError(f"HTTP {err.code}: {detail}")
            except OSError as err:  # refused, reset, timed out, unresolvable host
                last_error = err
        raise ConnectionError(
            f"no answer from the completions endpoint {self.url} after {attempts} attempt(s) "
            f"({self.timeout:g}s timeout each): {last_error}. Is the server running and the URL right?"
        )


def completions_url(base_url: str) -> str:
    """`http://host:8000`, `.../v1` or `.../v1/completions` -> `.../v1/completions`.

    >>> completions_url("http://127.0.0.1:8000/v1/")
    'http://127.0.0.1:8000/v1/completions'
    """
    url = base_url.rstrip("/")
    if url.endswith("/completions"):
        return url
    if not url.endswith("/v1"):
        url += "/v1"
    return url + "/completions"
