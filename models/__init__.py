"""Single-shot Universal Hopfield Networks (Millidge et al., ICML 2022; docs/theory.md §1, the
formula at :class:`Memory`).

models/ never imports dynamics/; the continuous-time networks build on this package.
"""
from uhn.models.memory import (ClassicalHopfield, IterationResult, Memory, classical_hopfield,
    dense_associative_memory, modern_hopfield, sign, sparse_distributed_memory)
from uhn.models.separation import Separation, get_separation
from uhn.models.similarity import Similarity, get_similarity

from uhn.version import __version__

__all__ = [
    "Memory", "ClassicalHopfield", "IterationResult", "classical_hopfield", "sparse_distributed_memory",
    "dense_associative_memory", "modern_hopfield", "sign", "Similarity", "get_similarity",
    "Separation", "get_separation", "__version__",
]
