"""Command-line flags made from the targets' own option declarations (targets.base.Flag).

The commands that take target flags add them when they parse or print help, not when the CLI module is
imported: finding the targets imports their modules, and `edgefm --help` stays free of numpy and torch.
"""
from __future__ import annotations

import dataclasses
import math

import click

# click types for the declared kinds; bool flags are switches
_TYPES = {str: click.STRING, int: click.INT, float: click.FLOAT}


def finite(ctx, param, value):
    """A click callback: float values (one, or a repeated flag's tuple) must be finite."""
    values = value if isinstance(value, tuple) else (value,)
    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
        raise click.BadParameter(f"{value} is not a finite number")
    return value


def _none_if_empty(ctx, param, value):
    return tuple(value) or None


def _typed_choice(kind):
    def convert(ctx, param, value):
        return None if value is None else kind(value)

    return convert


@dataclasses.dataclass
class TargetFlag:
    """One flag and the targets that declare it (several may share one, e.g. --int4-group-size)."""

    field: str
    flag: object  # targets.base.Flag, as the first declaring target wrote it
    default: object  # the option's default in that target
    targets: list[str]

    def click_option(self) -> click.Option:
        flag = self.flag
        applies = f" ({', '.join(flag.precisions)})" if flag.precisions else ""
        default = f" (default {self.default})" if self.default not in (None, False, ()) else ""
        options = dict(help=f"{', '.join(self.targets)}{applies}: {flag.help}{default}", default=None)
        if flag.kind is bool:
            options.update(is_flag=True)
        elif flag.choices:
            options.update(type=click.Choice([str(c) for c in flag.choices]))
            if flag.kind is not str:
                options.update(callback=_typed_choice(flag.kind))
        elif flag.kind is int and flag.minimum is not None:
            options.update(type=click.IntRange(min=flag.minimum))
        else:
            options.update(type=_TYPES[flag.kind], callback=finite if flag.kind is float else None)
        if flag.multiple:
            options.update(multiple=True, callback=_none_if_empty, default=())
        return click.Option([flag.flag_name(self.field), self.field], **options)


def target_flags(on_device: bool = False) -> dict[str, TargetFlag]:
    """{field name: TargetFlag} over every registered target; `on_device` keeps the on-device step's flags."""
    from edgefm.contract import registry
    from edgefm.targets.base import flag_fields

    found: dict[str, TargetFlag] = {}
    for name, target in sorted(registry.targets().items()):
        defaults = {f.name: f.default for f in dataclasses.fields(target.options_class)}
        for field, flag in flag_fields(target.options_class).items():
            if on_device and not flag.on_device:
                continue
            if field in found:
                found[field].targets.append(name)
            else:
                found[field] = TargetFlag(field, flag, defaults[field], [name])
    return found


class TargetFlagsCommand(click.Command):
    """A command whose target flags come from the targets, added on first use."""

    def __init__(self, *args, on_device: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.on_device = on_device
        self._added = False

    def get_params(self, ctx):
        if not self._added:
            self._added = True
            self.params.extend(flag.click_option() for flag in target_flags(self.on_device).values())
        return super().get_params(ctx)


def split_flags(values: dict, on_device: bool = False) -> tuple[dict, dict]:
    """(the command's own values, the target flags' values)."""
    names = set(target_flags(on_device))
    return ({k: v for k, v in values.items() if k not in names}, {k: v for k, v in values.items() if k in names})
