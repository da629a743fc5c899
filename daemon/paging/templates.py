"""Page templates: the procedures' notices, rendered from an incident's facts.

A template is a text file ``KIND.txt``: its first line is the page's title, then a blank line,
then the body. Placeholders are :class:`string.Template`'s (``$incident``, ``${scenario}``,
``$$`` for a dollar sign) and name facts of :mod:`daemon.paging.facts` only: a template is
never evaluated or formatted (``str.format`` could reach attributes), only substituted.

The bundled templates are ``daemon/paging/templates/KIND.txt``; a user's directory
(``templates_dir``) may hold any of them, and the others come from the bundled set.
:func:`check_templates` finds what is wrong with a directory at configuration time; at send
time :func:`render` never fails for a missing fact or a broken file (a page must go out): a
fact it lacks reads ``(unknown)``, a file it cannot read is replaced by the bundled one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

from daemon.config import Config, ConfigError
from daemon.paging.facts import GENERAL_FACTS, INCIDENT_FACTS, plain

KINDS = ("emergency", "planned", "decision", "status", "completion", "reminder", "test",
         "contact")
TITLE_CHARS = 200
UNKNOWN = "(unknown)"
GENERAL_ONLY = frozenset({"test"})
"""Kinds of page sent outside any incident: only the general facts are known there."""


@dataclass(frozen=True, slots=True)
class Rendered:
    title: str
    """One line, at most TITLE_CHARS characters."""
    text: str


class TemplateError(Exception):
    """A template that cannot be used; ``str()`` is one line: the file, the placeholder,
    what is wrong."""


def allowed_facts(kind: str) -> frozenset[str]:
    """The placeholders a template of ``kind`` may use."""
    if kind in GENERAL_ONLY:
        return frozenset(GENERAL_FACTS)
    return frozenset(GENERAL_FACTS + INCIDENT_FACTS)


def bundled_text(kind: str) -> str:
    """The bundled template of ``kind`` (package data, shipped in the wheel)."""
    return (resources.files("daemon.paging") / "templates" / f"{kind}.txt").read_text("utf-8")


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def template_problems(name: str, kind: str, text: str) -> list[str]:
    """What is wrong with the template ``text`` of ``kind`` (read from ``name``), one line
    each: a missing title, no blank line after it, a ``$`` that is no placeholder, a
    placeholder that names no fact."""
    problems: list[str] = []
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        problems.append(f"{name}:1: the first line must be the page's title")
    if len(lines) > 1 and lines[1].strip():
        problems.append(f"{name}:2: a blank line must follow the title")
    allowed = allowed_facts(kind)
    for match in Template.pattern.finditer(text):
        line = _line_of(text, match.start())
        if match.group("invalid") is not None:
            snippet = text[match.start():match.start() + 12].split("\n")[0]
            problems.append(f"{name}:{line}: {snippet!r} is not a placeholder (write $$ for "
                            "a dollar sign, ${fact} or $fact for a fact)")
            continue
        fact = match.group("named") or match.group("braced")
        if fact is None or fact in allowed:
            continue
        if kind in GENERAL_ONLY and fact in INCIDENT_FACTS:
            problems.append(f"{name}:{line}: ${fact}: a {kind} page is about no incident "
                            f"(its facts: {', '.join(sorted(allowed))})")
        else:
            problems.append(f"{name}:{line}: ${fact} is not a fact a page knows (facts: "
                            f"{', '.join(sorted(allowed))})")
    return problems


def check_templates(templates_dir: Path) -> list[str]:
    """What is wrong with a directory of user templates, one line each; [] when every file
    in it is a readable template of a known kind that names known facts only. Hidden files
    (an editor's) are ignored."""
    try:
        entries = sorted(p for p in templates_dir.iterdir() if not p.name.startswith("."))
    except NotADirectoryError:
        return [f"{templates_dir}: not a directory (page templates go in one)"]
    except OSError as exc:
        return [f"{templates_dir}: cannot list the page templates: {exc.strerror or exc}"]
    names = {f"{kind}.txt": kind for kind in KINDS}
    problems: list[str] = []
    for path in entries:
        kind = names.get(path.name)
        if kind is None:
            problems.append(f"{path}: not a page template (the templates are "
                            f"{', '.join(names)})")
            continue
        try:
            text = path.read_text("utf-8")
        except UnicodeDecodeError:
            problems.append(f"{path}: not UTF-8 text")
            continue
        except OSError as exc:
            problems.append(f"{path}: cannot read: {exc.strerror or exc}")
            continue
        problems += template_problems(str(path), kind, text)
    return problems


def _user_text(kind: str, templates_dir: Path | None) -> str | None:
    """The user's template of ``kind``, or None (none there, or unreadable: the bundled one
    goes out instead; ``check`` says what is wrong with it)."""
    if templates_dir is None:
        return None
    try:
        return (templates_dir / f"{kind}.txt").read_text("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


class _Facts(dict[str, str]):
    """Facts for substitution: one a template names but the caller lacks reads UNKNOWN."""

    def __missing__(self, key: str) -> str:
        return UNKNOWN


def render(kind: str, facts: Mapping[str, str], templates_dir: Path | None = None) -> Rendered:
    """The page of ``kind`` from ``facts``: the user's template when ``templates_dir`` has a
    readable one, else the bundled one. Raises TemplateError for an unknown kind only."""
    if kind not in KINDS:
        raise TemplateError(f"no page template {kind!r} (the kinds are {', '.join(KINDS)})")
    text = _user_text(kind, templates_dir)
    if text is None:
        text = bundled_text(kind)
    head, _, body = text.partition("\n")
    values = _Facts(facts)
    title = plain(Template(head).safe_substitute(values), TITLE_CHARS)
    if not title:
        title = plain(f"rollbackd {kind} page: {values['app']} incident {values['incident']}",
                      TITLE_CHARS)
    text = Template(body.lstrip("\n")).safe_substitute(values).rstrip()
    return Rendered(title=title, text=text)


def require_templates(config: Config, config_path: Path) -> None:
    """A config whose ``paging.templates_dir`` holds a bad template is rejected up front (at
    start, at reload, by ``check``) with one line, rather than discovered at 3 a.m. when a
    page is rendered."""
    directory = config.paging.templates_dir
    if directory is None:
        return
    problems = check_templates(directory)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(f"{config_path}: paging.templates_dir: {problems[0]}{more}")
