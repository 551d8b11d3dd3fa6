"""service/server.py: SIGTERM drains, in-process and as a real process under load."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from support import encoded

from loadtest.load import Load
from loadtest.parts import ServiceProcess, free_port
from service.config import Settings
from service.main import create_app
from service.server import DrainingServer


def test_sigterm_turns_readiness_false_then_drains_in_flight_requests(exported, bodies):
    settings = Settings(
        model_dir=exported, port=free_port(), shutdown_delay_s=0.3, shutdown_grace_s=10
    )
    app = create_app(settings)
    server = DrainingServer(app, settings, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.port}"
    while not server.started:
        time.sleep(0.02)
    engine = app.state.slot.current.engine
    real = engine.score

    def slow(*args):
        time.sleep(0.8)
        return real(*args)

    engine.score = slow
    with ThreadPoolExecutor(3) as pool:
        three = [{**b, "timeout_ms": 10_000} for b in bodies[:3]]
        in_flight = [pool.submit(httpx.post, f"{url}/rank", json=b, timeout=30) for b in three]
        while app.state.admission.rows < sum(len(b["candidates"]) for b in three):
            time.sleep(0.005)  # all three admitted
        server.handle_exit(signal.SIGTERM, None)  # what the signal calls
        assert httpx.get(f"{url}/readyz").status_code == 503  # first: readiness
        time.sleep(0.5)  # past the delay: admission has stopped
        assert app.state.admission.draining
        answers = [f.result() for f in in_flight]
    thread.join(15)
    assert not thread.is_alive()
    assert [a.status_code for a in answers] == [200, 200, 200]  # in flight: finished
    # over real HTTP too, each answer's body names the id its header carries, one per request
    ids = [a.json()["request_id"] for a in answers]
    assert ids == [a.headers["x-request-id"] for a in answers] and len(set(ids)) == 3
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{url}/rank", json=bodies[0])


def test_sigterm_under_load_exits_0_and_drops_nothing(exported, bodies, tmp_path):
    svc = ServiceProcess(
        log_path=tmp_path / "service.log",
        model_dir=exported,
        shutdown_delay_s=1.0,
        reload_poll_s=0,
    ).wait_ready()
    load = Load(svc.url, encoded(bodies), concurrency=4).start()
    load.wait_for(30)
    svc.proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    assert httpx.get(f"{svc.url}/readyz").status_code == 503
    time.sleep(max(0.0, 0.5 - (time.monotonic() - t0)))
    result = load.stop()  # what a balancer does once readiness is false
    assert svc.proc.wait(30) == 0
    log = (tmp_path / "service.log").read_text()
    assert "SIGTERM: draining" in log and "Traceback" not in log
    assert result.failed == 0 and result.total >= 30, result.summary()
