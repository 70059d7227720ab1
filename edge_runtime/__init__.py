"""Torch-free onboard core of TopicGeo Edge: numerics, formats, backends, locator and service."""
