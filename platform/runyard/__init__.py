"""runyard: reproducible, distributed, tracked ML experiments."""

__version__ = "0.1.0"
