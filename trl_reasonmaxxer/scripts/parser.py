"""What every command shares: TRL's ``TrlParser`` (dataclass flags, ``--config recipe.yaml``) and one ``--quick``.

A command's arguments are dataclasses. The one that inherits :class:`QuickArguments` lists its smoke-run settings
in ``QUICK``; with ``--quick`` (or ``quick: true`` in the recipe) they replace the dataclass defaults and the
recipe's values, and flags given on the command line still win:

    dataclass defaults < --config recipe.yaml < --quick < command-line flags
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from trl import TrlParser


@dataclass
class QuickArguments:
    """
    Parameters:
        quick (`bool`, *optional*, defaults to `False`):
            A smoke run in minutes: the command's `QUICK` settings replace the defaults and the `--config` recipe's
            values (flags on the command line still win). It checks the setup and measures nothing.
    """

    QUICK: ClassVar[dict[str, Any]] = {}

    quick: bool = field(
        default=False,
        metadata={
            "help": "A smoke run in minutes: the command's quick settings replace the defaults and the --config "
            "recipe's values (flags on the command line still win). It checks the setup and measures nothing."
        },
    )


class ScriptParser(TrlParser):
    """``TrlParser`` that lists ``--config`` in ``--help`` and applies ``--quick`` (see the module docstring)."""

    def __init__(self, dataclass_types, **kwargs):
        super().__init__(dataclass_types, **kwargs)
        quick = next((t for t in self.dataclass_types if issubclass(t, QuickArguments) and t.QUICK), None)
        for action in self._actions:
            if quick is not None and action.dest == "quick":  # --help shows what --quick sets
                action.help = (
                    (action.help or "") + " Sets: " + ", ".join(f"{k}={v}" for k, v in quick.QUICK.items()) + "."
                )
        # TrlParser reads `--config FILE` itself before argparse runs; this entry only documents it in --help
        self.add_argument(
            "--config",
            metavar="FILE.yaml",
            default=argparse.SUPPRESS,
            help="A YAML recipe (examples/recipes/): its keys set the defaults of the other flags; flags win.",
        )

    def parse_args_and_config(
        self,
        args: Iterable[str] | None = None,
        return_remaining_strings: bool = False,
        fail_with_unknown_args: bool = True,
        separate_remaining_strings: bool = False,
    ) -> tuple:
        args = list(sys.argv[1:] if args is None else args)
        output = super().parse_args_and_config(
            args, return_remaining_strings, fail_with_unknown_args, separate_remaining_strings
        )
        count = len(self.dataclass_types)
        quick = next((obj for obj in output[:count] if isinstance(obj, QuickArguments) and obj.quick), None)
        if quick is None:
            return output
        # the quick settings become the defaults (over the recipe's, which TrlParser set as defaults), then the
        # command line is parsed again without the recipe, so its flags win
        dests = {action.dest for action in self._actions}
        unknown = sorted(set(quick.QUICK) - dests)
        if unknown:
            raise ValueError(f"{type(quick).__name__}.QUICK names {unknown}, which are not arguments of this command.")
        self.set_defaults(**quick.QUICK)
        if "--config" in args:
            index = args.index("--config")
            args = args[:index] + args[index + 2 :]
        parsed = self.parse_args_into_dataclasses(args=args, return_remaining_strings=return_remaining_strings)
        return tuple(parsed[:count]) + tuple(output[count:])
