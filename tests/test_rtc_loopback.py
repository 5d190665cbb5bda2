"""A WebRTC connection gathered only on loopback never answers (or pairs with) another address."""

import aioice.ice
from aioice import stun

from streaming.transports import rtc_support


class RecordingProtocol:
    def __init__(self):
        self.sent = []

    def send_stun(self, message, addr):
        self.sent.append((message, addr))


async def test_checks_from_other_local_addresses_are_ignored():
    connection = aioice.ice.Connection(ice_controlling=False)
    with rtc_support.gathering_from(["127.0.0.1"]):
        await connection.gather_candidates()
    try:
        assert [c.host for c in connection.local_candidates] == ["127.0.0.1"]
        request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        protocol = RecordingProtocol()
        # nothing is put on the wire here: the protocol only records what the connection would send
        connection.request_received(request, ("192.0.2.2", 40000), protocol)
        assert protocol.sent == []  # ignored: no answer, no peer-reflexive candidate
        assert connection.remote_candidates == []
        connection.request_received(request, ("127.0.0.1", 40000), protocol)
        assert len(protocol.sent) == 1 and protocol.sent[0][1] == ("127.0.0.1", 40000)  # loopback is answered
    finally:
        await connection.close()
