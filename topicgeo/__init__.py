"""TopicGeo: unified retrieval + matching network (PyTorch; the training side of TopicGeo Edge)."""

__version__ = "0.1.0"
