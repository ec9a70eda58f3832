"""Tools the test suite and the benchmarks share (not part of the installed package).

Synthetic radiographs (``inference_data``), a tiny but real model bundle (``tiny_bundle``),
``osteoflag serve`` as a subprocess (``daemon``), a private PostgreSQL server (``postgres``),
free loopback ports (``net``) and polling with a deadline (``wait``). ``tests/`` and
``bench/`` both import from here; neither imports the other.
"""
