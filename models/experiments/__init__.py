"""The paper's experiments: capacity sweeps, the sweep runner and its results store."""
