"""One module per ``camseg`` command, each with ``add_arguments(parser, common)`` and
``run(args, settings, progress)``; :mod:`camseg.app.cli` holds their names and helps and
imports a command's module only when that command runs or its help is asked."""
