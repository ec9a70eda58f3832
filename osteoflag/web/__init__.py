"""The operator's web page and the ``/healthz`` and ``/metrics`` endpoints.

Served by the daemon on its own loopback port (``[web]``); read-only except for re-queueing
failed instances. Pages show SOP Instance UIDs, never a patient's name, ID or birth date.
"""
