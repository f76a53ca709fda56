"""The ``ptychodata`` command: ``simulate``, ``inspect``, ``convert``, ``prepare``, ``prepare-scan``,
``dataset``, ``cache`` and ``demo``.

Thin by design: parse the arguments, call one library function, print. Every error (a usage
error, a :class:`~ptychodata.errors.PtychodataError`, an OS or memory error, an unexpected
exception) becomes a one-line ``error: ...`` on stderr and exit status 2, without a traceback
(``--debug`` prints it); success is 0. Messages name flags, not Python parameters. The reading flags are generated from
:class:`ptychodata.io.LoadOptions`, the one definition of the load options.

Modules: ``_main`` (entry point, errors, warnings), ``_parser`` (the parser, built from the
commands), ``_options`` (the reading flags), ``_messages`` (Python spellings into flags),
``_arguments`` (shared argument types), and one module per command (``_simulate``,
``_inspect``, ``_convert``, ``_prepare``, ``_prepare_scan``, ``_dataset``, ``_cache``, ``_demo``),
each with ``add_parser`` and ``run``.
"""

from ptychodata.cli._main import main
from ptychodata.cli._parser import build_parser

__all__ = ["build_parser", "main"]
