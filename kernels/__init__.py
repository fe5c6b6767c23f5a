"""Attention kernels and their pure-PyTorch oracles (see reference.py)."""
