"""Command-line flags from dataclass fields: every command whose settings are a dataclass (``TrainSettings``,
``GenerateSettings``, ``TaskSettings``, ...) declares its flags with ``add_dataclass_arguments`` and reads them back
with ``dataclass_from_args``, so a field's help, default and type are written once."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, skip=()) -> None:
    """One flag per dataclass field not in ``skip`` (``--field-name``, or a positional argument where
    ``metadata['positional']``, one that may be left out where ``metadata['optional']``),
    with its default and ``metadata['help']``; the type says how it is read: ``bool`` as ``--x/--no-x``,
    ``X | None`` as ``X``, ``tuple[int, int]`` as two values, ``list[str]`` as one or more. ``metadata`` may also
    give ``choices``, ``metavar``, ``const`` (the value of the bare flag), ``flag`` (its name, where it is not the
    field's) and ``type`` (what reads its one value, where the field's type does not say how)."""
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        if item.name in skip:
            continue
        kind, meta = hints[item.name], item.metadata
        default = item.default if item.default is not dataclasses.MISSING else item.default_factory()
        options = {"help": f"{meta.get('help', '')} (default: {default})", "default": default}
        options.update({key: meta[key] for key in ("choices", "metavar", "const") if key in meta})
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None
            kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
        if "type" in meta:
            options["type"] = meta["type"]
        elif kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) in (tuple, list):
            element, *_ = typing.get_args(kind)
            options.update(type=element, nargs=len(typing.get_args(kind)) if typing.get_origin(kind) is tuple else "+")
        else:
            options["type"] = kind
            if "const" in meta:
                options["nargs"] = "?"
        if meta.get("positional"):
            optional = {"nargs": "?", "default": default} if meta.get("optional") else {}
            parser.add_argument(item.name, help=meta.get("help", ""), **optional)
        else:
            flag = "--" + meta.get("flag", item.name).replace("_", "-")
            parser.add_argument(flag, dest=item.name, **options)


def dataclass_from_args(cls, args: argparse.Namespace):
    """``cls`` of the parsed flags; a field that is no flag of the command keeps its default."""
    return cls(**{item.name: getattr(args, item.name) for item in dataclasses.fields(cls) if hasattr(args, item.name)})


def not_flags_of(task: str) -> set[str]:
    """The request fields that are not flags of ``task``'s command (``SamplingRequest``'s metadata ``tasks``)."""
    from .models.music_xl.sampling_music_xl import SamplingRequest, task_fields

    return {item.name for item in dataclasses.fields(SamplingRequest)} - set(task_fields(task))
