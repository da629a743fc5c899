"""Settings models (policies/schema.py): every error names the key it is about, in words."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal

import msgspec
import pytest

from policies.schema import Model, SchemaError, Within, convert, decode_json, replace, to_builtins
from policies.units import Duration, Size


class Git(Model, tag_field="adapter", tag="git"):
    dir: Path


class Symlink(Model, tag_field="adapter", tag="symlink"):
    current: Path


class Daemon(Model):
    interval: Annotated[Duration, Within(ge=0.2, le=3600)] = Duration(5.0)
    min_free: Annotated[Size, Within(ge=1024)] = Size(4096)
    mode: Literal["auto", "approve"] = "auto"
    name: Annotated[str, msgspec.Meta(pattern=r"^[a-z]+\d*$")] = "app"
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    secret_file: Path | None = None
    _secret: ClassVar[str] = ""

    def check(self) -> None:
        if self.mode == "approve" and self.interval > 60:
            raise ValueError("`interval`: at most 1m in approve mode")
        if self.secret_file is not None:
            self.hold("_secret", self.secret_file.read_text().strip())


class Top(Model):
    daemon: Daemon = msgspec.field(default_factory=Daemon)
    modes: dict[Literal["auto", "approve"], int] = msgspec.field(default_factory=dict)
    code: Git | Symlink | None = None
    probes: list[Daemon] = msgspec.field(default_factory=list)
    hosts: dict[str, Daemon] = msgspec.field(default_factory=dict)


def error(data: object) -> str:
    with pytest.raises(SchemaError) as caught:
        convert(data, Top)
    return str(caught.value)


@pytest.mark.parametrize(("data", "told"), [
    ({"daemon": {"interval": "2h"}}, "daemon.interval: must be at most 1h"),
    ({"daemon": {"interval": "100ms"}}, "daemon.interval: must be at least 200ms"),
    ({"daemon": {"interval": True}},
     'daemon.interval: expected a duration such as "5s" or a number of seconds, not true'),
    ({"daemon": {"min_free": "1KB"}}, "daemon.min_free: must be at least 1KiB"),
    ({"daemon": {"min_free": 1.5}}, "daemon.min_free: a size is a whole number of bytes"),
    ({"daemon": {"mode": "fast"}}, "daemon.mode: expected one of 'auto' or 'approve'"),
    ({"daemon": {"name": "App"}}, "daemon.name: must match the pattern ^[a-z]+\\d*$"),
    ({"daemon": {"name": 3}}, "daemon.name: expected a string, not an integer"),
    ({"daemon": {"mode": "approve", "interval": "2m"}},
     "daemon.interval: at most 1m in approve mode"),
    ({"daemon": {"labels": {"team": "db", "tier": 3}}},
     "daemon.labels.tier: expected a string, not an integer"),
    ({"hosts": {"a": {}, "b": {"intervall": "5s"}}}, "hosts.b.intervall: unknown key"),
    ({"code": {"adapter": "hg"}}, "code.adapter: expected one of 'git' or 'symlink'"),
    ({"code": {"adapter": "git"}}, "code.dir: required key is missing"),
    ({"code": {"adapter": "git", "dir": 4}},
     "code.dir: expected a path (a string), not an integer"),
    ({"probes": [{}, {"zz": 1}]}, "probes[1].zz: unknown key"),
    ({"daemon": 3}, "daemon: expected a table, not an integer"),
    ({"daemon": {"_secret": "injected"}}, "daemon._secret: unknown key"),
    ({"modes": {"auto": 1, "fast": 2}},
     "modes: each key must be one of 'auto' or 'approve'"),
])
def test_a_bad_setting_is_named_by_its_key(data: object, told: str) -> None:
    assert error(data) == told


def test_good_settings_are_read_with_their_units() -> None:
    top = convert({"daemon": {"interval": "1m30s", "min_free": "5GB"},
                   "code": {"adapter": "symlink", "current": "/srv/app"}}, Top)
    assert top.daemon.interval == 90.0
    assert top.daemon.min_free == 5 * 1000**3
    assert top.code == Symlink(current=Path("/srv/app"))


def test_a_value_read_with_the_settings_is_held_but_never_written_out(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    daemon = convert({"secret_file": str(secret)}, Daemon)
    assert daemon._secret == "s3cret"
    assert "s3cret" not in repr(daemon)
    assert "s3cret" not in str(to_builtins(daemon))


def test_a_changed_copy_is_checked_again() -> None:
    daemon = convert({"mode": "approve"}, Daemon)
    assert replace(daemon, interval=Duration(30)).interval == 30
    with pytest.raises(ValueError, match="at most 1m in approve mode"):
        replace(daemon, interval=Duration(120))


def test_settings_are_written_out_as_plain_values() -> None:
    top = Top(code=Git(dir=Path("/srv/app")))
    out = to_builtins(top)
    assert out["code"] == {"adapter": "git", "dir": "/srv/app"}
    assert out["daemon"]["interval"] == 5.0 and type(out["daemon"]["interval"]) is float
    assert convert(out, Top) == top


def test_json_that_is_not_json_or_does_not_fit_is_told_apart() -> None:
    with pytest.raises(SchemaError, match=r"^daemon\.mode: expected one of"):
        decode_json(b'{"daemon": {"mode": "x"}}', Top)
    with pytest.raises(ValueError, match=r"^not JSON"):
        decode_json(b'{"daemon":', Top)
    with pytest.raises(ValueError, match=r"^JSON nested too deeply"):
        decode_json(b'{"probes": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", Top)
