"""``python -m instructor.reference_data``: the command line (see the package docstring)."""

from . import main

main()
