"""Service settings: validation and the per-request limits derived from them."""

from __future__ import annotations

import pytest

from vestis.errors import VestisError
from vestis.service.config import Limits, ServiceConfig


def test_limits_from_the_settings():
    assert ServiceConfig(max_upload_mb=0.5, max_pixels=1234, max_images=3).limits == Limits(2**19, 1234, 3)
    assert ServiceConfig().limits == Limits()  # the two sets of defaults agree


def test_every_bad_setting_is_reported():
    with pytest.raises(VestisError) as e:
        ServiceConfig(max_batch_size=0, max_upload_mb=-1, max_wait_ms=-0.5)
    assert str(e.value) == (
        "service: max_batch_size: expected a positive value, got 0; max_wait_ms: expected a positive value, "
        "got -0.5; max_upload_mb: expected a positive value, got -1"
    )
    ServiceConfig(max_wait_ms=0)  # no waiting is allowed


def test_the_hostile_load_settings():
    c = ServiceConfig(max_request_pixels=5000, max_json_depth=4, decode_budget_mb=0.5, max_queue_wait_ms=250)
    assert (c.limits.max_request_pixels, c.limits.max_json_depth) == (5000, 4)
    assert c.decode_budget_bytes == 2**19
    with pytest.raises(VestisError) as e:
        ServiceConfig(max_request_pixels=0, max_json_depth=1, decode_budget_mb=0, max_queue_wait_ms=0)
    assert str(e.value) == (
        "service: max_request_pixels: expected a positive value, got 0; max_json_depth: expected at least 2 "
        "(a request is an object holding a list), got 1; decode_budget_mb: expected a positive value, got 0; "
        "max_queue_wait_ms: expected a positive value, got 0"
    )


def test_batch_close_policy():
    assert ServiceConfig().batch_close == "early"
    assert ServiceConfig(batch_close="deadline").batch_close == "deadline"
    with pytest.raises(VestisError) as e:
        ServiceConfig(batch_close="never")
    assert str(e.value) == "service: batch_close: expected early or deadline, got 'never'"
