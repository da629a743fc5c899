"""What the tests share: real servers, real processes, the CLI runner, config and data builders.

Test modules import helpers from here only, never from each other.
"""
