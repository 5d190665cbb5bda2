"""Python clients of a causalcast server, for tests, benches and scripts.

* :mod:`streaming.client.ws` — the WebSocket protocol (:class:`Client`, :class:`MediaCollector`), also
  importable from this package;
* :mod:`streaming.client.webrtc` — a WebRTC peer (:class:`~streaming.client.webrtc.RtcClient`,
  :class:`~streaming.client.webrtc.ArrayAudioTrack`), built on aiortc;
* :mod:`streaming.client.onsets` — sound and picture onsets of what a WebRTC client received (lip sync).

Clients import only the protocol, the media codecs and our aiortc adjustments: never a model family and
never the server.
"""

from streaming.client.ws import Client, MediaCollector, ServerError

__all__ = ["Client", "MediaCollector", "ServerError"]
