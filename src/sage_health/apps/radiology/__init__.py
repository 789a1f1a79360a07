"""Applications built on the agents: the chest X-ray report workflow."""
