"""Training of the TopicGeo network: supervision labels, losses, the training loop."""
