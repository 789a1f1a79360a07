"""SAGE-Health: Sustainable, Adaptive and Generative Ecosystem for Healthcare."""

__version__ = "0.1.0"

__all__ = ["__version__"]
