"""The command-line apps, one TRL-style script per ``trl-reasonmaxxer`` command."""
