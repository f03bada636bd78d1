"""Histogram bucket boundaries shared by the gateway's and the runtime's metrics, stated once."""

from __future__ import annotations

#: Seconds, from 100 µs to 10 s: the span of inference latencies from tiny CPU models to large
#: GPU ones. NOTE: dashboards and SLO alerts query `le="0.25"` and the like; change these
#: boundaries and deploy/prometheus/alerts.yml together.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Rows per execution: powers of two, as preferred batch sizes usually are.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
