"""A simulated provider for development and tests: `receiver simulate` (receiver.simulator.provider)."""
