"""A whole Gateway in this process against a real store and writer, with the network link replaced
by a recorder of the frames sent: for tests of the delivery and inbound shells."""
import trio

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.crypto.keydir import init_keys

CONFIG = """
[store]
data_dir = "{data_dir}"
map_size_mb = 32
{store_extra}

[[workspaces]]
name = "default"

[[senders]]
number = "+15550000001"
rate_per_minute = 60
"""


class RecordingLink:
    connected = True

    def __init__(self) -> None:
        self.sent: list = []

    async def send(self, frames) -> None:
        self.sent.extend(frames)


async def with_gateway(tmp_path, body, store_extra: str = ""):
    init_keys(str(tmp_path / "keys"))
    gw = Gateway(parse_config(CONFIG.format(data_dir=tmp_path, store_extra=store_extra)))
    gw.delivery.link = link = RecordingLink()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(gw.writer.run)
            await body(gw, link)
            nursery.cancel_scope.cancel()
    finally:
        gw.close()
