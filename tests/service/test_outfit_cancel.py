"""A request cancelled while its image is in a running batch: the batch owns the image (closed after the batch),
the other requests of the batch are answered, and the decode budget goes back to zero."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from tests.service.outfit_fixtures import make_pipeline, png
from vestis.service import ServiceConfig, create_app


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from vestis.inference.pipeline import OutfitPipeline

    return OutfitPipeline.load(make_pipeline(tmp_path_factory.mktemp("outfit")), device="cpu")


def test_a_cancelled_request_leaves_its_batch_alone(pipeline):
    predict = pipeline.predict
    started, gate = threading.Event(), threading.Event()
    seen: list[int] = []
    calls: list[int] = []

    def gated(images):
        if not calls:  # the first batch waits until the test has cancelled one of its requests
            started.set()
            assert gate.wait(20)
        calls.append(len(images))
        for im in images:
            im.getpixel((0, 0))  # raises ValueError on a closed image
        seen.extend(im.width for im in images)
        return predict(images)

    pipeline.predict = gated
    app = create_app(pipeline, ServiceConfig(max_batch_size=3, max_wait_ms=5000, warmup=False))
    service = app.state.service
    sides = (32, 64, 96)

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as c:
                deadline = time.monotonic() + 10
                while not service.batcher or not service.batcher.running:
                    assert time.monotonic() < deadline, "not started"
                    await asyncio.sleep(0.01)
                posts = [
                    asyncio.ensure_future(
                        c.post("/v1/outfit", files={"file": (f"{s}.png", png((9, 9, 9), (s, s)), "image/png")})
                    )
                    for s in sides
                ]
                while not started.is_set():  # the three images are in the model thread's batch
                    assert time.monotonic() < deadline, "the batch did not start"
                    await asyncio.sleep(0.01)
                assert service.budget.in_use > 0
                posts[0].cancel()  # the client of the 32 px image goes away
                await asyncio.sleep(0.1)  # its cancellation runs while the batch waits
                gate.set()
                answers = await asyncio.gather(*posts[1:])
                with pytest.raises(asyncio.CancelledError):
                    await posts[0]
                while service.budget.in_use:  # the cancelled image's share comes back once its batch is done
                    assert time.monotonic() < deadline + 10, f"budget still holds {service.budget.in_use} bytes"
                    await asyncio.sleep(0.01)
                return answers

    answers = asyncio.run(main())
    assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
    assert [r.json()["width"] for r in answers] == [64, 96]
    assert all(len(r.json()["garments"]) == 1 for r in answers)
    assert calls == [3] and sorted(seen) == [32, 64, 96]  # the batch ran on all three open images
    assert service.budget.in_use == 0
