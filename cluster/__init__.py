"""cluster: a Python web server that scales across processes and machines.

What a handler imports lives here, and importing it pulls in no gateway or
coordinator code.
"""

from cluster.app import App

__all__ = ["App", "__version__"]
__version__ = "0.1.0"
