"""``python -m trl_reasonmaxxer <command>``: the same as ``trl-reasonmaxxer <command>``."""

from .cli import main


main()
