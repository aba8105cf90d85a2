"""``autoquant serve`` and ``autoquant.serve.client``: a real server process on a free localhost port,
real HTTP, the digits model and its committed test set scored by the client's own top-1 code."""

from __future__ import annotations

import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import optuna
import pytest
import requests
import yaml
from optuna.trial import TrialState

from autoquant.config import load_config
from autoquant.names import STUDY_FP32_SCORE, TRIAL_FAIL_REASON
from autoquant.search import storage_url, study_name
from tests.helpers import DIGITS, ROOT, digits_study, top1

TOKEN = "test-token-0123456789abcdef"
EXAMPLE = ROOT / "examples" / "remote" / "digits_client.py"
FUZZ_OPTIONS = (
    "--checks=not_a_server_error,status_code_conformance,content_type_conformance",
    "--max-examples=15",
    "--request-timeout=70",
    "--seed=20261204",
    "--generation-database=none",
    "--no-color",
)

pytestmark = pytest.mark.integration  # every test here starts a process


@dataclass
class Served:
    url: str
    process: subprocess.Popen
    log: list[str]

    def text(self) -> str:
        return "".join(self.log)


def _env(token: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "AUTOQUANT_TOKEN"}
    if token:
        env["AUTOQUANT_TOKEN"] = token
    return env


@contextmanager
def served(config: Path, *options: str, token: str | None = None) -> Iterator[Served]:
    """``autoquant serve config --port 0 options``; yields its URL once it listens; Ctrl-C at the end."""
    process = subprocess.Popen(
        [sys.executable, "-m", "autoquant", "serve", str(config), "--port", "0", *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(token),
        cwd=config.parent,
    )
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []

    def read() -> None:
        for line in process.stderr:  # type: ignore[union-attr]
            log.append(line)
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    url = None
    deadline = time.monotonic() + 120
    while url is None and time.monotonic() < deadline and process.poll() is None:
        try:
            found = re.search(r"serving the study at (http://\S+)", lines.get(timeout=0.5))
        except queue.Empty:
            continue
        url = found.group(1) if found else None
    assert url is not None, "".join(log)
    try:
        yield Served(url, process, log)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _study(config: Path) -> optuna.Study:
    cfg = load_config(config)
    return optuna.load_study(study_name=study_name(cfg), storage=storage_url(cfg))


def _npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def _outputs(response: requests.Response) -> list[np.ndarray]:
    with np.load(io.BytesIO(response.content), allow_pickle=False) as archive:
        return [archive[str(i)] for i in range(len(archive.files))]


def test_the_client_example_tunes_a_served_study_end_to_end(tmp_path: Path, digits_test_data) -> None:
    config = digits_study(tmp_path)
    record = tmp_path / "reported.json"
    with served(config, "--linger", "3") as server:
        client = subprocess.run(
            [sys.executable, str(EXAMPLE), "--url", server.url, "--record", str(record)],
            capture_output=True,
            text=True,
            timeout=600,
            env=_env(),
        )
        assert client.returncode == 0, client.stderr + server.text()
        assert server.process.wait(timeout=120) == 0, server.text()
    reported = json.loads(record.read_text())
    assert reported[0]["fp32"] and not any(r["fp32"] for r in reported[1:]) and len(reported) >= 2
    study = _study(config)
    assert study.user_attrs[STUDY_FP32_SCORE] == reported[0]["score"]
    completed = {t.number: t.user_attrs["score"] for t in study.trials if t.state == TrialState.COMPLETE}
    assert completed == {r["number"]: r["score"] for r in reported[1:]}
    assert len(study.trials) == len(completed)  # nothing failed, nothing left running
    # The best model on disk is the one whose outputs the client scored.
    x, y = digits_test_data
    best = json.loads((tmp_path / "out" / "best_trial.json").read_text())["trial"]
    assert top1(tmp_path / "out" / "model.int8.onnx", x, y) == pytest.approx(completed[best])
    assert "study finished: best trial" in client.stdout


@pytest.mark.slow
def test_a_real_model_with_integer_inputs_is_tuned_remotely(tmp_path: Path) -> None:
    """magika (tf2onnx from JAX, int32 byte tokens, dynamic batch) from its PyPI wheel, with no
    test section: the client's metric is the agreement of its predictions with the FP32 trial's.
    Its loader gives int64; the client casts within the kind to the input's int32."""
    from autoquant.serve.client import RemoteTuner
    from tests import corpus

    calib, test = corpus.magika_data(tmp_path / "data")
    config = tmp_path / "study.yaml"
    study = {
        "model": {"path": str(corpus.magika_model()), "inputs": {"bytes": list(corpus.MAGIKA_SHAPE)}},
        "calibration": {"source": str(calib), "batch_size": 1, "calib_iterations": 0},
        "quantization": {"per_channel": True},
        "search": {"mode": "fast", "accept_int8_decay": 0.03},
        "tracking": {"enabled": False},
        "output": {"directory": str(tmp_path / "out")},
    }
    config.write_text(yaml.safe_dump(study))
    samples = np.load(test).astype(np.int64)
    reference, reported = None, {}
    with served(config, "--linger", "2") as server:
        for trial in RemoteTuner(server.url):
            assert trial.inputs == [{"name": "bytes", "dtype": "int32", "shape": [None, 2048]}]
            predicted = np.concatenate(
                [trial.run(samples[i : i + 16])[0].argmax(1) for i in range(0, len(samples), 16)]
            )
            if trial.fp32:
                reference = predicted
            reported[trial.number] = float((predicted == reference).mean())
            trial.report(reported[trial.number])
        assert server.process.wait(timeout=120) == 0, server.text()
    assert reported[-1] == 1.0 and len(reported) >= 2
    stored = {
        t.number: t.user_attrs["score"] for t in _study(config).trials if t.state == TrialState.COMPLETE
    }
    assert stored == {n: s for n, s in reported.items() if n >= 0}
    assert max(stored.values()) >= 0.97  # within the budget of 0.03


def test_bad_requests_are_refused_and_leave_the_study_as_it_was(tmp_path: Path, digits_test_data) -> None:
    config = digits_study(tmp_path)
    marker = tmp_path / "unpickled"
    x, _ = digits_test_data
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with served(config, "--max-body-mb", "0.1", token=TOKEN) as server:
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}):
            for method, path in (("GET", "/status"), ("POST", "/trials"), ("POST", "/fp32/run")):
                answer = requests.request(method, server.url + path, headers=headers, timeout=30)
                assert answer.status_code == 401, (headers, path, answer.text)
        asked = requests.post(f"{server.url}/trials?wait=60", headers=auth, timeout=90).json()
        assert asked["state"] == "trial" and asked["trial"]["fp32"], asked
        trial = asked["trial"]
        side = x.shape[-1]
        assert trial["inputs"] == [{"name": "input", "dtype": "float32", "shape": [None, 1, side, side]}]
        run = f"{server.url}/trials/{trial['id']}/run"

        class Trap:
            def __reduce__(self):
                return (marker.mkdir, ())

        bad = {
            "oversize body": (_npy(x[:100]), 413, "over the server's limit"),
            "malformed .npy": (b"\x93NUMPY\x01\x00" + b"\xff" * 40, 400, "not a readable .npy file"),
            "pickled object array": (
                _npy(np.array([Trap()], object), True),
                422,
                "object arrays are refused",
            ),
            "wrong shape": (
                _npy(x[:10, 0]),
                422,
                f"shape (10, {side}, {side}), the model takes (?, 1, {side}, {side})",
            ),
            "wrong dtype": (_npy(x[:10].astype(np.float64)), 422, "dtype float64, the model takes float32"),
            "NaN": (_npy(np.full((2, 1, side, side), np.nan, np.float32)), 422, "holds NaN or infinity"),
        }
        for name, (body, status, message) in bad.items():
            answer = requests.post(run, data=body, headers=auth, timeout=30)
            assert answer.status_code == status and message in answer.json()["detail"], (name, answer.text)
        for payload, status in ((b'{"score": NaN}', 422), (b"{score", 400), (b'{"score": "high"}', 422)):
            answer = requests.post(
                f"{server.url}/trials/{trial['id']}/report",
                data=payload,
                headers={**auth, "Content-Type": "application/json"},
                timeout=30,
            )
            assert answer.status_code == status, (payload, answer.text)
        # Without a Content-Length (chunked), a batch or a JSON body is cut off at the limit too.
        for path, body in (("run", _npy(x[:100])), ("report", b'{"score": 1' + b"0" * 200_000 + b"}")):
            chunks = iter([body[i : i + 65536] for i in range(0, len(body), 65536)])
            answer = requests.post(
                f"{server.url}/trials/{trial['id']}/{path}", data=chunks, headers=auth, timeout=30
            )
            assert answer.request.headers.get("Transfer-Encoding") == "chunked"
            assert answer.status_code == 413 and "over the server's limit" in answer.json()["detail"], (
                answer.text
            )
        assert (
            requests.post(f"{server.url}/trials/nope/run", data=_npy(x[:2]), headers=auth).status_code == 404
        )
        assert not marker.exists()
        # Unaffected: the trial is still out, and a good batch gets the FP32 model's outputs.
        status = requests.get(f"{server.url}/status", headers=auth, timeout=30).json()
        assert [o["id"] for o in status["out"]] == [trial["id"]] and status["reported"] == 0
        answer = requests.post(run, data=_npy(x[:10]), headers=auth, timeout=30)
        assert answer.status_code == 200
        local = ort.InferenceSession(str(DIGITS / "model.onnx"), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(
            _outputs(answer)[0], local.run(None, {"input": x[:10]})[0], rtol=1e-4, atol=1e-5
        )
    assert "Traceback" not in server.text()
    assert not (tmp_path / "out" / "study.db").exists()  # stopped before the FP32 score: no study stored


def test_a_silent_clients_trial_times_out_and_runs_again_while_a_second_client_works(tmp_path: Path) -> None:
    """Two clients at once; A goes silent: its trial is failed and handed out again (to B), B's
    score is kept, A's late report is refused; an abandoned trial comes back at once."""
    config = digits_study(tmp_path, search={"fp32_score": 0.994, "accept_int8_decay": 0.0})
    batch = _npy(np.load(DIGITS / "data" / "test.npy")[:5])

    def ask(client: str) -> dict:
        answer = requests.post(f"{url}/trials?wait=60", headers={"X-Autoquant-Client": client}, timeout=90)
        assert answer.status_code == 200, answer.text
        asked = answer.json()
        assert asked["state"] == "trial", asked
        return asked["trial"]

    def report(trial: dict, score: float) -> requests.Response:
        return requests.post(f"{url}/trials/{trial['id']}/report", json={"score": score}, timeout=30)

    with served(config, "--trials", "2", "--trial-timeout", "2") as server:
        url = server.url
        silent = ask("A")
        working = ask("B")
        out = requests.get(f"{url}/status", timeout=30).json()["out"]
        assert sorted(o["client"] for o in out) == ["A", "B"] and silent["number"] != working["number"]
        assert requests.post(f"{url}/trials/{working['id']}/run", data=batch, timeout=30).status_code == 200
        assert report(working, 0.5).json()["within_budget"] is False
        handed = []
        while not handed or handed[-1]["params"] != silent["params"]:  # A's trial comes back to B
            handed.append(ask("B"))
            assert len(handed) < 6, handed
            if handed[-1]["params"] != silent["params"]:
                assert report(handed[-1], 0.4).status_code == 200
        late = report(silent, 0.9)
        assert late.status_code == 409 and "its client A sent nothing for 2 s" in late.json()["detail"]
        rerun = handed[-1]
        assert requests.post(f"{url}/trials/{rerun['id']}/abandon", timeout=30).status_code == 200
        again = ask("B")
        assert again["params"] == silent["params"] and again["number"] > rerun["number"]
        assert report(again, 0.3).status_code == 200
        time.sleep(1)  # the driver records it
        trials = {t.number: t for t in _study(config).trials}
    assert trials[silent["number"]].state == TrialState.FAIL
    assert "sent nothing" in trials[silent["number"]].user_attrs[TRIAL_FAIL_REASON]
    assert trials[rerun["number"]].state == TrialState.FAIL
    assert "abandoned by its client B" in trials[rerun["number"]].user_attrs[TRIAL_FAIL_REASON]
    assert trials[working["number"]].state == TrialState.COMPLETE
    assert trials[working["number"]].user_attrs["score"] == 0.5  # kept though A's trial failed meanwhile
    assert trials[again["number"]].user_attrs["score"] == 0.3


def test_a_study_done_ends_the_server_though_no_client_asks_again(tmp_path: Path) -> None:
    config = digits_study(tmp_path, search={"fp32_score": 0.994})
    with served(config, "--linger", "0") as server:
        trial = requests.post(f"{server.url}/trials?wait=60", timeout=90).json()["trial"]
        answer = requests.post(f"{server.url}/trials/{trial['id']}/report", json={"score": 0.994}, timeout=30)
        assert answer.json()["within_budget"] is True
        assert server.process.wait(timeout=60) == 0, server.text()  # the spare driver found it done
    assert json.loads((tmp_path / "out" / "best_trial.json").read_text())["trial"] == trial["number"]


def test_the_client_keeps_its_connection_and_opens_a_new_one_when_the_server_closed_it() -> None:
    """One connection for many requests; a kept-alive connection the server closed (its idle
    timeout) is replaced without an error."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from autoquant.serve.client import RemoteTuner

    peers: list[int] = []
    close_after = {"yes": False}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            peers.append(self.client_address[1])
            body = b'{"state": "running"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = close_after["yes"]

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        tuner = RemoteTuner(f"http://127.0.0.1:{server.server_address[1]}")
        assert [tuner.status()["state"] for _ in range(3)] == ["running"] * 3
        assert len(set(peers)) == 1  # kept alive
        close_after["yes"] = True
        assert [tuner.status()["state"] for _ in range(3)] == ["running"] * 3
        # The first connection answered this once more and was closed; each next one likewise.
        assert [len(set(peers[:n])) for n in (4, 5, 6)] == [1, 2, 3]
    finally:
        server.shutdown()


def test_the_client_imports_nothing_heavy() -> None:
    code = (
        "import sys, autoquant.serve.client\n"
        "heavy = {'onnx', 'onnxruntime', 'optuna', 'mlflow', 'pydantic', 'yaml', 'fastapi'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize(
    ("options", "token", "message"),
    [
        (["--host", "0.0.0.0"], None, "--host 0.0.0.0 is reachable from other machines: set a token"),
        ([], "short", "the token is 5 characters; use at least 16"),
    ],
)
def test_serving_beyond_this_machine_needs_a_long_enough_token(
    tmp_path: Path, options: list[str], token: str | None, message: str
) -> None:
    config = digits_study(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "autoquant", "serve", str(config), *options],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(token),
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("autoquant: error: "), lines
    assert message in lines[0]
    assert not (tmp_path / "out").exists()


def test_the_published_api_spec_is_the_servers(tmp_path: Path) -> None:
    from autoquant.serve import Desk, make_app

    app = make_app(Desk(load_config(digits_study(tmp_path)), 300, threading.Event()), TOKEN, 1 << 20)
    published = json.loads((ROOT / "docs" / "remote-api.json").read_text())
    spec = app.openapi()
    published["info"]["version"] = spec["info"]["version"]  # the package version of this checkout
    assert published == spec, (
        "regenerate docs/remote-api.json: python -m autoquant.serve > docs/remote-api.json"
    )


def test_python_m_autoquant_serve_prints_the_published_spec() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "autoquant.serve"], capture_output=True, text=True, check=True, timeout=120
    )
    printed = json.loads(result.stdout)
    published = json.loads((ROOT / "docs" / "remote-api.json").read_text())
    published["info"]["version"] = printed["info"]["version"]
    assert printed == published


def test_a_property_based_fuzzer_finds_no_server_error(tmp_path: Path) -> None:
    """schemathesis against /openapi.json: coverage, fuzzing and stateful phases (the ask
    response links a trial's id to its endpoints), bounded by --max-examples."""
    config = digits_study(tmp_path, search={"mode": "full", "fp32_score": 0.994, "accept_int8_decay": 0.0})
    st = Path(sys.executable).parent / "st"
    with served(config, "--trials", "4", "--trial-timeout", "1", "--linger", "600", token=TOKEN) as server:
        result = subprocess.run(
            [
                str(st),
                "run",
                f"{server.url}/openapi.json",
                "-H",
                f"Authorization: Bearer {TOKEN}",
                *FUZZ_OPTIONS,
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )
        assert server.process.poll() is None, server.text()
    assert result.returncode == 0, result.stdout[-4000:]
    assert "Tested: 6" in result.stdout and "passed" in result.stdout, result.stdout[-4000:]
    assert "Traceback" not in server.text()
