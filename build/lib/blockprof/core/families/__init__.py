"""Space families, one module each; importing this package registers the built-in ones."""
from blockprof.core.families import mbconv, resnet  # noqa: F401
