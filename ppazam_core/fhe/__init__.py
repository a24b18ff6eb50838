"""Encrypted execution: Concrete ML circuits, the packed CKKS head, the channel, deployment and serving."""
