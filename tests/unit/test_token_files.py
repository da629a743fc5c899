"""`api.token_files`: each file holds one bearer token. A file that cannot be one (a device,
a pipe, something large) is refused at load with one line naming the config file and the key,
and is never read without bound."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon.config import MAX_TOKEN_FILE, ConfigError, parse_config

CONFIG = Path("/etc/rollbackd/rollbackd.toml")
TOKEN = "0123456789abcdef" * 4


def load(*files: Path | str) -> str:
    listed = ", ".join(f'"{f}"' for f in files)
    with pytest.raises(ConfigError) as caught:
        parse_config(f"[api]\ntoken_files = [{listed}]\n", CONFIG)
    return str(caught.value)


def test_a_token_file_larger_than_the_cap_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.token"
    big.write_text("a" * (MAX_TOKEN_FILE + 1), encoding="ascii")
    message = load(big)
    assert message.startswith(f"{CONFIG}: api.token_files[0]: token file {big} ")
    assert "larger than 4 KiB" in message


def test_a_token_file_of_exactly_the_cap_is_read(tmp_path: Path) -> None:
    padded = tmp_path / "padded.token"
    padded.write_text(TOKEN + " " * (MAX_TOKEN_FILE - len(TOKEN) - 1) + "\n", encoding="ascii")
    config = parse_config(f'[api]\ntoken_files = ["{padded}"]\n', CONFIG)
    assert config.api.tokens == (TOKEN,)


def test_dev_zero_as_a_token_file_is_refused_without_reading_it_forever(tmp_path: Path) -> None:
    good = tmp_path / "good.token"
    good.write_text(TOKEN + "\n", encoding="ascii")
    message = load(good, "/dev/zero")
    assert message.startswith(f"{CONFIG}: api.token_files[1]: token file /dev/zero ")


def test_a_named_pipe_as_a_token_file_is_refused_without_waiting_for_a_writer(
        tmp_path: Path) -> None:
    pipe = tmp_path / "token.fifo"
    os.mkfifo(pipe)
    message = load(pipe)
    assert message == (f"{CONFIG}: api.token_files[0]: token file {pipe} is not a regular file")
