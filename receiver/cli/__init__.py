"""`osma-router`: the command line, one module per command family.

Nothing else in the package imports from here: commands call the functions of the layers
below (`receiver.store`, `receiver.web`, `receiver.worker`, ...), never the reverse.
"""

from .main import main

__all__ = ["main"]
