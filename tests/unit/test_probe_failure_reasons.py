"""How the runner words a probe's failure: rollbackd's own want of descriptors said as such,
wherever in the exception's chain the EMFILE or ENFILE sits."""

from __future__ import annotations

import errno
import os

from probes.runner import describe_failure


def emfile() -> OSError:
    return OSError(errno.EMFILE, os.strerror(errno.EMFILE))


def test_an_error_caused_by_emfile_is_described_as_starvation() -> None:
    try:
        try:
            raise emfile()
        except OSError as exc:
            raise RuntimeError("cannot query http://127.0.0.1:9090/api/v1/query") from exc
    except RuntimeError as failure:
        text = describe_failure(failure)
    assert text.startswith("rollbackd is starved of file descriptors (Too many open files)")


def test_enfile_inside_an_exception_group_is_starvation_too() -> None:
    group = ExceptionGroup("multiple connection attempts failed",
                           [ConnectionRefusedError(), OSError(errno.ENFILE, "table full")])
    failure = OSError("All connection attempts failed")
    failure.__cause__ = group
    assert "starved of file descriptors (table full)" in describe_failure(failure)


def test_any_other_failure_is_its_type_and_message() -> None:
    assert describe_failure(ValueError("query returned 3 series")) == (
        "ValueError: query returned 3 series")
    assert describe_failure(ConnectionRefusedError(errno.ECONNREFUSED, "refused")) == (
        "ConnectionRefusedError: [Errno 111] refused")
