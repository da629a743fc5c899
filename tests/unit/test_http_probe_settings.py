"""``[[probes.http]]`` settings for apps behind a login: what a config may say, and how a
mistake is reported (one line naming the file and the key)."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import Config, ConfigError, parse_config
from policies.schema import SchemaError, convert
from probes.settings import HttpProbeSettings

CONFIG = Path("/etc/rollbackd/rollbackd.toml")


def probe_config(*lines: str) -> str:
    return "\n".join(['[[probes.http]]', 'name = "app"', 'url = "http://127.0.0.1:3000/"',
                      *lines]) + "\n"


def config_error(*lines: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(probe_config(*lines), CONFIG)
    message = str(caught.value)
    assert message.startswith(f"{CONFIG}: ")
    assert "\n" not in message
    return message


def settings(**given: object) -> HttpProbeSettings:
    return convert(
        {"name": "app", "url": "http://127.0.0.1:3000/", **given}, HttpProbeSettings)


def test_the_defaults_follow_no_redirect_and_keep_todays_status_rule() -> None:
    probe = settings()
    assert probe.method == "GET" and probe.body is None and probe.headers == {}
    assert probe.follow_redirects is False
    assert probe.expect_status is None
    # Below 500 is the app answering, except a redirect the probe did not follow.
    assert [probe.status_expected(code) for code in (200, 204, 302, 404, 500, 503)] == [
        True, True, False, True, False, False]


def test_expected_statuses_are_codes_classes_or_ranges() -> None:
    probe = settings(expect_status=["2xx", 302, "304", "401-403"])
    expected = [code for code in range(100, 600) if probe.status_expected(code)]
    assert expected == [*range(200, 300), 302, 304, 401, 402, 403]


@pytest.mark.parametrize("bad", ['"6xx"', '"20x"', "99", '"300-200"', '"ok"', "true"])
def test_a_status_that_is_no_code_class_or_range_names_its_place(bad: str) -> None:
    message = config_error(f'expect_status = ["2xx", {bad}]')
    assert "probes.http[0].expect_status[1]" in message
    assert "status" in message


def test_a_regex_that_does_not_compile_is_a_config_error_naming_the_key() -> None:
    message = config_error('fail_if_body_matches = ["Traceback", "(unclosed"]')
    assert "probes.http[0].fail_if_body_matches[1]" in message
    assert "not a valid regular expression" in message
    message = config_error('fail_if_body_not_matches = ["*ok"]')
    assert "probes.http[0].fail_if_body_not_matches[0]" in message


def test_regexes_are_compiled_when_the_config_loads() -> None:
    probe = settings(fail_if_body_matches=["(?i)please log in"],
                     fail_if_body_not_matches=['"status":\\s*"ok"'])
    assert probe.fail_if_body_matches[0].search("Please LOG IN to continue")
    assert probe.fail_if_body_not_matches[0].search('{"status": "ok"}')


def test_a_head_request_has_no_body_to_match_or_send() -> None:
    assert "HEAD" in config_error('method = "HEAD"', 'fail_if_body_matches = ["x"]')
    assert "HEAD" in config_error('method = "HEAD"', 'body = "x"')


def test_methods_are_the_usual_ones() -> None:
    assert settings(method="POST", body='{"q": 1}').method == "POST"
    assert "probes.http[0].method" in config_error('method = "TRACE"')


@pytest.mark.parametrize(("header", "why"), [
    ('"Bad Name" = "x"', "not a valid header name"),
    ('"X-Injected" = "a\\r\\nHost: evil"', "control character"),
    ('"Content-Length" = "5"', "computed from the body"),
    ('"X-Empty" = ""', "empty"),
])
def test_header_names_and_values_are_checked(header: str, why: str) -> None:
    message = config_error(f"headers = {{ {header} }}")
    assert "probes.http[0]" in message and why in message


def test_a_header_given_twice_in_different_case_is_an_error() -> None:
    message = config_error('headers = { Cookie = "a=1", cookie = "a=2" }')
    assert "Cookie" in message and "twice" in message


def test_a_header_file_must_be_named_by_an_absolute_path() -> None:
    # Relative to what? The daemon's working directory is / under systemd.
    message = config_error('headers = { Authorization = { file = "token" } }')
    assert "headers.Authorization" in message and "absolute" in message


def test_inline_header_values_do_not_show_in_the_settings_repr() -> None:
    probe = settings(headers={"Cookie": "session=s3cr3t-value"})
    assert "s3cr3t-value" not in repr(probe)
    assert "s3cr3t-value" not in str(probe)
    assert probe.header_values() == {"Cookie": "session=s3cr3t-value"}


def validation_error(headers: dict[str, object]) -> str:
    given = {"probes": {"http": [{"name": "app", "url": "http://127.0.0.1:3000/",
                                  "headers": headers}]}}
    with pytest.raises(SchemaError) as caught:
        convert(given, Config)
    return str(caught.value)


def test_a_validation_error_never_quotes_a_header_value() -> None:
    # Printed or logged whole, an error that quoted the input it rejects would show it.
    bad_value = validation_error({"Cookie": "session=s3cr3t\n"})
    assert "control character" in bad_value and "s3cr3t" not in bad_value
    beside_a_bad_one = validation_error({"Cookie": "session=s3cr3t", "X-N": 5})
    assert "X-N" in beside_a_bad_one and "s3cr3t" not in beside_a_bad_one
