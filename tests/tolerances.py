"""The one table of tolerances for fast paths against the reference: (backend, dtype) -> (atol, rtol).

Outputs and gradients are compared with ``torch.testing.assert_close(got, want, atol=, rtol=)``.
float64 shows the paths compute the same maths (differences are rounding only); float32 allows
for a different order of summation (fused kernels, chunked and streaming softmax).

bfloat16 (8 bits of mantissa) is compared against the truth instead: the fast path's largest
error against the reference run in float64 may be at most ``LOW_PRECISION_FACTOR`` times the
reference's own bfloat16 error, plus atol + rtol · max |truth| (gradients of one scalar such as
cosine's temperature sum many terms, so their error scales with their size).
"""

import torch

TOLERANCES: dict[tuple[str, torch.dtype], tuple[float, float]] = {
    ("sdpa", torch.float64): (1e-12, 1e-10),
    ("sdpa", torch.float32): (2e-5, 1e-4),
    ("sdpa", torch.bfloat16): (2e-2, 2e-2),
    ("flex", torch.float32): (2e-5, 1e-4),
    # banded: the band's matmuls sum in another order; bfloat16 compared in the same dtype, forward only
    ("banded", torch.float64): (1e-10, 1e-8),
    ("banded", torch.float32): (2e-5, 1e-4),
    ("banded", torch.bfloat16): (3e-2, 3e-2),
    # additive_fused: online softmax, scores as 2 Σ v r - Σ v with tanh rewritten through exp
    ("additive_fused", torch.float64): (1e-12, 1e-10),
    ("additive_fused", torch.float32): (2e-5, 1e-4),
    ("additive_fused", torch.bfloat16): (2e-2, 2e-2),
    # blocksparse: SDPA on gathered key blocks, summed per block; bfloat16 against the truth as sdpa
    ("blocksparse", torch.float64): (1e-10, 1e-8),
    ("blocksparse", torch.float32): (2e-5, 1e-4),
    ("blocksparse", torch.bfloat16): (2e-2, 2e-2),
    ("topk_gather", torch.float64): (1e-12, 1e-10),
    ("topk_gather", torch.float32): (2e-5, 1e-4),
    ("topk_gather", torch.bfloat16): (2e-2, 2e-2),
    # additive_triton, run in Triton's interpreter: online softmax, tanh from exp(-2|x|), da by atomics
    ("additive_triton", torch.float64): (1e-12, 1e-10),
    ("additive_triton", torch.float32): (2e-5, 1e-4),
    ("additive_triton", torch.bfloat16): (2e-2, 2e-2),
}


LOW_PRECISION = (torch.bfloat16, torch.float16)
LOW_PRECISION_FACTOR = 2.0

