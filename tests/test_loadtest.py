"""``illustrator loadtest``: a small run against an in-process server, and the loopback guard."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import pytest
from aiohttp import web
from PIL import Image

import loadtest
from cli import main as cli_main
from config import config_from_mapping
from web.app import create_app
from web.keys import ENGINE_KEY

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


async def test_the_cli_cleans_up_what_it_created_and_prints_one_verdict_line(
    tmp_path: Path,
) -> None:
    config = config_from_mapping(
        {
            "mongodb": {"driver": "mongomock", "database": "loadtest_cleanup"},
            "output": {"directory": str(tmp_path / "out")},
            "persistence": {"fsync": False},
            "processing": {"auto_resume": False},
            "providers": {"image_size": 32, "simulated_latency_ms": 100},
        },
        env={},
    )
    app = create_app(config)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"

    async def illustrator_loadtest(*options: str) -> tuple[int, str]:
        script = Path(sys.executable).parent / "illustrator"
        process = await asyncio.create_subprocess_exec(
            str(script), "loadtest", "--url", url, "--quiet", "--chapters", "1",
            "--moments", "1", "--pause-share", "0", *options,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(process.communicate(), 120)
        return process.returncode or 0, output.decode()

    try:
        code, output = await illustrator_loadtest(
            "--sessions", "2", "--cleanup", "--report", str(tmp_path / "r.json")
        )
        engine = app[ENGINE_KEY]
        left = await engine.store.list_sessions(), await engine.store.list_manuscripts()
        checkpoint_files = list((tmp_path / "out" / "sessions" / "checkpoints").iterdir())
        short_code, short_output = await illustrator_loadtest(
            "--sessions", "1", "--duration", "0.05", "--report", str(tmp_path / "s.json")
        )
    finally:
        await runner.cleanup()

    verdicts = [line for line in output.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert (code, verdicts) == (0, ["PASS"]), output
    assert "integrity: ok: 2 sessions" in output
    assert "cleanup: 2 sessions and 2 manuscripts deleted, 0 problems" in output
    assert left == ([], []), "the run left sessions or manuscripts behind"
    assert checkpoint_files == []
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["verdict"] == {"pass": True, "reasons": []}
    assert report["cleanup"]["sessions_deleted"] == 2
    verdicts = [line for line in short_output.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert short_code == 1 and len(verdicts) == 1, short_output
    assert verdicts[0].startswith("FAIL: 0 of 1 sessions completed"), short_output
