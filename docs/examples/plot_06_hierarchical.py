"""
Hierarchical attention: words, then sentences
=============================================

``HierarchicalAttention`` pools each sentence's words into a sentence vector by attention, then the
sentences into a document vector by a second attention. The picture shades each word by its word
weight and each sentence (first column) by its sentence weight.
"""

import torch

import attnkit
from attnkit.viz import static

torch.manual_seed(0)
sentences = [["attention", "is", "a", "weighted", "sum"], ["of", "values"], ["scores", "become", "weights"]]
S, T, D = len(sentences), max(map(len, sentences)), 16
words = torch.randn(1, S, T, D)  # (B, S, T, D): word vectors, padded
mask = torch.tensor([[[j < len(s) for j in range(T)] for s in sentences]])  # (B, S, T) True = real word
han = attnkit.HierarchicalAttention(D).eval()
result = han(words, mask)
assert torch.allclose(result.sentence_weights.sum(-1), torch.ones(1))
static.document(result.word_weights[0], result.sentence_weights[0], sentences, "document.png",
                title="word and sentence weights")
