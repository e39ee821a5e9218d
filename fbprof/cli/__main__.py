"""``python -m fbprof.cli``: the same as the ``fbprof`` command."""

from fbprof.cli import main

main()
