"""Test harness: real gateway and netsim processes on 127.0.0.1, a blocking HTTP client, and a
webhook receiver. Everything it starts it stops; every wait is bounded."""
from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_for(predicate, timeout=20.0, what="condition"):
    """The first truthy value of `predicate()`, polled every 0.05 s, or AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Netsim:
    def __init__(self, *args: str, port: int = 0, module: str = "loadtest.netsim") -> None:
        self.args = list(args)
        self.proc: subprocess.Popen | None = None
        self.port = port
        self.module = module  # e.g. tests.netsim_text: netsim with the decrypted text in --record

    def start(self) -> "Netsim":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, "--listen", f"127.0.0.1:{self.port}", *self.args],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        line = self.proc.stdout.readline()
        m = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert m, f"netsim did not start: {line!r} {self.proc.stderr.read() if self.proc.poll() is not None else ''}"
        self.port = int(m.group(1))
        return self

    def stats(self) -> dict:
        out = subprocess.run(
            [sys.executable, "-m", "loadtest.netsim", "stats", "--connect", f"127.0.0.1:{self.port}"],
            cwd=ROOT, capture_output=True, text=True, timeout=20,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


BASE_CONFIG = """
[server]
listen = "127.0.0.1:{port}"
request_timeout_s = {request_timeout_s}
max_body_bytes = {max_body_bytes}
max_header_bytes = {max_header_bytes}

[store]
data_dir = "{data_dir}"
map_size_mb = {map_size_mb}

[scheduler]
{scheduler}

[tiers.fast]
rate_per_minute = 600000
burst = 10000

[tiers.standard]
rate_per_minute = 80
burst = 40

[tiers.restricted]
rate_per_minute = 5
burst = 5

[[workspaces]]
name = "default"
default_sender = "+15550000001"
{webhooks}

[[workspaces]]
name = "other"

[[senders]]
number = "+15550000001"
workspace = "default"
tier = "fast"

[[senders]]
number = "+15550000002"
workspace = "default"
tier = "standard"

[[senders]]
number = "+15550000009"
workspace = "other"
tier = "fast"

[webhooks]
backoff_initial_s = 0.1
backoff_max_s = 1.0
timeout_s = 2.0

[network]
reconnect_min_ms = 20
reconnect_max_ms = 200
{network}
"""


class Gateway:
    def __init__(self, tmp_path, *, netsim: Netsim | None = None, webhook_url: str | None = None,
                 request_timeout_s: float = 10.0, max_body_bytes: int = 1_048_576,
                 max_header_bytes: int = 16_384, map_size_mb: int = 256, sim: str = "",
                 scheduler: str = "", network_port: int | None = None) -> None:
        self.tmp = tmp_path
        self.data_dir = str(tmp_path / "var")
        self.port = free_port()
        webhooks = ""
        if webhook_url:
            secret_file = tmp_path / "hook.secret"
            secret_file.write_text("s3cret-for-tests-only-0123456789")
            os.chmod(secret_file, 0o600)
            self.webhook_secret = b"s3cret-for-tests-only-0123456789"
            webhooks = f'[[workspaces.webhooks]]\nurl = "{webhook_url}"\nsecret_file = "{secret_file}"\n'
        if netsim is not None or network_port is not None:
            network = f'mode = "tcp"\nurl = "tcp://127.0.0.1:{network_port or netsim.port}"'
        else:
            network = 'mode = "embedded"\n' + (f"[network.sim]\n{sim}" if sim else "")
        self.config_text = BASE_CONFIG.format(
            port=self.port, data_dir=self.data_dir, webhooks=webhooks, network=network,
            request_timeout_s=request_timeout_s, max_body_bytes=max_body_bytes,
            max_header_bytes=max_header_bytes, map_size_mb=map_size_mb, scheduler=scheduler,
        )
        self.config_path = tmp_path / "gateway.toml"
        self.config_path.write_text(self.config_text)
        self.proc: subprocess.Popen | None = None
        self.key = ""

    def start(self, timeout: float = 20.0, ready: bool = True) -> "Gateway":
        """Start the process and wait until /readyz answers 200 (with ready=False: /healthz)."""
        for _ in range(3):
            self.log = open(self.tmp / f"gateway-{time.time_ns()}.log", "w")
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "-c", str(self.config_path)],
                cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
            )
            if not self._lost_its_port():
                break
            # The port free_port() saw free was taken before the gateway bound it (its own embedded
            # netsim or an outgoing connection can draw the same ephemeral port): another one.
            old, self.port = self.port, free_port()
            self.config_text = self.config_text.replace(f'listen = "127.0.0.1:{old}"',
                                                        f'listen = "127.0.0.1:{self.port}"')
            self.config_path.write_text(self.config_text)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"gateway exited: {self.read_log()}"
            try:
                status, _ = self.request("GET", "/readyz" if ready else "/healthz", auth=False)
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            raise AssertionError(f"gateway not ready: {self.read_log()}")
        self.key = open(os.path.join(self.data_dir, "admin.key")).read().strip()
        return self

    def _lost_its_port(self, timeout: float = 20.0) -> bool:
        """Whether the process just started exited because its HTTP port was in use (else it bound
        its port, or failed for another reason that start() reports)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            exited = self.proc.poll() is not None
            log = self.read_log()
            if "gateway listening on" in log:
                return False
            if exited:
                return "Address already in use" in log
            time.sleep(0.05)
        return False

    def read_log(self) -> str:
        self.log.flush()
        return open(self.log.name).read()

    def request(self, method: str, path: str, body=None, *, key: str | None = None, auth: bool = True,
                headers: dict | None = None, timeout: float = 10.0):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            hdrs = dict(headers or {})
            if auth:
                hdrs["Authorization"] = f"Bearer {key or self.key}"
            data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            raw = resp.read()
            self.last_headers = dict(resp.getheaders())
            try:
                return resp.status, json.loads(raw)
            except ValueError:
                return resp.status, raw
        finally:
            conn.close()

    def metric(self, name: str) -> float:
        """The value of an unlabelled sample in /metrics."""
        _, text = self.request("GET", "/metrics", auth=False)
        found = re.search(rb"^" + re.escape(name.encode()) + rb" (\S+)$", text, re.M)
        assert found, f"{name} not in /metrics"
        return float(found.group(1))

    def fill_store(self, limit: int, prefix: str = "+1415559") -> tuple[list[str], int, dict]:
        """4 KB sends from the slow sender (+15550000002 keeps most of them pending, bodies and all)
        until one is refused or `limit` went in: (accepted ids, the last status, its answer)."""
        accepted = []
        for i in range(limit):
            status, reply = self.request("POST", "/v1/messages", {"to": f"{prefix}{i:04d}", "from": "+15550000002",
                                                                  "text": {"body": "x" * 4000}})
            if status != 202:
                break
            accepted.append(reply["id"])
        return accepted, status, reply

    def send(self, to: str, body: str = "hello", **fields) -> str:
        status, reply = self.request("POST", "/v1/messages", {"to": to, "text": {"body": body}, **fields})
        assert status == 202, reply
        return reply["id"]

    def send_stream(self, accepted: list[str], stop: threading.Event, count: int, to) -> None:
        """Send text messages one at a time to `to(i)` until `stop` is set, `count` were tried or
        the gateway stops answering (killed); the ids of the 202s go to `accepted`. Meant to run
        in a thread while a test kills the gateway."""
        for i in range(count):
            if stop.is_set():
                return
            try:
                status, reply = self.request("POST", "/v1/messages",
                                             {"to": to(i), "text": {"body": f"m{i}"}}, timeout=2)
            except OSError:
                return
            if status == 202:
                accepted.append(reply["id"])

    def wait_status(self, msg_id: str, wanted: set[str], timeout: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, view = self.request("GET", f"/v1/messages/{msg_id}")
            if status == 200 and view["status"] in wanted:
                return view
            time.sleep(0.05)
        raise AssertionError(f"{msg_id} never reached {wanted}: {view}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class WebhookReceiver:
    """Collects POSTed webhook deliveries; can answer the first `fail_first` with `fail_status`."""

    def __init__(self, fail_first: int = 0, port: int = 0, fail_status: int = 500) -> None:
        self.deliveries: list[tuple[dict, bytes]] = []
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    failing = receiver.fail_first > 0
                    if failing:
                        receiver.fail_first -= 1
                    else:
                        receiver.deliveries.append((dict(self.headers), body))
                self.send_response(receiver.fail_status if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "WebhookReceiver":
        self.thread.start()
        return self

    def events(self) -> list[dict]:
        with self.lock:
            return [e for _, body in self.deliveries for e in json.loads(body)["events"]]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Proxy:
    """A TCP relay on 127.0.0.1 between the gateway and netsim that a test can cut (every
    connection dropped, new ones refused) and restore, like a network partition."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self.listener: socket.socket | None = None
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()

    def start(self) -> "Proxy":
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.conns += [client, upstream]
            self._relay(client, upstream)

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        """Copy both ways, a thread each (the gateway is the client, netsim the upstream)."""
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close alone does not
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.conns = []

    def stop(self) -> None:
        self.cut()
