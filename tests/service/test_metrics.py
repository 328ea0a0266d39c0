"""The metric collectors on their own registry."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vestis.service.batching import BatchStats
from vestis.service.metrics import ServiceMetrics


def _values(m: ServiceMetrics) -> dict[str, float]:
    text = m.render().decode()
    return {
        s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items())): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_batches_are_recorded():
    m = ServiceMetrics()
    for stats in [BatchStats(3, 0.02), BatchStats(16, 0.2), BatchStats(1, 0.004, failed=True)]:
        m.observe_batch(stats)
    v = _values(m)
    assert v["vestis_batch_size_count"] == 3 and v["vestis_batch_size_sum"] == 20
    assert v["vestis_batch_size_bucket{le=2.0}"] == 1 and v["vestis_batch_size_bucket{le=4.0}"] == 2
    assert v["vestis_batch_size_bucket{le=16.0}"] == 3
    assert v["vestis_batch_duration_seconds_sum"] == pytest.approx(0.224)
    assert v["vestis_batch_duration_seconds_bucket{le=0.005}"] == 1
    assert v["vestis_images_total"] == 20 and v["vestis_batch_failures_total"] == 1


def test_queue_depth_is_read_at_scrape_time_and_registries_are_separate():
    depth = [0]
    a, b = ServiceMetrics(), ServiceMetrics()
    a.track_queue(lambda: depth[0])
    depth[0] = 7
    assert _values(a)["vestis_queue_depth"] == 7
    assert _values(b)["vestis_queue_depth"] == 0
