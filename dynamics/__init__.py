"""Continuous-time Krotov-Hopfield networks for any differentiable similarity (docs/theory.md section 2)."""
