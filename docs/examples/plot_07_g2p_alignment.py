"""
Seq2seq with attention: the shipped G2P model's alignment
=========================================================

The grapheme-to-phoneme model that ships with attnkit (an LSTM encoder-decoder with Luong
attention) pronounces a word; its attention over the letters at each output step is an alignment
of phonemes to letters, close to the diagonal.
"""

import attnkit
from attnkit.viz import static

(p,) = attnkit.G2P.load().pronounce(["attention"])
print(p.word, "->", " ".join(p.phones))
# weights: (len(phones) + 1, len(word)), the last row is the step that emits the end
static.alignment(p.weights, list(p.word), list(p.phones) + ["</s>"], "g2p_attention.png",
                 title=f"{p.word}: {' '.join(p.phones)}", xlabel="letters", ylabel="phonemes")
