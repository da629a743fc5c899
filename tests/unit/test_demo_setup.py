"""What `rollbackd demo` writes and how the verb finds its machinery, without servers: the
site's layout, a configuration and a policy rollbackd accepts, the scenarios the verb offers,
and the one-line refusal outside a checkout."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from daemon.cli import cli
from daemon.config import AppSettings, CommandControl, ProcessControl, SymlinkCode, parse_config
from daemon.service.probeset import build_probes
from examples.demo import FLEET_SCENARIO, SCENARIOS
from examples.demofollow import parse_signals
from examples.demosite import (
    RELEASES,
    V1_MIGRATIONS,
    build_site,
    demo_policy,
    rollbackd_config,
)
from policies.policy import GuardSettings, parse_policy

# The module: ``daemon.cli.demo`` as an attribute of daemon.cli is the click command.
demo_verb = importlib.import_module("daemon.cli.demo")


def site_for_test(tmp_path: Path):  # type: ignore[no-untyped-def]
    return build_site(tmp_path / "site", dsn="host=127.0.0.1 port=5 user=postgres dbname=vf",
                      port=8123, releases={"v1": [V1_MIGRATIONS],
                                           "v2": [V1_MIGRATIONS, RELEASES / "v2-partial"]})


def test_the_site_has_both_releases_current_at_v1_and_the_apps_config_file(
        tmp_path: Path) -> None:
    site = site_for_test(tmp_path)

    assert site.current_release() == "v1"
    assert os.readlink(site.current) == "releases/v1"  # relative: the site can be moved
    assert sorted(p.name for p in (site.releases / "v2" / "migrations").iterdir()) == [
        "001_users.sql", "002_images.sql", "003_audit_log.sql", "004_users_display_name.sql",
        "005_unique_display_names.sql"]
    assert len(list((site.releases / "v1" / "migrations").iterdir())) == 3
    assert (site.releases / "v2" / "RELEASE").read_text() == "v2\n"
    assert (site.releases / "v1" / "app.py").is_file()
    settings = site.env_file.read_text()
    assert "VF_PORT=8123\n" in settings and f"VF_PIDFILE={site.pidfile}\n" in settings
    assert site.app_argv()[1:] == [str(site.current / "app.py"), "--env-file",
                                   str(site.env_file), "--no-access-log"]
    assert site.deploy_argv("v2", {"A": "1"})[-4:] == ["--release", "v2", "--set", "A=1"]


def test_rollbackd_accepts_the_demos_configuration(tmp_path: Path) -> None:
    site = site_for_test(tmp_path)
    token = tmp_path / "api.token"
    token.write_text("x" * 64 + "\n")
    text = rollbackd_config(tmp_path, site, dsn="host=127.0.0.1 port=5 user=postgres dbname=vf",
                            app_url="http://127.0.0.1:8123", listen="127.0.0.1:9999",
                            token_file=token, policy=tmp_path / "policy.toml")

    config = parse_config(text, tmp_path / "rollbackd.toml")

    assert config.daemon.mode == "auto" and config.daemon.interval == 1.0
    app = config.app
    assert isinstance(app, AppSettings)
    assert isinstance(app.control, ProcessControl)
    assert not isinstance(app.control, CommandControl)
    assert app.control.pidfile == site.pidfile
    assert app.control.start == site.app_argv()
    assert isinstance(app.code, SymlinkCode) and app.code.current == site.current
    assert app.config_files == [site.env_file]
    assert config.api.tokens == ("x" * 64,)
    # Every probe fits in 80 % of the interval: the daemon then warns about nothing.
    probes = build_probes(config).probes
    assert len(probes) == 5
    assert max(probe.timeout for probe in probes) <= 0.8 * config.daemon.interval


def test_the_demos_policy_is_the_bundled_matrix_with_seconds() -> None:
    policy = parse_policy(demo_policy(watch_for=None), "demo.toml")

    rules = {r.scenario: r for r in policy.rules}
    assert set(rules) == {"migration_failed", "data_validation_failed", "app_compromised",
                          "performance_degraded", "minor_issue", "database_unreachable"}
    assert rules["migration_failed"].for_ == 0
    assert rules["migration_failed"].action == "immediate_rollback"
    assert rules["app_compromised"].for_ <= 10
    assert rules["performance_degraded"].action == "evaluate"


@pytest.mark.skipif("watch_for" not in GuardSettings.__struct_fields__,
                    reason="this rollbackd's policy has no guards.watch_for yet")
def test_the_demos_watch_period_is_short_when_rollbackd_has_one() -> None:
    policy = parse_policy(demo_policy(watch_for="10s"), "demo.toml")

    assert policy.guards.watch_for == 10.0


def test_the_verb_offers_the_scenarios_the_demo_has() -> None:
    assert set(demo_verb.SCENARIOS) == {*SCENARIOS, FLEET_SCENARIO}
    assert demo_verb.checkout_root() is not None  # the tests run from a checkout


def test_outside_a_checkout_the_verb_says_so_in_one_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo_verb, "checkout_root", lambda: None)

    result = CliRunner().invoke(cli, ["demo"])

    assert result.exit_code == 2
    assert result.output.strip() == f"rollbackd: {demo_verb.NEEDS_CHECKOUT}"


def test_an_unknown_scenario_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["demo", "--scenario", "meteor-strike"])

    assert result.exit_code == 2
    assert "bad-migration" in result.output


def test_signals_are_read_from_the_exposition_unknown_as_none() -> None:
    text = ('# HELP rollbackd_signal x\n# TYPE rollbackd_signal gauge\n'
            'rollbackd_signal{signal="http.up"} 1.0\n'
            'rollbackd_signal{signal="http.latency_p95"} NaN\n'
            '# HELP rollbackd_paused x\n# TYPE rollbackd_paused gauge\nrollbackd_paused 0.0\n')

    assert parse_signals(text) == {"http.up": 1.0, "http.latency_p95": None}
