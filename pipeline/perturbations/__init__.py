"""Initial-condition perturbations: bred vectors (HENS) and baselines."""

from pipeline.perturbations.base import HemisphericNorm, Perturbation
from pipeline.perturbations.methods import BredVectors, GaussianNoise, NoPerturbation, SphericalNoise
from pipeline.perturbations.sphere import SphericalRandomField

__all__ = [
    "BredVectors",
    "GaussianNoise",
    "HemisphericNorm",
    "NoPerturbation",
    "Perturbation",
    "SphericalNoise",
    "SphericalRandomField",
]
