"""vehicle_simulator: a node that publishes a plausible robot's topics, for tests and `make demo`."""
