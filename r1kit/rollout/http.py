"""A small JSON-over-HTTP client for r1kit's servers: a timeout on every request, bounded retries, clear errors.

Standard library only (urllib), so the remote engine and the remote reference add no dependency.
A request that cannot connect, times out or gets a 5xx answer is retried ``retries`` times with
exponential backoff (``backoff_s``, doubling); then ``ServiceError`` names the service, the URL
and the last cause. A 4xx answer (bad token, unknown model, bad request) is not retried: it will
not get better by waiting.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass


class ServiceError(RuntimeError):
    """A server r1kit depends on is unreachable, too slow, or refused the request."""


@dataclass
class ServiceClient:
    name: str  # what the server is, for messages: "generation server", "reference server"
    url: str  # base URL, e.g. http://127.0.0.1:8000
    token: str | None = None  # bearer token, sent when set
    timeout_s: float = 300.0
    retries: int = 4
    backoff_s: float = 2.0
    hint: str = ""  # appended to the give-up message, e.g. how to start the server

    def __post_init__(self):
        self.url = self.url.rstrip("/")

    @classmethod
    def from_services(cls, name: str, url: str, services, hint: str = "") -> "ServiceClient":
        """Built from a ServicesCfg: the token is read from the environment variable it names."""
        return cls(name, url, os.environ.get(services.token_env) or None, services.timeout_s, services.retries,
                   services.backoff_s, hint)

    def get(self, path: str, timeout_s: float | None = None) -> dict:
        return self.request("GET", path, None, timeout_s=timeout_s)

    def post(self, path: str, payload: dict | bytes, timeout_s: float | None = None, retries: int | None = None) -> dict:
        return self.request("POST", path, payload, timeout_s=timeout_s, retries=retries)

    def request(self, method: str, path: str, payload: dict | bytes | None, timeout_s: float | None = None,
                retries: int | None = None) -> dict:
        retries = self.retries if retries is None else retries
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        url = self.url + path
        last = ""
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                return self._once(method, url, payload, timeout_s)
            except urllib.error.HTTPError as e:
                detail = _error_text(e)
                if e.code < 500:
                    raise ServiceError(f"{self.name} at {url} refused the request (HTTP {e.code}): {detail}") from None
                last = f"HTTP {e.code}: {detail}"
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
                reason = getattr(e, "reason", e)
                last = f"{type(reason).__name__}: {reason}"
        raise ServiceError(f"{self.name} at {url} did not answer after {retries + 1} tries "
                           f"(timeout {timeout_s:g} s each, backoff from {self.backoff_s:g} s); last error: {last}"
                           + (f". {self.hint}" if self.hint else ""))

    def _once(self, method: str, url: str, payload, timeout_s: float) -> dict:
        headers = {"Accept": "application/json"}
        data = None
        if isinstance(payload, (bytes, bytearray)):
            data, headers["Content-Type"] = bytes(payload), "application/octet-stream"
        elif payload is not None:
            data, headers["Content-Type"] = json.dumps(payload).encode(), "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        with urllib.request.urlopen(req, timeout=timeout_s) as response:
            body = response.read()
        return json.loads(body) if body else {}


def _error_text(e: urllib.error.HTTPError) -> str:
    try:
        body = e.read().decode(errors="replace")
    except Exception:  # the body is only for the message
        body = ""
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            err = parsed.get("error", parsed.get("detail", parsed))
            if isinstance(err, dict):
                err = err.get("message", err)
            return str(err)[:500]
    except ValueError:
        pass
    return body[:500] or str(e.reason)
