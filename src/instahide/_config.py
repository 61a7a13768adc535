"""Configuration dataclasses: typed fields, commented defaults, nested groups, one set of converters.

Every configuration (``SchemeConfig``, ``TrainConfig``, ``FedConfig``, ``SharedConfig``, ``AuditConfig``)
is a dataclass whose fields carry a type and a comment. :func:`from_dict` builds one from a dict
(``final.json``, a checkpoint, Flower's run config; nested groups such as ``scheme`` as a sub-dict or
flat), converting values and naming an unknown key or a bad value; :func:`flat_dict` is the inverse;
:func:`add_arguments` / :func:`from_args` give one ``--field-name`` option per field, documented by
its comment; :func:`check_types` is what ``validate()`` calls first.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import typing

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_bool(text) -> bool:
    """``True``/``False`` from a bool or from one of the words 1/true/yes/on, 0/false/no/off."""
    if isinstance(text, bool):
        return text
    low = str(text).strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _kind(hint):
    """``(base type, optional, is_tuple)`` of a field annotation."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint)
    if origin is tuple or hint is tuple:
        inner = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return (inner[0] if inner else str), optional, True
    return hint, optional, False


def is_group(hint) -> bool:
    """True for a field that is itself a configuration dataclass (a nested group of options)."""
    return dataclasses.is_dataclass(hint) and isinstance(hint, type)


def convert(value, hint, name: str):
    """``value`` converted to the annotation ``hint``; ``ValueError`` naming ``name`` if it cannot be."""
    base, optional, is_tuple = _kind(hint)
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in ("none", "null")):
        if optional:
            return None
        raise ValueError(f"{name}: None is not allowed (expected {base.__name__})")
    if is_tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"{name}: cannot read {value!r} as a list of {base.__name__}")
        return tuple(convert(v, base, name) for v in items)
    try:
        if base is bool:
            return parse_bool(value)
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value) if not isinstance(value, str) else int(value.strip())
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: cannot read {value!r} as {'a list of ' if is_tuple else ''}{base.__name__}") from None
    return value


def check_types(cfg) -> None:
    """Raise a ``ValueError`` naming the first field whose value is not of its declared type
    (``int`` fields refuse bools and non-whole floats; ``float`` fields accept ints)."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        hint = hints[f.name]
        value = getattr(cfg, f.name)
        if is_group(hint):
            check_types(value)
            continue
        base, optional, is_tuple = _kind(hint)
        if value is None and optional:
            continue
        ok = (isinstance(value, tuple) and all(_is(v, base) for v in value)) if is_tuple else _is(value, base)
        if not ok:
            raise ValueError(f"{f.name}: expected {'a tuple of ' if is_tuple else ''}{base.__name__}"
                             f"{' or None' if optional else ''}, got {value!r}")


def _is(value, base) -> bool:
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, base)


def from_dict(cls, d: dict, *, ignore=(), what: str = "configuration key"):
    """``cls`` from ``d``: nested groups as sub-dicts or flat; values converted to the fields' types;
    an unknown key (other than those in ``ignore``) is a ``ValueError`` listing the known ones."""
    hints = typing.get_type_hints(cls)
    groups = {f.name: hints[f.name] for f in dataclasses.fields(cls) if is_group(hints[f.name])}
    owner = {g.name: name for name, gcls in groups.items() for g in dataclasses.fields(gcls)}
    kw: dict = {}
    sub: dict = {name: {} for name in groups}
    for key, value in dict(d).items():
        name = key.replace("-", "_")
        if key in ignore or name in ignore:
            continue
        if name in groups:
            if not isinstance(value, dict):
                raise ValueError(f"{name}: expected a mapping of its options, got {value!r}")
            sub[name].update(value)
        elif name in owner:
            sub[owner[name]][name] = value
        elif name in hints and not name.startswith("_"):
            kw[name] = convert(value, hints[name], name)
        else:
            known = sorted({*hints, *owner} - set(groups))
            raise ValueError(f"unknown {what} {key!r}; known keys: {', '.join(known)}")
    defaults = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                for f in dataclasses.fields(cls) if f.name in groups}
    for name, gcls in groups.items():  # a group's own defaults are the containing class's default group
        kw[name] = from_dict(gcls, {**flat_dict(defaults[name]), **sub[name]})
    return cls(**kw)


def flat_dict(cfg, *, drop_none: bool = False) -> dict:
    """The fields of ``cfg`` with nested groups spread into the top level (the command line's view)."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flat_dict(value, drop_none=drop_none))
        elif not (drop_none and value is None):
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def field_comments(cls) -> dict[str, str]:
    """The comment beside each field in the class source (with its continuation lines)."""
    comments: dict[str, str] = {}
    last = None
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s{4}(\w+):[^#]*#\s?(.*)$", line)
        if m:
            last = m.group(1)
            comments[last] = m.group(2).strip()
        elif last and re.match(r"\s{8,}#\s?(.*)$", line):
            comments[last] += " " + re.match(r"\s+#\s?(.*)$", line).group(1).strip()
        elif re.match(r"\s{4}\w+:", line):
            last = None
    return comments


def _leaves(cls):
    """``(field, annotation, comment, default)`` for every option of ``cls``, groups flattened."""
    hints, notes = typing.get_type_hints(cls), field_comments(cls)
    for f in dataclasses.fields(cls):
        if is_group(hints[f.name]):
            yield from _leaves(hints[f.name])
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        yield f, hints[f.name], notes.get(f.name, ""), default


def add_arguments(parser: argparse.ArgumentParser, cls, *, skip=(), title: str | None = None,
                  defaults: dict | None = None) -> None:
    """One ``--field-name`` option per (flattened) field of ``cls``, typed from its annotation and
    documented by the comment beside it. ``defaults`` overrides shown and used defaults by name."""
    group = parser.add_argument_group(title) if title else parser
    for f, hint, note, default in _leaves(cls):
        if f.name in skip:
            continue
        default = (defaults or {}).get(f.name, default)
        base, optional, is_tuple = _kind(hint)
        opt = "--" + f.name.replace("_", "-")
        shown = " ".join(map(str, default)) if is_tuple else default
        text = (note if default is None else f"{note} (default: {shown})").replace("%", "%%")
        if base is bool:
            group.add_argument(opt, type=_arg_type(bool, f.name), nargs="?", const=True, default=default,
                               metavar="BOOL", help=text[:-1] + "; the option alone means true)")
        else:
            group.add_argument(opt, type=_arg_type(base if is_tuple else hint, f.name), default=default,
                               nargs="+" if is_tuple else None, metavar=f.name.upper(), help=text)


def _arg_type(hint, name: str):
    def parse(text: str):
        try:
            return convert(text, hint, name)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = name
    return parse


def from_args(args: argparse.Namespace, cls, *, skip=()):
    """The configuration ``cls`` from parsed :func:`add_arguments` options (groups rebuilt)."""
    return from_dict(cls, {f.name: getattr(args, f.name) for f, *_ in _leaves(cls) if f.name not in skip})


class Config:
    """Mixin of the configuration dataclasses: dict round trip and the flat keyword form.

    ``Cfg.make(k=6, epochs=3)`` takes the options by their flat names (as on the command line),
    nested groups included; ``Cfg.from_dict(cfg.to_dict()) == cfg``.
    """

    def to_dict(self) -> dict:
        """Flat plain-JSON dict (groups spread, tuples as lists): what final.json and checkpoints hold."""
        return flat_dict(self)

    @classmethod
    def from_dict(cls, d: dict, **kw):
        return from_dict(cls, d, **kw)

    @classmethod
    def make(cls, **options):
        """The configuration from its options by their flat names (nested groups included)."""
        return from_dict(cls, options)

    def replace(self, **options):
        """A copy with ``options`` (flat names) changed."""
        return from_dict(type(self), {**self.to_dict(), **options})
