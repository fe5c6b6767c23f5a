"""Interchangeable executors of the guided sampler; each registers through ``dragsdk_register_backends``."""
