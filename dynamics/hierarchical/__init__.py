"""Hierarchical associative memories (docs/theory.md §11): layers (layers.py) joined by synapses
(synapses.py) into one network with one energy (network.py), on the same integrators and checks
as the two-layer Network; the three-layer MNIST demonstration (demo.py)."""
