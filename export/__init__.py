"""Exporters: topic prompt embeddings (``export.topics``) and the network for deployment."""
