"""Prometheus metrics of one service instance (its own registry, no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter("ai_engine_http_requests_total", "HTTP requests",
                                     ["route", "status"], registry=r)
        self.jobs_accepted = Counter("ai_engine_jobs_accepted_total", "Jobs accepted",
                                     ["generator"], registry=r)
        self.jobs_finished = Counter("ai_engine_jobs_finished_total", "Jobs finished",
                                     ["generator", "status"], registry=r)
        self.job_errors = Counter("ai_engine_job_errors_total", "Failed jobs by error code",
                                  ["code"], registry=r)
        self.stage_seconds = Histogram(
            "ai_engine_stage_seconds", "Time per stage", ["stage", "generator"], registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300))
        self.queue_depth = Gauge("ai_engine_queue_depth", "Queued jobs", registry=r)
        self.running = Gauge("ai_engine_jobs_running", "Running jobs", ["device"], registry=r)
        self.webhook_deliveries = Counter("ai_engine_webhook_deliveries_total",
                                          "Webhook delivery attempts by outcome",
                                          ["outcome"], registry=r)
