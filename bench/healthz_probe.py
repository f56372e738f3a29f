"""A probe of a server's answer to I/O from its own process: GET /healthz every PERIOD_S on one
keep-alive connection, each round trip timed. The gateway's reading task answers /healthz at once,
so a round trip is how long its event loop took to get to the socket (bench.policy_swap_live).

`python -m bench.healthz_probe PORT MAX_S` runs until SIGTERM or MAX_S, or until a round trip takes
longer than TIMEOUT_S (recorded as that long), and writes (sent at, round trip) pairs of
CLOCK_MONOTONIC seconds to stdout as native doubles. Standard library only, so it starts at once.
"""
from __future__ import annotations

import array
import signal
import socket
import subprocess
import sys
import time

PERIOD_S = 0.001
MAX_S = 600.0  # the probe stops by itself after this long at most
TIMEOUT_S = 10.0
_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def read_response(sock: socket.socket, buf: bytearray) -> bool:
    """Reads one whole Content-Length framed response into `buf` and consumes it; False at the end
    of the stream. ValueError for a response it cannot frame (no or a bad Content-Length)."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            length = None
            for line in bytes(buf[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length is None:
                raise ValueError("a response without Content-Length")
            if len(buf) >= end + 4 + length:
                del buf[:end + 4 + length]
                return True
        chunk = sock.recv(4096)
        if not chunk:
            return False
        buf += chunk


def probe(port: int, max_s: float) -> array.array:
    """(sent at, round trip) pairs until SIGTERM, `max_s`, the end of the connection or a round
    trip over TIMEOUT_S (kept, as TIMEOUT_S: the worst stall must not go missing)."""
    stopping: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    samples = array.array("d")
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
    except OSError:
        signal.signal(signal.SIGTERM, previous)
        return samples
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray()
    stop = time.monotonic() + max_s
    try:
        while not stopping and (t0 := time.monotonic()) < stop:
            sock.sendall(_REQUEST)
            if not read_response(sock, buf):
                break
            samples.extend((t0, time.monotonic() - t0))
            time.sleep(PERIOD_S)
    except socket.timeout:
        samples.extend((t0, TIMEOUT_S))
    except (OSError, ValueError):  # the server went away or answered what this cannot read
        pass
    finally:
        sock.close()
        signal.signal(signal.SIGTERM, previous)
    return samples


def start(port: int, cwd: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.healthz_probe", str(port), str(MAX_S)],
                            cwd=cwd, stdout=subprocess.PIPE)


def samples(proc: subprocess.Popen) -> list[tuple[float, float]]:
    """Stops the probe and returns its pairs."""
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return pairs(out)


def kill(proc: subprocess.Popen | None) -> None:
    """Stops a probe whose samples are not wanted (a run that failed); None: none was started."""
    if proc is not None:
        proc.kill()
        proc.wait()


def describe(window: dict, target_ms: float) -> str:
    """A window of answers (bench.loop_ping.window) as one line of a report."""
    if not window.get("samples"):
        return "/healthz answer: the probe recorded nothing in the window"
    return (f"/healthz answer  max {window['max_ms']:7.2f} ms  p99 {window['p99_ms']:5.2f} ms  "
            f"({window['samples']} probes, {window['over_target']} over {target_ms} ms)")


def pairs(out: bytes) -> list[tuple[float, float]]:
    """The (sent at, round trip) pairs a probe process wrote (also bench.loop_ping's client)."""
    values = array.array("d")
    values.frombytes(out[: len(out) // values.itemsize * values.itemsize])
    return list(zip(values[0::2], values[1::2]))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    sys.stdout.buffer.write(probe(int(args[0]), float(args[1])).tobytes())
    return 0


if __name__ == "__main__":
    sys.exit(main())
