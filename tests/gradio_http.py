"""A light caller of a gradio app's HTTP API (``POST /gradio_api/call/<api>`` then the event's SSE stream, as
gradio documents for curl): what a load test needs from a visitor, at a browser's cost in CPU. gradio_client's
iterator polls every millisecond per call, so 25 of them in one process on two cores spend about three times the
app's own CPU and measure the client more than the Space."""

from __future__ import annotations

import json

import httpx


class CallError(RuntimeError):
    """The app answered the call with an error event."""


class Caller:
    def __init__(self, url: str, timeout: float = 120.0):
        self.root = url.rstrip("/")
        self.http = httpx.Client(base_url=self.root + "/gradio_api", timeout=timeout)

    def load_page(self) -> None:
        """What a browser fetches first: the app's config."""
        self.http.get(self.root + "/config").raise_for_status()

    def predict(self, *data, api_name: str) -> list:
        """The endpoint's outputs (a list, one item per output component)."""
        name = api_name.lstrip("/")
        r = self.http.post(f"/call/{name}", json={"data": list(data)})
        r.raise_for_status()
        event_id = r.json()["event_id"]
        event = None
        with self.http.stream("GET", f"/call/{name}/{event_id}") as stream:
            stream.raise_for_status()
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    payload = line.split(":", 1)[1].strip()
                    if event == "error":
                        raise CallError(f"{api_name}: {payload}")
                    return json.loads(payload)
        raise CallError(f"{api_name}: the stream ended without a result (last event {event!r})")

    def close(self) -> None:
        self.http.close()
