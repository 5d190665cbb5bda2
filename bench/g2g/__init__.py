"""The glass-to-glass bench's parts, one job per module (``bench/glass_to_glass.py`` runs them).

* ``common`` — sample rates, the JSON line, latency summaries, the pitch model's own delay;
* ``servers`` — causalcast and fastrtc as subprocesses on 127.0.0.1; ``fastrtc_server`` — the fastrtc app;
* ``clients`` — marker round trips per client and transport; ``mulaw`` — fastrtc's WebSocket audio codec;
* ``chromium`` — round trips through the web page; ``load`` — sessions held as N grows;
* ``shared_streams`` — one producer, N viewers.
"""
