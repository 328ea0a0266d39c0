"""The Dockerfile: checked against the code on every run; built and served where docker is usable (slow)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def _one(name: str) -> list[str]:
    return [args for word, args in _instructions() if word == name]


def test_cpu_image_serves_the_mounted_onnx_model_with_the_pinned_cpu_torch():
    assert [a.split()[0] for a in _one("FROM")] == ["python:3.12-slim", "python:3.12-slim"]
    assert "TORCH_INDEX=https://download.pytorch.org/whl/cpu" in _one("ARG")
    assert any('--index-url "${TORCH_INDEX}" torch==2.13.0' in r for r in _one("RUN"))
    assert [json.loads(a) for a in _one("ENTRYPOINT")] == [["vestis"]]
    assert [json.loads(a) for a in _one("CMD")] == [["serve", "/models/model.onnx", "--host", "0.0.0.0"]]
    assert _one("EXPOSE") == ["8000"] and _one("USER") == ["vestis"]


def test_the_healthcheck_requests_a_route_of_the_service():
    from tests.service.conftest import ColourPredictor
    from vestis.service import create_app

    [check] = _one("HEALTHCHECK")
    assert "VESTIS_HEALTH_URL" in check and "--start-period=" in check
    [env] = _one("ENV")
    url = re.search(r"VESTIS_HEALTH_URL=(\S+)", env).group(1)
    parsed = urlparse(url)
    assert parsed.port == 8000  # vestis serve's default port, which CMD keeps
    routes = {getattr(r, "path", None) for r in create_app(ColourPredictor()).routes}
    assert parsed.path == "/healthz" and parsed.path in routes


def test_the_build_context_holds_what_the_dockerfile_copies():
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [r for r in ignore if r and not r.startswith("#")]
    assert rules[0] == "*"  # an allowlist: nothing else (virtualenvs, runs, data, models) enters the context
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copied = set()
    for args in _one("COPY"):
        if not args.startswith("--from"):
            copied |= {p.rstrip("/") for p in args.split()[:-1]}
    assert copied == allowed == {"pyproject.toml", "README.md", "src"}
    assert all((ROOT / p).exists() for p in copied)


def test_every_documented_build_argument_exists():
    declared = {a.split("=")[0] for a in _one("ARG")}
    for doc in (ROOT / "docs" / "deploy.md", DOCKERFILE):
        used = set(re.findall(r"--build-arg (\w+)=", doc.read_text()))
        assert used and used <= declared, doc


def _docker_unusable() -> str | None:
    if shutil.which("docker") is None:
        return "docker is not on PATH"
    try:
        res = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"docker info failed: {e}"
    return None if res.returncode == 0 else f"docker daemon not usable: {res.stderr.strip()[:200]}"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_image_builds_and_serves_an_exported_model(tmp_path):
    reason = _docker_unusable()
    if reason:
        pytest.skip(reason)
    from tests.inference.conftest import make_checkpoint
    from vestis.inference.export import export_onnx

    models = tmp_path / "models"
    models.mkdir()
    export_onnx(make_checkpoint(tmp_path / "tiny.ckpt"), models / "model.onnx", opset=17, check_images=0)
    models.chmod(0o755)
    (models / "model.onnx").chmod(0o644)  # readable by the image's unprivileged user
    tag = "vestis-test:latest"
    build = subprocess.run(["docker", "build", "-t", tag, str(ROOT)], capture_output=True, text=True, timeout=1500)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run(
        ["docker", "run", "-d", "--rm", "-p", "127.0.0.1::8000", "-v", f"{models}:/models:ro", tag],
        capture_output=True,
        text=True,
        check=True,
    )
    container = run.stdout.strip()
    try:
        port = (
            subprocess.run(["docker", "port", container, "8000/tcp"], capture_output=True, text=True, check=True)
            .stdout.split(":")[-1]
            .strip()
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=5) as r:
                    if json.load(r)["ready"]:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, "the service did not become ready in 120 s"
            time.sleep(1)
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"{base}/v1/taxonomy", timeout=5) as r:
            assert [a["name"] for a in json.load(r)["attributes"]] == [
                "category",
                "colour",
                "sleeve.length",
                "occasion",
            ]
        # the image's own HEALTHCHECK runs the same request
        probe = subprocess.run(["docker", "exec", container, "python", "-c", _healthcheck_code()], capture_output=True)
        assert probe.returncode == 0, probe.stderr
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)


def _healthcheck_code() -> str:
    [check] = _one("HEALTHCHECK")
    cmd = json.loads(check[check.index("CMD") + 3 :].strip())
    assert cmd[:2] == ["python", "-c"]
    return cmd[2]
