"""``python -m ptychodata.cli ARGS``: the same as the ``ptychodata`` command."""

from ptychodata.cli._main import main

raise SystemExit(main())
