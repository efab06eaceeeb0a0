"""Data sets: a simulator of perturbation screens with a known ground truth, the README's
example data (a subset of Norman et al. 2019 from PerturBench) and loaders of the paper's
public data (downloaded through pertpy) harmonised to one ``obs`` schema."""

from ._loaders import adamson_2016, norman_2019, srivatsan_2020_sciplex3
from ._norman_subset import norman_2019_subset
from ._simulate import simulate

__all__ = [
    "simulate",
    "norman_2019_subset",
    "norman_2019",
    "adamson_2016",
    "srivatsan_2020_sciplex3",
]
