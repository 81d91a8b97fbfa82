"""``illustrator loadtest``: a small run against an in-process server, and the loopback guard."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from aiohttp import web
from PIL import Image

import loadtest
from cli import main as cli_main
from config import config_from_mapping
from web.app import create_app

pytestmark = pytest.mark.timeout(120)


def options(url: str, report: Path, **overrides: object) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    loadtest.add_arguments(parser)
    args = parser.parse_args(["--url", url, "--report", str(report), "--quiet"])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


async def test_small_run_reports_and_plots(tmp_path: Path) -> None:
    config = config_from_mapping(
        {
            "mongodb": {"driver": "mongomock", "database": "loadtest"},
            "output": {"directory": str(tmp_path / "out")},
            "persistence": {"fsync": False},
            "processing": {"auto_resume": False},
            "providers": {"image_size": 32, "simulated_latency_ms": 20},
        },
        env={},
    )
    runner = web.AppRunner(create_app(config))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        args = options(
            f"http://127.0.0.1:{port}", tmp_path / "r.json", sessions=3, chapters=1, moments=2,
            provider_latency=20, duration=60.0, pause_share=0.34,
        )  # fmt: skip
        report = await loadtest.run_async(args)
    finally:
        await runner.cleanup()

    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(
        json.dumps(report, default=str)
    )
    sessions = report["sessions"]
    assert sessions["requested"] == sessions["started"] == sessions["completed"] == 3
    assert sessions["paused_and_resumed"] + sessions["pause_too_late"] == 1
    assert report["stopped_by"] == "completion"
    assert report["errors"] == {"count": 0, "examples": []}
    # 3 + chapters * (4 + moments) checkpoints per session, plus one per pause.
    assert report["checkpoints"]["count"] == 3 * 9 + sessions["paused_and_resumed"]
    assert report["checkpoints"]["per_second"] > 0
    ack = report["ack_latency_ms"]
    assert ack["count"] == report["checkpoints"]["count"]
    assert 0 < ack["p50"] <= ack["p95"] <= ack["p99"]
    delivery = report["event_delivery_ms"]
    assert delivery["count"] > 0 and delivery["p50"] <= delivery["p99"] <= delivery["max"]
    assert report["provider_latency"]["analysis_step_median_ms"] >= 20
    assert report["warnings"] == []
    integrity = report["integrity"]
    assert integrity["ok"], integrity["problems"]
    assert integrity["sessions_checked"] == 3
    assert integrity["images_listed"] == integrity["images_fetched"] > 0
    assert report["timeline"]

    with Image.open(tmp_path / "r.png") as image:
        image.verify()
    with Image.open(tmp_path / "r.png") as image:
        assert image.format == "PNG" and image.size[0] > 100


@pytest.mark.parametrize(
    "url", ["http://10.0.0.5:8080", "http://example.com", "http://192.168.1.2", "ftp://127.0.0.1"]
)
def test_non_loopback_url_is_refused(url: str, tmp_path: Path, capsys) -> None:
    with pytest.raises(loadtest.LoadTestError):
        loadtest.loopback_base(url)
    with pytest.raises(SystemExit) as stopped:
        cli_main(["loadtest", "--url", url, "--report", str(tmp_path / "r.json"), "--quiet"])
    assert stopped.value.code == 2
    assert "loopback" in capsys.readouterr().err or url.startswith("ftp")
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080", "http://127.8.9.10", "http://[::1]:80", "http://localhost:1"]
)
def test_loopback_urls_are_accepted(url: str) -> None:
    assert loadtest.loopback_base(url).startswith("http://")
