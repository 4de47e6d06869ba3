"""Continuous-time Krotov-Hopfield networks for any differentiable similarity (DESIGN.md section 2)."""
