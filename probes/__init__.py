"""Probes measure the application, its host and its database and return readings.

A probe that cannot measure returns ``None`` for a signal, never a made-up value;
a refused connection or an HTTP 5xx is a measurement. Probes never import ``daemon``.
"""
