"""Each setting declared once: a config field carries its flag, help text and range.

The config classes (:mod:`esper_kernel.settings.config`) declare their fields with
:func:`setting`. Everything a user meets is derived from that one
declaration, the habit of CleanRL's ``Args``:

- the click options of every command that takes the field (:func:`options`),
  with the default read from the field, so help text never disagrees with it;
- the TOML key (the field's path, ``env.train_size``) and its range check
  (:func:`range_problems`), so a file and a flag are refused in the same words;
- the overrides a command applies on top of a config file (:func:`overrides`);
- the flags a resumed run refuses (:func:`given_flags`);
- the tables of ``docs/config.md`` (:func:`markdown_table`, checked by a test).

Adding a setting shared by ``run``, ``train``, ``eval`` and ``sweep`` is one
field on ``EnvConfig``; this module and the CLI need no edit. It imports
neither torch nor any layer above it: ``esper --help`` builds every option.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal, TypeVar, get_args

import attrs
import click

__all__ = [
    "COMMANDS",
    "Command",
    "Roots",
    "Setting",
    "SettingField",
    "fields_of",
    "flag_matrix",
    "given_flags",
    "markdown_table",
    "options",
    "overrides",
    "range_problems",
    "setting",
    "settings_of",
    "sync_blocks",
    "with_defaults",
    "with_flag",
]

F = TypeVar("F", bound=Callable[..., Any])

Command = Literal["run", "train", "eval", "sweep"]
#: The commands that train hosts, and so take settings.
COMMANDS: tuple[Command, ...] = ("run", "train", "eval", "sweep")
_KEY = "esper.setting"


@attrs.frozen
class Setting:
    """How a config field meets the user: its flag, help, range and the commands that take it."""

    #: ``--train-size``; None: a TOML key with no flag.
    flag: str | None
    help: str
    #: Inclusive bounds for numbers (``lo_open``: the lower bound itself is refused).
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    #: Commands whose flags include it; the config class's own commands otherwise.
    commands: tuple[Command, ...] | None = None
    #: May be given with ``--resume`` (it changes how, not what, the run computes).
    with_resume: bool = False
    #: A ``--flag`` that takes no value (booleans).
    is_flag: bool = False
    #: The value is a comma-separated list on the command line: ``--levers a,b``.
    csv: type[Any] | None = None
    #: The flag names a path (checked by click as a path; the config keeps a string).
    path: Literal["file", "dir", "any"] | None = None


def setting(
    default: Any = attrs.NOTHING,
    *,
    flag: str | None,
    help: str,
    factory: Callable[[], Any] | None = None,
    validator: Any = None,
    **how: Any,
) -> Any:
    """An attrs field declared with its flag and help: ``epochs: int = setting(40, flag="--epochs", help=...)``."""
    meta = {_KEY: Setting(flag=flag, help=help, **how)}
    if factory is not None:
        return attrs.field(factory=factory, metadata=meta, validator=validator)
    return attrs.field(default=default, metadata=meta, validator=validator)


@attrs.frozen
class SettingField:
    """One declared field of a config class, found by :func:`fields_of`."""

    #: The TOML key path: ``env.train_size``.
    key: str
    #: The config class that declares it (``EnvConfig``).
    owner: type[Any]
    setting: Setting
    default: Any
    type: Any

    @property
    def param(self) -> str:
        """The click parameter name: the key path with ``__`` for the dots (``env__train_size``)."""
        return self.key.replace(".", "__")


def fields_of(cls: type[Any], prefix: str = "") -> Iterator[SettingField]:
    """Every declared setting of ``cls`` and of its nested config tables, in declaration order."""
    attrs.resolve_types(cls)
    for a in attrs.fields(cls):
        key = f"{prefix}{a.name}"
        factory = a.default.factory if isinstance(a.default, attrs.Factory) else None  # type: ignore[arg-type]
        if isinstance(factory, type) and attrs.has(factory):
            yield from fields_of(factory, f"{key}.")  # a table: ``[env]``
            continue
        s = a.metadata.get(_KEY)
        if s is not None:
            default = factory() if factory is not None else a.default
            yield SettingField(key, cls, s, default, a.type)


#: A command's settings: the root config class it reads, and which commands take each declaring class's
#: settings (a setting may name its own commands instead).
Roots = tuple[type[Any], Mapping[type[Any], tuple[Command, ...]]]


def settings_of(command: Command, roots: Roots) -> list[SettingField]:
    """The settings ``command`` takes as flags, in the order its ``--help`` lists them."""
    root, owners = roots
    return [
        f
        for f in fields_of(root)
        if f.setting.flag is not None and command in (f.setting.commands or owners.get(f.owner, ()))
    ]


def _base(type_: Any) -> Any:
    """``int | None`` -> ``int``."""
    args = [t for t in get_args(type_) if t is not type(None)]
    return args[0] if args else type_


def _click_type(f: SettingField) -> Any:
    # Types only: ranges and choices are checked with the config, so a flag and a TOML key are refused
    # in the same words (``env.epochs (--epochs): must be between 1 and 100000, got 0``).
    s = f.setting
    if s.path is not None:
        return click.Path(file_okay=s.path != "dir", dir_okay=s.path != "file")
    if s.csv is not None or s.choices is not None:
        return str
    return {int: click.INT, float: click.FLOAT}.get(_base(f.type), click.STRING)


def _int(x: float | None) -> int | None:
    return None if x is None else int(x)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(map(str, value)) if value else "none"
    return str(value)


def _help(f: SettingField) -> str:
    text = f.setting.help
    if f.default is not None and not (f.setting.is_flag and f.default is False):
        text += f" (default {_show(f.default)})"
    limits = _range_text(f.setting)
    return f"{text}  [{limits}]" if limits else text


def _csv_callback(kind: type[Any], flag: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def parse(_ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        try:
            return tuple(kind(x.strip()) for x in str(value).split(",") if x.strip())
        except ValueError:
            raise click.BadParameter(f"expected a list like 0,1,2, got {value!r}", param_hint=flag) from None

    return parse


def option(f: SettingField) -> Callable[[F], F]:
    """The click option of one setting, the same in every command that takes it."""
    s = f.setting
    assert s.flag is not None
    if s.is_flag:
        return click.option(s.flag, f.param, is_flag=True, default=None, help=_help(f))
    callback = _csv_callback(s.csv, s.flag) if s.csv is not None else None
    metavar = s.metavar or ("[" + "|".join(s.choices) + "]" if s.choices else None)
    return click.option(
        s.flag, f.param, type=_click_type(f), default=None, metavar=metavar, help=_help(f), callback=callback
    )


def options(command: Command, roots: Roots) -> Callable[[F], F]:
    """Decorate a click command with the options of every setting ``command`` takes."""

    def apply(fn: F) -> F:
        for f in reversed(settings_of(command, roots)):  # click lists options in decorator order, the first on top
            fn = option(f)(fn)
        return fn

    return apply


def overrides(flags: Mapping[str, Any], declared: list[SettingField]) -> dict[str, Any]:
    """The settings given on the command line, as ``with_overrides`` keys (``env__train_size``); None: not given."""
    return {f.param: flags[f.param] for f in declared if flags.get(f.param) is not None}


def given_flags(flags: Mapping[str, Any], declared: list[SettingField]) -> list[str]:
    """The flags given that a resumed run would have to ignore, so refuses."""
    return [f.setting.flag or f.key for f in declared if not f.setting.with_resume and flags.get(f.param) is not None]


def _range_problem(s: Setting, value: Any) -> str | None:
    if s.choices is not None and value not in s.choices:
        return f"must be one of {', '.join(s.choices)}, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    lo, hi = s.lo, s.hi
    if lo is not None and (value < lo or (s.lo_open and value == lo)):
        return _between(s, value)
    if hi is not None and value > hi:
        return _between(s, value)
    return None


def _bounds(s: Setting) -> list[str]:
    """A setting's limits as ``[">= 0", "<= 10"]``, the words both the errors and the docs use."""
    parts = []
    if s.lo is not None:
        parts.append(f"{'>' if s.lo_open else '>='} {_num(s.lo)}")
    if s.hi is not None:
        parts.append(f"<= {_num(s.hi)}")
    return parts


def _closed(s: Setting) -> bool:
    return s.lo is not None and s.hi is not None and not s.lo_open


def _between(s: Setting, value: Any) -> str:
    if _closed(s):
        return f"must be between {_num(s.lo or 0)} and {_num(s.hi or 0)}, got {value}"
    return f"must be {' and '.join(_bounds(s))}, got {value}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def range_problems(config: Any, prefix: str = "") -> list[str]:
    """Every out-of-range value of ``config``, as ``env.epochs (--epochs): must be ...`` (empty if none)."""
    problems: list[str] = []
    for f in fields_of(type(config)):
        value: Any = config
        for part in f.key.split("."):
            value = getattr(value, part)
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if v is not None and (msg := _range_problem(f.setting, v)) is not None:
                flag = f" ({f.setting.flag})" if f.setting.flag else ""
                problems.append(f"{prefix}{f.key}{flag}: {msg}")
                break
    return problems


def _toml_type(f: SettingField) -> str:
    base = _base(f.type)
    if f.setting.csv is not None or "tuple" in str(f.type):
        return "list of strings" if f.setting.csv is not int else "list of ints"
    return {int: "int", float: "float", bool: "bool", str: "string"}.get(base, str(base))


def _toml_default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_default(v) for v in value) + "]"
    return str(value)


def _range_text(s: Setting) -> str:
    if s.choices is not None:
        return ", ".join(s.choices)
    if _closed(s):
        return f"{_num(s.lo or 0)} to {_num(s.hi or 0)}"
    return ", ".join(_bounds(s))


def markdown_table(cls: type[Any], table: str | None = None) -> str:
    """The settings of ``cls`` (only the ``table`` prefix if given) as the Markdown table of ``docs/config.md``."""
    rows = ["| key | flag | type | default | range | meaning |", "|-----|------|------|---------|-------|---------|"]
    for f in fields_of(cls):
        head, _, _rest = f.key.rpartition(".")
        if (table or "") != head:
            continue
        flag = f"`{f.setting.flag}`" if f.setting.flag else ""
        default = f"`{_toml_default(f.default)}`"
        cells = (f"`{f.key}`", flag, _toml_type(f), default, _range_text(f.setting), f.setting.help)
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def flag_matrix(commands: Mapping[str, Roots]) -> str:
    """Which command takes which setting flag, as a Markdown table (``docs/config.md``)."""
    names = list(commands)
    taken = {c: {f.key: f for f in settings_of(c, commands[c])} for c in names}  # type: ignore[arg-type]
    flags: dict[str, list[str]] = {}
    for c in names:
        for f in taken[c].values():
            flags.setdefault(f.setting.flag or "", [])
            if f.key not in flags[f.setting.flag or ""]:
                flags[f.setting.flag or ""].append(f.key)
    rows = ["| flag | key | " + " | ".join(f"`{c}`" for c in names) + " |", "|---" * (len(names) + 2) + "|"]
    for flag, keys in flags.items():
        for key in keys:
            marks = " | ".join("yes" if key in taken[c] else "" for c in names)
            rows.append(f"| `{flag}` | `{key}` | {marks} |")
    return "\n".join(rows)


def sync_blocks(text: str, blocks: Mapping[str, str]) -> str:
    """``text`` with each ``<!-- settings:NAME -->`` ... ``<!-- /settings:NAME -->`` block set to ``blocks[NAME]``."""
    for name, body in blocks.items():
        start, end = f"<!-- settings:{name} -->", f"<!-- /settings:{name} -->"
        head, found, rest = text.partition(start)
        if not found:
            raise ValueError(f"no {start} block")
        _old, found, tail = rest.partition(end)
        if not found:
            raise ValueError(f"{start} has no {end}")
        text = f"{head}{start}\n{body}\n{end}{tail}"
    return text


def with_flag(problem: str, cls: type[Any]) -> str:
    """``env.task: ...`` -> ``env.task (--task): ...``: the message names what the user typed too."""
    key, _, msg = problem.partition(": ")
    if "(" in key:
        return problem
    flag = next((f.setting.flag for f in fields_of(cls) if f.key == key), None)
    return f"{key} ({flag}): {msg}" if flag else problem


def with_defaults(cls: type[Any], saved: Mapping[str, Any]) -> dict[str, Any]:
    """A ``cls`` record saved before some of its fields existed, those fields at their defaults.

    A setting is added with the default that does what runs did before it, so an
    old record and a new one at that default describe the same run.
    """
    return {**attrs.asdict(cls()), **saved}
