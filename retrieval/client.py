"""`HTTPRetriever`: the `Retriever` protocol over a Search-R1-compatible retrieval server.

Requests go through one `httpx.Client`, whose connections are kept alive and reused: a
rollout searches once a turn, and a new TCP connection per search costs the server an
accept and the client a handshake each time. Connection failures, timeouts and 5xx answers
are retried with exponential backoff (backoff, 2*backoff, 4*backoff, ... seconds); a 4xx is
the caller's mistake and raises at once with the server's message. When every attempt
fails, `RetrieverUnavailable` names the URL and the last cause, so a caller can say what
is down instead of showing a bare socket traceback.
"""

from __future__ import annotations

import json
import time

import httpx

from retrieval.corpus import split_contents
from retrieval.types import Passage, check_k

__all__ = ["HTTPRetriever", "RetrieverUnavailable"]


class RetrieverUnavailable(ConnectionError):
    """The retrieval server could not be reached (or kept failing) after all retries."""


class HTTPRetriever:
    """Search through `POST {url}/retrieve`; large batches are split into `max_batch` requests."""

    def __init__(self, url: str, timeout: float = 30.0, retries: int = 3, backoff: float = 0.5,
                 max_batch: int = 512):
        self.base_url = url.rstrip("/").removesuffix("/retrieve").removesuffix("/health")
        self.url = self.base_url + "/retrieve"
        self.timeout, self.retries, self.backoff, self.max_batch = timeout, retries, backoff, max_batch
        self._client = httpx.Client(timeout=timeout)

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        k = check_k(k)
        results: list[list[Passage]] = []
        for start in range(0, len(queries), self.max_batch):
            batch = list(queries[start:start + self.max_batch])
            answer = self._request(self.url, {"queries": batch, "topk": k, "return_scores": True})
            results.extend(self._parse(answer, len(batch)))
        return results

    def health(self) -> dict:
        return self._request(self.base_url + "/health", None)

    def close(self) -> None:
        """Close the kept-alive connections."""
        self._client.close()

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

    def _request(self, url: str, payload: dict | None) -> dict:
        """The JSON answer of a POST of `payload` (a GET without one), retried with backoff."""
        last_cause = "no attempt made"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = self._client.get(url) if payload is None else self._client.post(url, json=payload)
            except httpx.TransportError as err:  # refused, reset, timed out, a kept-alive connection gone stale
                last_cause = f"{type(err).__name__}: {err}"
                continue
            if response.status_code >= 500:
                last_cause = f"HTTP {response.status_code}: {_error_message(response)}"
                continue
            if response.status_code >= 400:
                raise ValueError(f"{url}: HTTP {response.status_code}: {_error_message(response)}")
            try:
                return response.json()
            except ValueError as err:
                raise ValueError(f"{url}: response is not JSON ({err})") from None
        raise RetrieverUnavailable(f"retrieval server at {url} unavailable after {self.retries + 1} attempts: "
                                   f"{last_cause}; is `python -m retrieval.server` running?")


def _error_message(response: httpx.Response) -> str:
    """The server's own words: its JSON `error` (FastAPI's `detail`), else the reason phrase."""
    try:
        body = response.json()
    except ValueError:  # a proxy's HTML error page, an empty body, ...
        return response.reason_phrase
    message = body.get("error", body.get("detail")) if isinstance(body, dict) else None
    if message is None:
        return response.reason_phrase
    return message if isinstance(message, str) else json.dumps(message)[:200]
