"""Functions: Python code deployed with `torpor.App` and `torpor.Image`.

Import-light (standard library only): workers import it inside the image's environment.
"""

from torpor.functions.app import App, Cls, Function, FunctionCall, enter, method
from torpor.functions.image import Image

__all__ = ["App", "Cls", "Function", "FunctionCall", "Image", "enter", "method"]
