"""Modules: the PyTorch-style layer API of fastrnn."""
from .module import Module, Parameter

__all__ = ["Module", "Parameter"]
