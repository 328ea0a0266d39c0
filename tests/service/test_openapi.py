"""The OpenAPI description is exercised by schemathesis against the app in-process: no input is a 5xx."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.service.conftest import ColourPredictor
from vestis.service import ServiceConfig, create_app

# schemathesis restarts the lifespan for every operation; without a background warm-up the app is ready
# at once, so /readyz answers 200 rather than a (documented) 503 that would count as a server error
CONFIG = ServiceConfig(max_wait_ms=0, max_upload_mb=1, max_pixels=100_000, max_images=4, warmup=False)
APP = create_app(ColourPredictor(), CONFIG)
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", APP)


def test_the_spec_documents_every_endpoint():
    spec = SCHEMA.raw_schema
    assert set(spec["paths"]) == {"/v1/attributes", "/v1/heatmap", "/v1/taxonomy", "/healthz", "/readyz", "/metrics"}
    body = spec["paths"]["/v1/attributes"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    assert {"413", "415", "422", "500"} <= set(spec["paths"]["/v1/attributes"]["post"]["responses"])


@SCHEMA.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_no_input_is_a_server_error_and_answers_match_the_spec(case):
    # not "schema-valid requests are accepted": random bytes are schema-valid image files, rightly refused
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    case.call_and_validate(checks=checks)
