"""scattergate: a mail gateway that ends email backscatter."""

__version__ = "0.1.0"
