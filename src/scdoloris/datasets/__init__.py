"""Data sets: a simulator of perturbation screens with a known ground truth."""

from ._simulate import simulate

__all__ = ["simulate"]
