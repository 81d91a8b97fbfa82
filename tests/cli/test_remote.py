"""Commands that drive a running server: `watch`, `manuscripts list`, `sessions show|pause|
resume|cancel|delete`; the server found through the address it records; tokens."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import LONG_BOOK, Cli, Server, free_port, ok, start_server, stop_server
from pymongo import MongoClient

pytestmark = pytest.mark.timeout(240)

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, embedded_db_uri: str) -> Iterator[Any]:
    """One server (tokens on, 100 ms provider calls) for the module; the CLI beside it."""
    cli = Cli(
        tmp_path_factory.mktemp("served") / "out",
        embedded_db_uri,
        f"remote_{uuid.uuid4().hex[:12]}",
        extra={
            "ILLUSTRATOR_SERVER_API_TOKENS": TOKEN,
            "ILLUSTRATOR_PROVIDERS_SIMULATED_LATENCY_MS": "100",
            "ILLUSTRATOR_PROCESSING_AUTO_RESUME": "false",
        },
    )
    server = start_server(cli)
    try:
        yield cli, server
    finally:
        stop_server(server)
        assert not (cli.out / "server.json").exists(), "the address outlived the server"
        with MongoClient(embedded_db_uri) as client:
            client.drop_database(cli.database)


def frames(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def event_seqs(output: str) -> list[int]:
    return [f["event_seq"] for f in frames(output) if "event_seq" in f]


def test_serve_records_its_address_for_the_cli_readable_by_its_user_only(served: Any) -> None:
    cli, server = served
    address = cli.out / "server.json"
    recorded = json.loads(address.read_text())
    assert recorded["url"] == server.url
    assert recorded["pid"] == server.process.pid
    assert address.stat().st_mode & 0o777 == 0o600


def test_watch_after_prints_every_event_up_to_the_last(served: Any) -> None:
    cli, server = served
    sid = server.start_session()
    last = server.wait_final(sid)["last_event_seq"]
    stored = server.call("GET", f"/api/sessions/{sid}/logs?limit=1000")["logs"]
    assert stored[-1]["event_seq"] == last
    assert [f["type"] for f in stored if f["event_seq"] > last - 3].count("complete") == 1

    done = ok(cli.run("watch", sid, "--after", str(last - 3), ILLUSTRATOR_TOKEN=TOKEN))

    printed = frames(done.stdout)
    assert printed[0]["type"] == "snapshot" and printed[0]["status"] == "completed"
    assert event_seqs(done.stdout) == [last - 2, last - 1, last]
    assert printed[1:] == [f for f in stored if f["event_seq"] > last - 3]
    done = ok(cli.run("watch", sid, "--after", str(last), ILLUSTRATOR_TOKEN=TOKEN))
    assert event_seqs(done.stdout) == []


def test_watch_follows_a_live_session_to_its_last_event(served: Any) -> None:
    cli, server = served
    sid = server.start_session(LONG_BOOK * 3, moments=1)  # 18 chapters: seconds of work
    watching = cli.start("watch", sid, ILLUSTRATOR_TOKEN=TOKEN)
    output, errors = watching.communicate(timeout=180)
    assert watching.returncode == 0, errors
    last = server.wait_final(sid)["last_event_seq"]
    assert frames(output)[0]["status"] in ("pending", "queued", "running"), "watched too late"
    seqs = event_seqs(output)
    assert seqs == sorted(set(seqs)), "an event printed twice or out of order"
    assert seqs[-1] == last
    kinds = [f["type"] for f in frames(output)]
    assert "complete" in kinds and kinds[-1] != "complete", "the events after it were printed"


def test_watch_shows_the_servers_reason_on_404_and_422(served: Any) -> None:
    cli, _ = served
    unknown = str(uuid.uuid4())
    done = cli.run("watch", unknown, ILLUSTRATOR_TOKEN=TOKEN)
    assert done.returncode == 1
    assert f"server answered 404: session {unknown} not found" in done.stderr
    done = cli.run("watch", "not-a-session", ILLUSTRATOR_TOKEN=TOKEN)
    assert done.returncode == 1
    assert "server answered 422: session_id must be a UUID" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_token_comes_from_the_option_or_the_environment(served: Any) -> None:
    cli, _ = served
    refused = cli.run("manuscripts", "list")
    assert refused.returncode == 1
    assert "server answered 401: authentication required; pass --token or set" in (refused.stderr)
    ok(cli.run("manuscripts", "list", "--token", TOKEN))
    ok(cli.run("manuscripts", "list", ILLUSTRATOR_TOKEN=TOKEN))


def test_session_commands_drive_the_running_server(served: Any) -> None:
    cli, server = served
    # 30 chapters of 5 provider calls of 100 ms: minutes of work, far more than the test needs.
    sid = server.start_session(LONG_BOOK * 5, moments=3)

    def run(*args: str) -> str:
        return ok(cli.run(*args, ILLUSTRATOR_TOKEN=TOKEN)).stdout

    assert "Pause requested" in run("sessions", "pause", sid)
    assert server.wait_final(sid)["status"] == "paused"
    shown = run("sessions", "show", sid)
    assert f"Session {sid}: paused" in shown and "progress:" in shown
    assert json.loads(run("sessions", "show", sid, "--json"))["status"]["status"] == "paused"
    assert f"Session resumed: session {sid} from" in run("sessions", "resume", sid)
    assert "Cancel requested" in run("sessions", "cancel", sid)
    assert server.wait_final(sid)["status"] == "cancelled"
    assert "Watched (T)" in run("manuscripts", "list")
    assert f"Session {sid} deleted" in run("sessions", "delete", sid)
    gone = cli.run("sessions", "show", sid, ILLUSTRATOR_TOKEN=TOKEN)
    assert gone.returncode == 1 and f"server answered 404: session {sid} not found" in gone.stderr


def test_watch_exits_non_zero_on_an_error_frame_after_printing_every_event(cli: Cli) -> None:
    cli.extra = {
        "ILLUSTRATOR_PROVIDERS_IMAGES": "openai",  # nothing listens there: images fail
        "ILLUSTRATOR_PROVIDERS_API_BASE": f"http://127.0.0.1:{free_port()}/v1",
        "ILLUSTRATOR_PROVIDERS_RETRIES": "0",
        "ILLUSTRATOR_PROVIDERS_TIMEOUT_SECONDS": "2",
        "ILLUSTRATOR_PROCESSING_STEP_ATTEMPTS": "1",
    }
    server: Server = start_server(cli)
    try:
        sid = server.start_session()
        final = server.wait_final(sid)
        assert final["status"] == "failed"
        done = cli.run("watch", sid, "--after", "0")
    finally:
        stop_server(server)
    assert done.returncode == 1, done.stdout + done.stderr
    printed = frames(done.stdout)
    errors = [f for f in printed if f["type"] == "error"]
    assert len(errors) == 1
    assert event_seqs(done.stdout) == list(range(1, final["last_event_seq"] + 1))
    assert errors[0]["event_seq"] < final["last_event_seq"], "the error is not the last event"
    assert not Path(cli.out / "server.json").exists()
