"""Prometheus metrics in the text exposition format, written by hand (no dependency, a few dozen lines):
request counts by route and status, request latency, batch sizes and batch latency by model and operation,
generated tokens, and the requests waiting in each batcher's queue."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

Labels = tuple[tuple[str, str], ...]


def _labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


class _Histogram:
    def __init__(self, buckets: Sequence[float]):
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.sum += value
        self.count += 1


class Metrics:
    """Thread-safe counters, gauges and histograms, rendered by `render()` for GET /metrics."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self._gauges: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._hists: dict[str, dict[Labels, _Histogram]] = defaultdict(dict)
        self._help: dict[str, tuple[str, str]] = {}
        self._buckets: dict[str, Sequence[float]] = {}
        self.describe()

    def describe(self) -> None:
        self._declare("frugal_requests_total", "counter", "HTTP requests by route, method and status code")
        self._declare("frugal_request_duration_seconds", "histogram",
                      "time from request to the end of the response (streams included)", LATENCY_BUCKETS)
        self._declare("frugal_batch_size", "histogram", "items per micro-batch (texts or prompts)", BATCH_BUCKETS)
        self._declare("frugal_batch_requests", "histogram", "requests merged into one micro-batch", BATCH_BUCKETS)
        self._declare("frugal_batch_duration_seconds", "histogram", "inference time of one micro-batch",
                      LATENCY_BUCKETS)
        self._declare("frugal_queue_wait_seconds", "histogram", "time a request waited before its batch ran",
                      LATENCY_BUCKETS)
        self._declare("frugal_items_total", "counter", "items processed, by model and operation")
        self._declare("frugal_generated_tokens_total", "counter", "tokens generated, by model")
        self._declare("frugal_prompt_tokens_total", "counter", "prompt tokens read for generation, by model")
        self._declare("frugal_queue_depth", "gauge", "requests waiting in a batcher's queue")
        self._declare("frugal_errors_total", "counter", "failed batch items, by model, operation and error type")

    def _declare(self, name: str, kind: str, help_: str, buckets: Sequence[float] | None = None) -> None:
        self._help[name] = (kind, help_)
        if buckets is not None:
            self._buckets[name] = buckets

    @staticmethod
    def _key(labels: dict[str, str]) -> Labels:
        return tuple(sorted((k, str(v)) for k, v in labels.items()))

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        with self._lock:
            self._counters[name][self._key(labels)] += value

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._gauges[name][self._key(labels)] = value

    def observe(self, name: str, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            hist = self._hists[name].get(key)
            if hist is None:
                hist = self._hists[name][key] = _Histogram(self._buckets[name])
            hist.observe(value)

    def render(self) -> str:
        """The text exposition format (version 0.0.4)."""
        lines: list[str] = []
        with self._lock:
            for name, (kind, help_) in self._help.items():
                lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
                if kind == "counter":
                    lines += [f"{name}{_labels(k)} {_num(v)}" for k, v in sorted(self._counters[name].items())]
                elif kind == "gauge":
                    lines += [f"{name}{_labels(k)} {_num(v)}" for k, v in sorted(self._gauges[name].items())]
                else:
                    for k, h in sorted(self._hists[name].items()):
                        for bound, count in [*zip(h.buckets, h.counts, strict=True), ("+Inf", h.count)]:
                            le = 'le="' + (bound if isinstance(bound, str) else _num(bound)) + '"'
                            lines.append(f"{name}_bucket{_labels(k, le)} {count}")
                        lines.append(f"{name}_sum{_labels(k)} {_num(h.sum)}")
                        lines.append(f"{name}_count{_labels(k)} {h.count}")
        return "\n".join(lines) + "\n"
