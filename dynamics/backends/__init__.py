"""The same network in brian2: a rate model and a spiking network of Poisson neurons."""
