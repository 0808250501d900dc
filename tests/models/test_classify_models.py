"""The classifiers: each overfits a few dozen WordNet examples; padding gets exactly zero attention
and changes no prediction; HAN's sentence weights are a distribution over real sentences; ABCNN's
matrix is 1 / (1 + Euclidean distance); bad configs fail when built, with the field named."""

import math

import pytest
import torch
from torch import nn

from attnkit import AttentionError
from attnkit.models import (
    ABCNN,
    HAN,
    ABCNNConfig,
    CNNClassifier,
    CNNClassifierConfig,
    HANConfig,
    Pooling,
    RNNClassifier,
    RNNClassifierConfig,
    RNNEncoder,
    TransformerClassifier,
    TransformerClassifierConfig,
    match_matrix,
)
from attnkit.tasks.classify import ClassifyTask, build_model
from attnkit.train import TrainConfig

torch.set_num_threads(1)

TINY = {
    "rnn": {"embed_dim": 16, "hidden_dim": 16, "dropout": 0.0},
    "cnn": {"embed_dim": 16, "channels": 32, "hidden_dim": 8, "dropout": 0.0},
    "transformer": {"d_model": 32, "heads": 2, "ff_dim": 64, "layers": 1, "dropout": 0.0},
    "han": {"embed_dim": 16, "hidden_dim": 16, "dropout": 0.0},
    "bcnn": {"embed_dim": 16, "channels": 32, "dropout": 0.0},
    "abcnn1": {"embed_dim": 16, "channels": 32, "dropout": 0.0},
    "abcnn2": {"embed_dim": 16, "channels": 32, "dropout": 0.0},
    "abcnn3": {"embed_dim": 16, "channels": 32, "dropout": 0.0},
}


def overfit(task: ClassifyTask, steps: int, lr: float = 0.01) -> tuple[float, float, float]:
    """Full-batch Adam on the task's training examples: (first loss, last loss, accuracy %)."""
    torch.manual_seed(0)
    model = task.build()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    (batch,) = task.batches(0, torch.Generator().manual_seed(0), len(task.train))
    config = TrainConfig(label_smoothing=0.0)
    losses = []
    for _ in range(steps):
        loss, _ = task.loss(model, batch, config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    inputs, labels = batch
    with torch.no_grad():
        accuracy = 100.0 * model(*inputs).logits.argmax(-1).eq(labels).float().mean().item()
    return losses[0], losses[-1], accuracy


@pytest.mark.parametrize(
    "task, model, extra, steps",
    [
        ("gloss", "rnn", {}, 60),
        ("gloss", "rnn", {"pooling": "last"}, 60),
        ("gloss", "rnn", {"pooling": "mean", "cell": "gru"}, 60),
        ("gloss", "rnn", {"pooling": "max"}, 60),
        ("gloss", "rnn", {"pool_score": "scaled_dot", "pool_heads": 4}, 60),
        ("gloss", "cnn", {}, 60),
        ("gloss", "cnn", {"pooling": "max"}, 60),
        ("gloss", "transformer", {}, 60),
        ("document", "han", {}, 60),
        ("document", "rnn", {}, 60),
        ("pair", "bcnn", {}, 80),
        ("pair", "abcnn1", {}, 80),
        ("pair", "abcnn2", {}, 80),
        ("pair", "abcnn3", {}, 80),
    ],
)
def test_each_model_overfits_a_few_dozen_examples(task, model, extra, steps):
    t = ClassifyTask(task, model, {**TINY[model], **extra}, limit=32, valid_limit=8, min_count=1)
    first, last, accuracy = overfit(t, steps)
    assert accuracy == 100.0 and last < first / 10, (first, last, accuracy)


def padded_batch():
    return torch.tensor([[4, 5, 6, 7, 8], [9, 10, 0, 0, 0], [11, 12, 13, 0, 0]])  # (3, 5), lengths 5, 2, 3


TEXT_MODELS = [
    ("rnn", lambda: RNNClassifier(RNNClassifierConfig(vocab=20, classes=3, embed_dim=8, hidden_dim=8))),
    (
        "rnn-heads",
        lambda: RNNClassifier(
            RNNClassifierConfig(vocab=20, classes=3, embed_dim=8, hidden_dim=8, pool_score="scaled_dot", pool_heads=4)
        ),
    ),
    ("cnn", lambda: CNNClassifier(CNNClassifierConfig(vocab=20, classes=3, embed_dim=8, channels=8, hidden_dim=4))),
    (
        "transformer",
        lambda: TransformerClassifier(TransformerClassifierConfig(vocab=20, classes=3, d_model=8, heads=2, ff_dim=16)),
    ),
]


@pytest.mark.parametrize("name, make", TEXT_MODELS, ids=[n for n, _ in TEXT_MODELS])
def test_text_models_give_padding_exactly_zero_weight_and_real_words_a_distribution(name, make):
    torch.manual_seed(0)
    ids = padded_batch()
    weights = make().eval()(ids).words  # (B, T)
    real = ids.ne(0)
    assert weights[~real].eq(0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(3))


@pytest.mark.parametrize("name, make", TEXT_MODELS, ids=[n for n, _ in TEXT_MODELS])
def test_text_models_predict_the_same_with_or_without_padding(name, make):
    torch.manual_seed(0)
    model = make().eval()
    ids = padded_batch()
    batched = model(ids)
    alone = model(ids[1:2, :2])
    torch.testing.assert_close(batched.logits[1:2], alone.logits)
    torch.testing.assert_close(batched.words[1:2, :2], alone.words)


def test_max_pooling_cnn_reports_no_weights():
    model = CNNClassifier(CNNClassifierConfig(vocab=20, classes=3, pooling="max", embed_dim=8, channels=8)).eval()
    out = model(padded_batch())
    assert out.words is None and out.logits.shape == (3, 3)


def test_last_state_pooling_is_each_directions_final_state():
    torch.manual_seed(0)
    encoder = RNNEncoder(6, 5, cell="lstm", bidirectional=True)
    x = torch.randn(2, 4, 6)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    vector, weights = Pooling(10, "last", directions=2)(encoder(x, mask), mask)
    packed = nn.utils.rnn.pack_padded_sequence(x, torch.tensor([4, 2]), batch_first=True, enforce_sorted=False)
    _, (h, _) = encoder.rnn(packed)  # h (2 directions, B, 5): each direction's final state
    torch.testing.assert_close(vector, torch.cat([h[0], h[1]], -1))
    assert weights is None


def test_mean_and_max_pooling_read_real_positions_only():
    states = torch.tensor([[[1.0], [3.0], [100.0]], [[-2.0], [-4.0], [-3.0]]])  # (2, 3, 1)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert Pooling(1, "mean")(states, mask)[0].flatten().tolist() == [2.0, -3.0]
    assert Pooling(1, "max")(states, mask)[0].flatten().tolist() == [3.0, -2.0]


def han_batch():
    # document 0: sentences of 3 and 1 words and a padding sentence; document 1: one sentence of 2 words
    return torch.tensor([[[4, 5, 6], [7, 0, 0], [0, 0, 0]], [[8, 9, 0], [0, 0, 0], [0, 0, 0]]])


def test_han_sentence_weights_sum_to_one_over_real_sentences_only():
    torch.manual_seed(0)
    out = HAN(HANConfig(vocab=20, classes=3, embed_dim=8, hidden_dim=4)).eval()(han_batch())
    real_sentences = han_batch().ne(0).any(-1)  # (B, S)
    assert out.sentences[~real_sentences].eq(0).all()
    torch.testing.assert_close(out.sentences.sum(-1), torch.ones(2))
    assert (out.sentences[real_sentences] > 0).all()
    words = han_batch().ne(0)
    assert out.words[~words].eq(0).all()  # padded words and whole padded sentences
    torch.testing.assert_close(out.words.sum(-1)[real_sentences], torch.ones(int(real_sentences.sum())))


def test_han_predicts_the_same_with_or_without_padding():
    torch.manual_seed(0)
    model = HAN(HANConfig(vocab=20, classes=3, embed_dim=8, hidden_dim=4)).eval()
    batched = model(han_batch())
    alone = model(han_batch()[1:2, :1, :2])  # document 1 without any padding
    torch.testing.assert_close(batched.logits[1:2], alone.logits)
    torch.testing.assert_close(batched.sentences[1:2, :1], alone.sentences)


def test_match_matrix_is_one_over_one_plus_euclidean_distance_by_hand():
    x = torch.tensor([[[0.0, 0.0], [3.0, 4.0]]])  # (1, 2, 2)
    y = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]]])  # (1, 3, 2)
    expected = torch.tensor(
        [
            [1 / (1 + 0), 1 / (1 + 1), 1 / (1 + 3)],  # |(0,0)-(0,0)| = 0, |(0,0)-(1,0)| = 1, |(0,0)-(3,0)| = 3
            [1 / (1 + 5), 1 / (1 + math.sqrt(20)), 1 / (1 + 4)],  # 5, sqrt(4 + 16), 4
        ]
    )
    torch.testing.assert_close(match_matrix(x, y)[0], expected)
    masked = match_matrix(x, y, torch.tensor([[True, False]]), torch.tensor([[True, True, False]]))
    torch.testing.assert_close(masked[0], torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.0, 0.0]]))


def test_match_matrix_has_finite_gradients_at_zero_distance():
    x = torch.zeros(1, 2, 3, requires_grad=True)
    match_matrix(x, torch.zeros(1, 2, 3)).sum().backward()
    assert torch.isfinite(x.grad).all()


def abcnn(attention, **kw):
    torch.manual_seed(0)
    return ABCNN(ABCNNConfig(vocab=20, attention=attention, embed_dim=4, channels=6, max_len=6, **kw)).eval()


def pair_batch():
    return torch.tensor([[4, 5, 6], [7, 8, 0]]), torch.tensor([[4, 9, 0, 0], [8, 9, 10, 11]])


def test_abcnn1_matrix_is_the_match_of_the_word_embeddings():
    model = abcnn("before")
    first, second = pair_batch()
    out = model(first, second)
    expected = match_matrix(model.embed(first), model.embed(second), first.ne(0), second.ne(0))
    torch.testing.assert_close(out.matrix, expected)
    assert out.matrix[0, :, 2:].eq(0).all() and out.matrix[1, 2:].eq(0).all()  # padded words
    assert out.conv_matrix is None


@pytest.mark.parametrize("attention", ["after", "both"])
def test_abcnn2_matrix_is_zero_on_padded_windows_and_in_0_1_elsewhere(attention):
    first, second = pair_batch()
    out = abcnn(attention)(first, second)
    w = 3
    assert out.conv_matrix.shape == (2, 3 + w - 1, 4 + w - 1)
    # window k is real when it covers a real word: k < length + w - 1
    assert out.conv_matrix[0, :, 2 + w - 1 :].eq(0).all() and out.conv_matrix[1, 2 + w - 1 :].eq(0).all()
    real = out.conv_matrix[0, :, : 2 + w - 1]
    assert (real > 0).all() and (real <= 1).all()
    assert (out.matrix is None) == (attention == "after")


@pytest.mark.parametrize("attention", ["none", "before", "after", "both"])
def test_pair_models_predict_the_same_with_or_without_padding(attention):
    model = abcnn(attention)
    first, second = pair_batch()
    batched = model(first, second)
    alone = model(first[1:, :2], second[1:])
    torch.testing.assert_close(batched.logits[1:], alone.logits)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: RNNClassifierConfig(10, 3, pooling="sum"), "pooling='sum' is unknown; expected one of"),
        (lambda: RNNClassifierConfig(10, 3, pool_score="dotty"), "pool_score='dotty' is unknown; expected one of"),
        (
            lambda: RNNClassifierConfig(10, 3, hidden_dim=5, pool_heads=4),
            "pool_heads=4 must be >= 1 and divide the pooled states' dim 10",
        ),
        (lambda: RNNClassifierConfig(10, 3, cell="rnn"), "cell='rnn' is unknown; expected one of ['gru', 'lstm']"),
        (
            lambda: CNNClassifierConfig(10, 3, pooling="last"),
            "pooling='last' is unknown; expected one of ['attention', 'max']",
        ),
        (lambda: CNNClassifierConfig(10, 3, width=4), "width must be odd (the window centres on a word), got 4"),
        (
            lambda: CNNClassifierConfig(10, 3, pool_score="scaled_dot", hidden_dim=8, channels=32),
            "pool_score='scaled_dot' needs the query's 2 * hidden_dim = 16 to equal channels=32",
        ),
        (lambda: TransformerClassifierConfig(10, 3, d_model=10, heads=4), "heads=4 must divide d_model=10"),
        (lambda: HANConfig(10, 3, dropout=1.0), "dropout must be a number in [0, 1), got 1.0"),
        (lambda: ABCNNConfig(10, attention="inside"), "attention='inside' is unknown; expected one of"),
        (lambda: ABCNNConfig(10, max_len=0), "max_len must be an int in 1..2**62, got 0"),
        (lambda: HANConfig(10, 3, hidden_dim=2.5), "hidden_dim must be an int in 1..2**62, got 2.5 (float)"),
        (lambda: build_model("abcnn1", {"attention": "after"}, 10, 2), "attention is fixed by model='abcnn1'; drop it"),
        (lambda: build_model("lstm", {}, 10, 2), "model='lstm' is unknown; expected one of ['rnn', 'cnn'"),
        (lambda: build_model("rnn", {"window": 3}, 10, 2), "rnn config has unknown keys ['window']"),
    ],
)
def test_bad_configs_are_rejected_when_built(build, message):
    with pytest.raises(AttentionError) as err:
        build()
    assert message in str(err.value)


def test_bad_inputs_are_named():
    model = abcnn("before")
    with pytest.raises(AttentionError, match=r"first has shape \(1, 7\) but ABCNN-1's W0 and W1 cover max_len=6 words"):
        model(torch.ones(1, 7, dtype=torch.long) * 4, torch.tensor([[4]]))
    rnn = RNNClassifier(RNNClassifierConfig(vocab=20, classes=3, embed_dim=8, hidden_dim=8))
    with pytest.raises(AttentionError, match=r"ids of shape \(2, 2\) has rows \[1\] with no word; give every row one"):
        rnn(torch.tensor([[4, 5], [0, 0]]))
    with pytest.raises(
        AttentionError, match=r"mask of shape \(1, 3\) must mark a prefix of each row \(right padding\)"
    ):
        RNNEncoder(2, 2)(torch.zeros(1, 3, 2), torch.tensor([[True, False, True]]))
    han = HAN(HANConfig(vocab=20, classes=3, embed_dim=8, hidden_dim=4))
    with pytest.raises(AttentionError, match=r"ids has shape \(2, 3\) but expected \(B, S, T\) word ids"):
        han(torch.tensor([[4, 5, 6], [7, 8, 9]]))
