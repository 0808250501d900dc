"""Bytes of the tensors autograd saves for the backward of a call: the memory a backward holds."""

import torch


def saved_bytes(call) -> int:
    """Run ``call()`` and count the bytes of every tensor autograd saves for its backward."""
    total = 0

    def pack(x):
        nonlocal total
        total += x.numel() * x.element_size()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        call()
    return total
