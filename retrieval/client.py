"""`HTTPRetriever`: the `Retriever` protocol over a Search-R1-compatible retrieval server.

Connection failures, timeouts and 5xx answers are retried with exponential backoff
(backoff, 2*backoff, 4*backoff, ... seconds); a 4xx is the caller's mistake and raises at
once with the server's message. When every attempt fails, `RetrieverUnavailable` names the
URL and the last cause, so a training run stops with a message instead of a bare socket
traceback. Standard library only (urllib).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from retrieval.corpus import split_contents
from retrieval.types import Passage, check_k

__all__ = ["HTTPRetriever", "RetrieverUnavailable"]


class RetrieverUnavailable(ConnectionError):
    """The retrieval server could not be reached (or kept failing) after all retries."""


class HTTPRetriever:
    """Search through `POST {url}/retrieve`; large batches are split into `max_batch` requests."""

    def __init__(self, url: str, timeout: float = 30.0, retries: int = 3, backoff: float = 0.5,
                 max_batch: int = 512):
        base = url.rstrip("/")
        for suffix in ("/retrieve", "/health"):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
        self.base_url = base
        self.url = base + "/retrieve"
        self.timeout, self.retries, self.backoff, self.max_batch = timeout, retries, backoff, max_batch

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        k = check_k(k)
        results: list[list[Passage]] = []
        for start in range(0, len(queries), self.max_batch):
            batch = list(queries[start:start + self.max_batch])
            payload = {"queries": batch, "topk": k, "return_scores": True}
            answer = self._request(self.url, json.dumps(payload).encode("utf-8"))
            results.extend(self._parse(answer, len(batch)))
        return results

    def health(self) -> dict:
        return self._request(self.base_url + "/health", None)

    def _parse(self, answer: dict, expected: int) -> list[list[Passage]]:
        result = answer.get("result") if isinstance(answer, dict) else None
        if not isinstance(result, list) or len(result) != expected:
            raise ValueError(f"{self.url}: expected {{'result': [...]}} with {expected} lists, "
                             f"got {json.dumps(answer)[:200]}")
        parsed = []
        for position, hits in enumerate(result):
            try:
                passages = []
                for hit in hits:
                    document = hit["document"]
                    title, text = split_contents(document["contents"])
                    passages.append(Passage(str(document["id"]), title, text, float(hit["score"])))
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{self.url}: result[{position}] is not a list of "
                                 f'{{"document": {{"id", "contents"}}, "score"}}: {json.dumps(hits)[:200]}') from err
            parsed.append(passages)
        return parsed

    def _request(self, url: str, body: bytes | None) -> dict:
        last_cause = "no attempt made"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"},
                                             method="POST" if body is not None else "GET")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as err:
                message = _error_message(err)
                if err.code < 500:
                    raise ValueError(f"{url}: HTTP {err.code}: {message}") from None
                last_cause = f"HTTP {err.code}: {message}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
                last_cause = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
            except json.JSONDecodeError as err:
                raise ValueError(f"{url}: response is not JSON ({err})") from None
        raise RetrieverUnavailable(f"retrieval server at {url} unavailable after {self.retries + 1} attempts: "
                                   f"{last_cause}; is `python -m retrieval.server` running?")


def _error_message(err: urllib.error.HTTPError) -> str:
    try:
        return json.loads(err.read()).get("error", err.reason)
    except Exception:  # a proxy's HTML error page, an empty body, ...
        return str(err.reason)
