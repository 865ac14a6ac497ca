"""Prometheus exposition of the appliance's counters, for all workers together.

Rules kept here:
- Figures come from the shared memory block (`oca.server.stats`), summed
  over every worker slot, so any worker answers a scrape with the whole
  appliance's numbers and a killed worker's counts are not lost.
- Store state and capacity come from the index and `statvfs`; the fill
  agent's last run (if any) from the index's `fill_status` flag.
- Text is produced by prometheus-client's own exposition code from custom
  metric families, so the format is the library's, not ours.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from oca import __version__
from oca.server import stats as S

if TYPE_CHECKING:
    from oca.server.app import App


class _Collector:
    def __init__(self, app: "App"):
        self.app = app

    def collect(self) -> Iterable[Metric]:
        app = self.app
        t = app.stats.totals()
        appliance = app.cfg.appliance.id
        info = GaugeMetricFamily("oca_info", "Software version and identity", labels=["version", "appliance", "site"])
        info.add_metric([__version__, appliance, app.cfg.appliance.site], 1)
        yield info
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
        h = app.stats.header
        yield GaugeMetricFamily("oca_load_sent_bytes_per_second", "Bytes per second sent, sampled each second", value=h[S.H_BYTES_PER_S])
        yield GaugeMetricFamily("oca_load_cpu_percent", "Machine CPU use, percent", value=h[S.H_CPU_PERCENT])
        if h[S.H_NIC_UTIL] >= 0:
            yield GaugeMetricFamily("oca_load_nic_utilisation", "Share of the NIC's capacity in use (0..1)", value=h[S.H_NIC_UTIL])
        yield CounterMetricFamily("oca_worker_restarts", "Workers restarted after dying", value=h[S.H_WORKER_RESTARTS])
        records = app.store.index.stores()
        state = GaugeMetricFamily("oca_store_up", "1 when the store is working, 0 when failed", labels=["store"])
        total = GaugeMetricFamily("oca_store_total_bytes", "Store size", labels=["store"])
        used = GaugeMetricFamily("oca_store_used_bytes", "Store bytes used", labels=["store"])
        free = GaugeMetricFamily("oca_store_free_bytes", "Store bytes free", labels=["store"])
        reserve = GaugeMetricFamily("oca_store_reserve_bytes", "Store bytes kept free", labels=["store"])
        for disk in app.store.disks:
            rec = records.get(disk.uuid or "")
            up = 1 if (rec.state if rec is not None else disk.state) == "ok" else 0
            cap = disk.capacity()
            state.add_metric([disk.path], up)
            total.add_metric([disk.path], cap.total_bytes)
            used.add_metric([disk.path], cap.used_bytes)
            free.add_metric([disk.path], cap.free_bytes)
            reserve.add_metric([disk.path], cap.reserve_bytes)
        yield from (state, total, used, free, reserve)
        yield GaugeMetricFamily("oca_index_generation", "Inventory generation", value=app.store.index.generation())
        yield GaugeMetricFamily("oca_draining", "1 while drained by the operator", value=1 if app.store.index.get_flag("drain") is not None else 0)
        fill = app.store.index.get_flag("fill_status")
        try:
            last = (json.loads(fill) if fill else {}).get("last") or {}
        except ValueError:
            last = {}
        # Always exported (0 before the first run), so dashboards have a series.
        for key, help_ in (("bytes_filled", "Bytes filled by the last fill run"), ("files_added", "Files added by the last fill run"),
                           ("files_deleted", "Files deleted by the last fill run"), ("files_failed", "Files that failed in the last fill run")):
            value = last.get(key)
            yield GaugeMetricFamily(f"oca_fill_last_{key}", help_, value=value if isinstance(value, (int, float)) else 0)
        ended = last.get("ended_s")
        yield GaugeMetricFamily("oca_fill_last_end_timestamp_seconds", "When the last fill run ended (0: never)", value=ended if isinstance(ended, (int, float)) else 0)


def render(app: "App") -> bytes:
    registry = getattr(app, "_registry", None)
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(app))  # type: ignore[arg-type]
        app._registry = registry  # type: ignore[attr-defined]
    return generate_latest(registry)
