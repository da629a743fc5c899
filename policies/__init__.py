"""The pure core of rollbackd: units, samples, signal windows and (later) the decision engine.

Nothing in this package performs I/O or reads a clock: time, samples and events
come in as arguments.
"""
