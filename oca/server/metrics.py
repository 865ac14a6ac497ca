"""Prometheus exposition of the appliance's counters, for all workers together.

Rules kept here:
- `render` takes a `MetricsSnapshot`, a frozen value gathered by the
  caller (the application), and performs no I/O: it never sees the App,
  the index or the shared memory, so this module imports nothing of the
  server's.
- Figures in the snapshot come from the shared memory block
  (`oca.server.stats`), summed over every worker slot, so any worker
  answers a scrape with the whole appliance's numbers and a killed worker's
  counts are not lost; store state and capacity from the index and
  `statvfs`; the fill agent's last run from its `FillStatus` record.
- Text is produced by prometheus-client's own exposition code from custom
  metric families, so the format is the library's, not ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from oca.server import stats as S


@dataclass(frozen=True, slots=True)
class StoreFigures:
    path: str
    up: bool
    total_bytes: int
    used_bytes: int
    free_bytes: int
    reserve_bytes: int


@dataclass(frozen=True, slots=True)
class TlsFigures:
    not_after_s: float | None  # the served certificate's expiry; None when unknown
    ktls: str  # "available", or why not
    reload_refused: bool  # the last SIGHUP's key pair was refused; the previous one is served
    session_tickets: str = ""  # "shared" (one ticket key for all workers), or "per-worker: <why>"
    ticket_keys: Mapping[str, Any] | None = None  # {"configured", "decrypting", "status"}: the worker's _share_tickets


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    version: str
    appliance: str
    site: str
    totals: tuple[int, ...]  # summed slot counters, indexed by stats.C_*
    header: tuple[float, ...]  # the shared header, indexed by stats.H_*
    stores: tuple[StoreFigures, ...]
    generation: int
    draining: bool
    fill_last: Mapping[str, Any] = field(default_factory=dict)
    task_failures: Mapping[str, int] = field(default_factory=dict)  # "worker.sweep", "parent.reap", ...
    tls: TlsFigures | None = None  # None: no [tls] table
    hot_path: str = ""  # "compiled" or "pure" (oca.http.speedups); "" leaves the family out


def _families(snap: MetricsSnapshot) -> Iterable[Metric]:
    t = snap.totals
    info = GaugeMetricFamily("oca_info", "Software version and identity", labels=["version", "appliance", "site"])
    info.add_metric([snap.version, snap.appliance, snap.site], 1)
    yield info
    if snap.hot_path:
        hot = GaugeMetricFamily("oca_hot_path_info", "The hot path in use: compiled fast paths, or pure Python (OCA_PURE=1 or not built)",
                                labels=["kind"])
        hot.add_metric([snap.hot_path], 1)
        yield hot
    req = CounterMetricFamily("oca_http_requests", "HTTP responses by status class", labels=["class"])
    for i, cls in enumerate(S.STATUS_CLASSES):
        req.add_metric([cls], t[S.C_STATUS + i])
    yield req
    codes = CounterMetricFamily("oca_http_responses_by_code", "HTTP responses by status code", labels=["code"])
    for i, code in enumerate(S.COUNTED_CODES):
        codes.add_metric([str(code)], t[S.C_CODES + i])
    yield codes
    yield CounterMetricFamily("oca_http_sent_bytes", "Response body bytes sent", value=t[S.C_BYTES])
    buckets = []
    acc = 0
    for i, bound in enumerate(S.HIST_BOUNDS_S):
        acc += t[S.C_HIST + i]
        buckets.append((repr(bound), acc))
    buckets.append(("+Inf", t[S.C_HIST_COUNT]))
    yield HistogramMetricFamily(
        "oca_http_response_seconds", "Time from end of request head to last byte sent",
        buckets=buckets, sum_value=t[S.C_HIST_SUM_US] / 1e6,
    )
    yield GaugeMetricFamily("oca_http_open_connections", "Open client connections", value=t[S.C_CONNECTIONS_OPEN])
    yield CounterMetricFamily("oca_http_connections", "Accepted client connections", value=t[S.C_CONNECTIONS_TOTAL])
    yield CounterMetricFamily("oca_http_rejected_connections", "Connections closed at max_connections", value=t[S.C_REJECTED])
    yield CounterMetricFamily("oca_http_bad_requests", "Requests that could not be parsed or broke a limit", value=t[S.C_BAD_REQUESTS])
    timeouts = CounterMetricFamily("oca_http_timeouts", "Connections closed by a timeout", labels=["kind"])
    timeouts.add_metric(["header"], t[S.C_TIMEOUT_HEADER])
    timeouts.add_metric(["idle"], t[S.C_TIMEOUT_IDLE])
    timeouts.add_metric(["send"], t[S.C_TIMEOUT_SEND])
    yield timeouts
    yield CounterMetricFamily("oca_sendfile_errors", "sendfile calls that failed on the file side", value=t[S.C_SENDFILE_ERRORS])
    h = snap.header
    yield GaugeMetricFamily("oca_load_sent_bytes_per_second", "Bytes per second sent, sampled each second", value=h[S.H_BYTES_PER_S])
    yield GaugeMetricFamily("oca_load_cpu_percent", "Machine CPU use, percent", value=h[S.H_CPU_PERCENT])
    if h[S.H_NIC_UTIL] >= 0:
        yield GaugeMetricFamily("oca_load_nic_utilisation", "Share of the NIC's capacity in use (0..1)", value=h[S.H_NIC_UTIL])
    yield CounterMetricFamily("oca_worker_restarts", "Workers restarted after dying", value=h[S.H_WORKER_RESTARTS])
    failures = CounterMetricFamily("oca_task_failures", "Failures of long-lived supervised tasks (each was restarted)", labels=["task"])
    for name, count in sorted(snap.task_failures.items()):
        failures.add_metric([name], count)
    yield failures
    state = GaugeMetricFamily("oca_store_up", "1 when the store is working, 0 when failed", labels=["store"])
    total = GaugeMetricFamily("oca_store_total_bytes", "Store size", labels=["store"])
    used = GaugeMetricFamily("oca_store_used_bytes", "Store bytes used", labels=["store"])
    free = GaugeMetricFamily("oca_store_free_bytes", "Store bytes free", labels=["store"])
    reserve = GaugeMetricFamily("oca_store_reserve_bytes", "Store bytes kept free", labels=["store"])
    for st in snap.stores:
        state.add_metric([st.path], 1 if st.up else 0)
        total.add_metric([st.path], st.total_bytes)
        used.add_metric([st.path], st.used_bytes)
        free.add_metric([st.path], st.free_bytes)
        reserve.add_metric([st.path], st.reserve_bytes)
    yield from (state, total, used, free, reserve)
    yield GaugeMetricFamily("oca_index_generation", "Inventory generation", value=snap.generation)
    yield GaugeMetricFamily("oca_draining", "1 while drained by the operator", value=1 if snap.draining else 0)
    last = snap.fill_last
    # Always exported (0 before the first run), so dashboards have a series.
    for key, help_ in (("bytes_filled", "Bytes filled by the last fill run"), ("files_added", "Files added by the last fill run"),
                       ("files_deleted", "Files deleted by the last fill run"), ("files_failed", "Files that failed in the last fill run")):
        value = last.get(key)
        yield GaugeMetricFamily(f"oca_fill_last_{key}", help_, value=_number(value))
    yield GaugeMetricFamily("oca_fill_last_end_timestamp_seconds", "When the last fill run ended (0: never)", value=_number(last.get("ended_s")))
    if snap.tls is not None:
        tls = snap.tls
        if tls.not_after_s is not None:
            yield GaugeMetricFamily("oca_tls_certificate_expiry_timestamp_seconds", "When the served TLS certificate expires (Unix time).",
                                    value=tls.not_after_s)
        ktls = GaugeMetricFamily("oca_tls_ktls_available", "Whether kernel TLS can be used (1) or not (0), and why not.", labels=["status"])
        ktls.add_metric([tls.ktls], 1 if tls.ktls == "available" else 0)
        yield ktls
        if tls.session_tickets:
            shared = GaugeMetricFamily("oca_tls_shared_ticket_key",
                                       "Whether all workers share one session-ticket key (1) or each has its own (0), and why not.",
                                       labels=["status"])
            shared.add_metric([tls.session_tickets], 1 if tls.session_tickets == "shared" else 0)
            yield shared
        if tls.ticket_keys:
            keys = GaugeMetricFamily("oca_tls_ticket_keys_decrypting",
                                     "Session-ticket keys that decrypt tickets (the first also encrypts); status: ok, or why fewer than configured.",
                                     labels=["status"])
            keys.add_metric([str(tls.ticket_keys.get("status", ""))], tls.ticket_keys.get("decrypting", 0))
            yield keys
        yield GaugeMetricFamily("oca_tls_reload_refused", "Whether the last SIGHUP's key pair was refused (the previous one is served).",
                                value=1 if tls.reload_refused else 0)


def _number(value: Any) -> float:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


class _Collector:
    def __init__(self, snap: MetricsSnapshot):
        self.snap = snap

    def collect(self) -> Iterable[Metric]:
        return _families(self.snap)


def render(snap: MetricsSnapshot) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(snap))  # type: ignore[arg-type]
    return generate_latest(registry)
