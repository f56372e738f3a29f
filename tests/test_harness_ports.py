"""The test harness itself: a gateway whose port was taken between free_port() and its bind starts
again on another port instead of failing the test (a rare race on a busy machine)."""
import socket

from tests.harness import Gateway


def test_a_gateway_whose_port_is_taken_starts_on_another(tmp_path):
    squatter = socket.create_server(("127.0.0.1", 0))
    try:
        taken = squatter.getsockname()[1]
        gw = Gateway(tmp_path)
        gw.config_text = gw.config_text.replace(f'listen = "127.0.0.1:{gw.port}"', f'listen = "127.0.0.1:{taken}"')
        gw.config_path.write_text(gw.config_text)
        gw.port = taken
        gw.start()
        try:
            assert gw.port != taken and f'listen = "127.0.0.1:{gw.port}"' in gw.config_path.read_text()
            assert gw.request("GET", "/readyz", auth=False)[0] == 200
        finally:
            gw.stop()
    finally:
        squatter.close()
