"""uhn: Universal Hopfield Networks (Millidge et al., ICML 2022) as a simulator.

Single-shot retrieval ``z = P^T sep(sim(M, q))`` (:mod:`uhn.models`) and the continuous-time
Krotov-Hopfield networks with their energy check (:mod:`uhn.dynamics`); the mathematical contract
is docs/theory.md. The everyday names are importable from here; each is loaded on first use, so
``import uhn`` (and the ``uhn`` command) stays fast::

    import uhn
    mem = uhn.Memory(X, similarity="manhattan", separation="max")
    net = uhn.Network(X, similarity="dot", L_h=uhn.lagrangians.log_sum_exp(beta=5))
    report = uhn.verify_energy(net, uhn.integrate(net, Q, t_end=50))
"""
from __future__ import annotations

import importlib

from uhn.version import __version__

# name -> the module that defines it
_API = {
    # single shot (uhn.models)
    "Memory": "uhn.models.memory",
    "ClassicalHopfield": "uhn.models.memory",
    "classical_hopfield": "uhn.models.memory",
    "sparse_distributed_memory": "uhn.models.memory",
    "dense_associative_memory": "uhn.models.memory",
    "modern_hopfield": "uhn.models.memory",
    "get_similarity": "uhn.models.similarity",
    "get_separation": "uhn.models.separation",
    "load_dataset": "uhn.models.data",
    "corrupt": "uhn.models.corruption",
    "LatentMemory": "uhn.models.latent",
    "PCAEncoder": "uhn.models.latent",
    # continuous time (uhn.dynamics)
    "Network": "uhn.dynamics.network",
    "integrate": "uhn.dynamics.integrate",
    "Trajectory": "uhn.dynamics.trajectory",
    "verify_energy": "uhn.dynamics.analysis.energy",
    "compare_table": "uhn.dynamics.analysis.fixed_points",
    "compare_trajectories": "uhn.dynamics.analysis.compare",
    "diagnose": "uhn.dynamics.analysis.diagnose",
    "save_trajectory": "uhn.dynamics.trajectory",
    "load_trajectory": "uhn.dynamics.trajectory",
    "run_brian2": "uhn.dynamics.backends.brian2_rate",
    # networks of many layers (uhn.dynamics.hierarchical)
    "HierarchicalNetwork": "uhn.dynamics.hierarchical.network",
    "Layer": "uhn.dynamics.hierarchical.layers",
}
# name -> a module offered whole
_MODULES = {
    "models": "uhn.models",
    "dynamics": "uhn.dynamics",
    "lagrangians": "uhn.dynamics.lagrangians",
}

__all__ = sorted(_API) + sorted(_MODULES) + ["__version__"]


def __getattr__(name: str):
    """Load an everyday name on first use (PEP 562)."""
    if name in _MODULES:
        value = importlib.import_module(_MODULES[name])
    elif name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
    else:
        raise AttributeError(f"module 'uhn' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
