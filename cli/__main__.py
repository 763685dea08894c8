"""``python -m agentrpc.cli``: the same as the ``agentrpc`` console script."""

from .main import main

main()
