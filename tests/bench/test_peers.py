"""attnkit against libraries that nobody here wrote: the ``entmax`` package's sparsemax and
1.5-entmax, forward and backward, unmasked, masked (the peer sees only the allowed keys) and at
large magnitudes. (torch's own modules are the peers in test_dropin.py and test_modules.py,
``local-attention`` in test_dropin.py, HF ``transformers`` in test_bert.py.)"""

import pytest
import torch

from attnkit import NORMALIZERS

entmax = pytest.importorskip("entmax", reason="the peer: pip install 'attnkit[test]'")

PEERS = {"sparsemax": entmax.sparsemax, "entmax15": entmax.entmax15}


@pytest.mark.parametrize("name", PEERS)
@pytest.mark.parametrize("scale", [1.0, 10.0, 1e4])
def test_equals_the_entmax_package(name, scale):
    torch.manual_seed(0)
    scores = (torch.randn(6, 4, 9, dtype=torch.float64) * scale).requires_grad_(True)
    peer_scores = scores.detach().clone().requires_grad_(True)
    ours = NORMALIZERS[name]()(scores).weights
    theirs = PEERS[name](peer_scores, dim=-1)
    torch.testing.assert_close(ours, theirs)
    grad = torch.randn_like(ours)
    ours.backward(grad)
    theirs.backward(grad)
    torch.testing.assert_close(scores.grad, peer_scores.grad)


@pytest.mark.parametrize("name", PEERS)
@pytest.mark.parametrize("magnitude", [1.0, 600.0, 1e30])
def test_masked_equals_the_entmax_package_on_the_allowed_keys(name, magnitude):
    """A masked row equals the peer run on that row's allowed keys alone, and is 0 elsewhere."""
    torch.manual_seed(1)
    scores = torch.randn(8, 7, dtype=torch.float64) * magnitude
    allowed = torch.rand(8, 7) < 0.5
    allowed[:, 3] = True
    ours = NORMALIZERS[name]()(scores, allowed).weights
    for r in range(8):
        theirs = PEERS[name](scores[r, allowed[r]], dim=-1)
        torch.testing.assert_close(ours[r, allowed[r]], theirs)
        assert ours[r, ~allowed[r]].eq(0).all()
