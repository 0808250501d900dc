"""The G2P training task the trainer runs (:class:`G2PTask`): the cmudict split or its phrases, the
loss (with a teacher's distributions when distilling, :func:`teacher_targets`) and validation."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...core.normalizers import reinforce_loss
from ...data import cmudict
from ...data.vocab import PAD, SPECIALS
from ...errors import AttentionError, check_int
from ...train import checkpoint, config_from_dict
from ...train.batching import token_batches
from . import lexicon as _lexicon
from .decode import decode_words
from .doc import MODELS, G2PDoc, _checkpoint_file, build_model
from .metrics import score
from .predictor import G2P

__all__ = ["TARGETS", "VALID_PHRASES", "G2PTask", "teacher_targets"]

VALID_PHRASES = 1000  # validation phrases of a phrase task without valid_limit
TARGETS = "teacher-targets.safetensors"  # a distilled run's teacher targets, in G2PTask.cache


def _check_limit(name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise AttentionError(f"{name} must be a whole number >= 1 (or None: all), got {value!r}")


@dataclass
class G2PTask:
    """The task the trainer runs: a model kind and its config, trained on the cmudict split.

    With ``phrases``: trained on that many training phrases and validated on ``valid_limit``
    validation phrases (default :data:`VALID_PHRASES`), :func:`attnkit.data.cmudict.phrases` of up to
    ``max_words`` words drawn with seed 0, over the phrase alphabets.

    With ``teacher`` (token-level knowledge distillation, e.g. of an ensemble packed by :func:`pack`
    into one model): the teacher's next-token distribution at every position of every training
    pair, teacher-forced on the pair's reference, is computed once (float32, kept in float16), and
    the loss is (1 - ``distil``) x the label-smoothed cross-entropy on the reference + ``distil`` x
    the cross-entropy on the teacher's distribution. With ``init``: training starts from that
    checkpoint's weights (the same model) instead of a fresh initialisation. A run's document names
    both files with the SHA-256 of their tensors, so that ``--resume`` refuses a file that changed.

    With ``train_lexicon``: trained on every pronunciation of that file (cmudict format, e.g. a
    teacher's outputs over more words than the dictionary has: sequence-level distillation) instead
    of the cmudict training split, validated on the validation split as always; a word of the
    validation or test split in it is an error. The run's document names it with its SHA-256.
    Computing the targets takes a forward pass of the teacher over every pair (about 5 minutes for
    an ensemble of 3 on one thread); with ``cache`` (``attnkit train g2p`` gives the run folder)
    they are kept in ``cache/TARGETS`` and a resumed run reads them back.
    """

    model: str = "rnn"
    model_config: dict | None = None  # fields of RNNConfig / TransformerConfig, vocab sizes aside
    limit: int | None = None  # train on N training words only, spread over the split (quick runs, tests)
    valid_limit: int | None = None  # validate on N validation words only, spread (phrases: on N phrases)
    phrases: int | None = None  # train on N phrases of training words instead of the words (long inputs)
    max_words: int = 8  # words per phrase, drawn uniformly from 1..max_words (with phrases only)
    teacher: str | None = None  # a G2P checkpoint (a packed ensemble too) whose distributions are learnt as well
    distil: float | None = None  # with teacher: the weight of the teacher's term in the loss, in (0, 1]; None: 0.5
    init: str | None = None  # start from this G2P checkpoint's weights (the same model), not a fresh initialisation
    cache: str | None = None  # a folder that keeps the teacher's targets (TARGETS) for a resumed run; not described
    trust_unchecked: bool = False  # load a teacher or init without a checksum (checkpoint.load); not described
    train_lexicon: str | None = None  # train on this lexicon file's pronunciations instead of the training split
    metric = "wer"  # early stopping and the best checkpoint follow validation WER (stress kept)
    higher_is_better = False

    def __post_init__(self):
        _check_limit("limit", self.limit)
        _check_limit("valid_limit", self.valid_limit)
        if self.phrases is not None:
            check_int("phrases", self.phrases)
        check_int("max_words", self.max_words)
        if self.phrases is not None and self.limit is not None:
            raise AttentionError(
                f"limit={self.limit} counts training words, phrases={self.phrases} training phrases; give one of them"
            )
        if self.phrases is None and self.max_words != 8:
            raise AttentionError(f"max_words={self.max_words} applies to phrases only; set phrases or leave max_words")
        if self.teacher is None and self.distil is not None:
            raise AttentionError(f"distil={self.distil} weighs a teacher's term; set teacher or leave distil")
        self.distil = 0.5 if self.distil is None and self.teacher is not None else self.distil
        bad = isinstance(self.distil, bool) or not isinstance(self.distil, (int, float)) or not 0 < self.distil <= 1
        if self.teacher is not None and bad:
            raise AttentionError(f"distil must be a number in (0, 1], got {self.distil!r}")
        self.model_config = dict(self.model_config or {})
        if self.model not in MODELS:
            raise AttentionError(f"model={self.model!r} is unknown; expected one of {sorted(MODELS)}")
        if self.init is not None:  # its model, with the fields given here (dropout, say) changed
            self.model_config = {**self._init_doc().model_config, **self.model_config}
        sizes = {"src_vocab": len(SPECIALS) + 1, "tgt_vocab": len(SPECIALS) + 1}  # bad fields fail before loading
        config_from_dict(MODELS[self.model][0], {**self.model_config, **sizes}, "model_config")
        if self.phrases is not None and self.train_lexicon is not None:
            raise AttentionError(
                "train_lexicon holds words; phrases are drawn from the training split: give one of them"
            )
        if self.phrases is None:
            self.letters, self.phonemes = cmudict.letters(), cmudict.phonemes()
            train = cmudict.spread(self._training_words(), self.limit)
            self.valid = cmudict.spread(cmudict.load("valid"), self.valid_limit)
        else:
            self.letters, self.phonemes = cmudict.phrase_letters(), cmudict.phrase_phonemes()
            train = cmudict.phrases("train", self.phrases, self.max_words)
            self.valid = cmudict.phrases("valid", self.valid_limit or VALID_PHRASES, self.max_words)
        self.pairs = [(self.letters.encode(e.word), self.phonemes.encode(p)) for e in train for p in e.pronunciations]
        self._init = None  # the weights init gives this task's model
        if self.init is not None:
            path, tensors, self._init_sha = self._source("init", self.init)
            model = checkpoint.build_loaded(self.build, tensors, path)  # names missing or misshapen weights
            self._init = model.state_dict()
        self.soft = None  # the teacher's distributions of all pairs' positions, (Σ len(target) + 1, V)
        if self.teacher is not None:
            path, _, self._teacher_sha = self._source("teacher", self.teacher)
            self.soft, self.soft_at = self._targets(G2P.load(path, trust_unchecked=self.trust_unchecked).model)

    def _training_words(self) -> list[cmudict.Entry]:
        """The cmudict training split, or the entries of ``train_lexicon`` (checked: no word of the
        validation or test split, every phoneme known)."""
        if self.train_lexicon is None:
            return cmudict.load("train")
        path = Path(self.train_lexicon)
        entries = _lexicon.entries(path)
        held = {e.word for split in ("valid", "test") for e in cmudict.load(split)}
        seen = sorted(e.word for e in entries if e.word in held)
        if seen:
            raise AttentionError(
                f"train_lexicon {str(path)!r} holds {len(seen):,} words of the validation or test split "
                f"(e.g. {seen[0]!r}); a model chosen or scored on them would have learnt them"
            )
        for e in entries:
            self.letters.encode(e.word)  # names a character outside the alphabet
            for p in e.pronunciations:
                self.phonemes.encode(p)
        self._lexicon_sha = hashlib.sha256(path.read_bytes()).hexdigest()
        return entries

    def _targets(self, teacher: nn.Module) -> tuple[Tensor, list[int]]:
        """:func:`teacher_targets` of the pairs, read from ``cache`` when it holds them for this
        teacher and these pairs, else computed (and written there)."""
        key = {"teacher": self._teacher_sha, "pairs": hashlib.sha256(json.dumps(self.pairs).encode()).hexdigest()}
        path = None if self.cache is None else Path(self.cache) / TARGETS
        if path is not None and path.is_file():
            try:
                tensors, meta = checkpoint.load(path)
                if meta.get("key") == key:
                    return tensors["soft"], tensors["offsets"].tolist()
            except (checkpoint.CheckpointError, KeyError):
                pass  # damaged: computed again
        soft, offsets = teacher_targets(teacher, self.pairs, self.letters, self.phonemes)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            checkpoint.save(path, {"soft": soft, "offsets": torch.tensor(offsets)}, {"key": key})
        return soft, offsets

    def _source(self, name: str, path: str) -> tuple[Path, dict[str, Tensor], str]:
        """The checkpoint file of ``path`` (``teacher`` or ``init``, named ``name`` in errors), its
        tensors and their SHA-256, checked to be a G2P model over this task's vocabularies."""
        path = _checkpoint_file(path)
        tensors, meta = checkpoint.load(path, trust_unchecked=self.trust_unchecked)
        doc = G2PDoc.read(meta, path)
        if list(doc.letters) != list(self.letters.symbols) or list(doc.phonemes) != list(self.phonemes.symbols):
            raise AttentionError(f"{name} {str(path)!r} was trained with other letters or phonemes than this task")
        return path, tensors, checkpoint.digest(tensors)

    def _init_doc(self) -> G2PDoc:
        """The task document of ``init``: one model of this task's kind (read before the data)."""
        path = _checkpoint_file(self.init)
        meta = checkpoint.read_meta(path)
        doc = G2PDoc.read(meta, path)
        if meta.get("ensemble") is not None or doc.model != self.model:
            found = "an ensemble" if meta.get("ensemble") is not None else f"a {doc.model!r} model"
            raise AttentionError(f"init {str(path)!r} is {found}; expected one {self.model!r} model to start from")
        return doc

    def build(self) -> nn.Module:
        model = build_model(self.model, self.model_config, len(self.letters), len(self.phonemes))
        if self._init is not None:
            model.load_state_dict(self._init)
        return model

    def describe(self) -> dict:
        """The checkpoint's task document; ``phrases`` and ``max_words`` only for a phrase model, so
        that word models write the same document as before."""
        phrases = {} if self.phrases is None else {"phrases": self.phrases, "max_words": self.max_words}
        return {
            "name": "g2p",
            "model": self.model,
            "model_config": self.model_config,
            "limit": self.limit,
            "valid_limit": self.valid_limit,
            **phrases,
            "letters": self.letters.symbols,
            "phonemes": self.phonemes.symbols,
            "longest": max(len(src) for src, _ in self.pairs),
            **self._sources(),
        }

    def _sources(self) -> dict:
        """The ``teacher`` and ``init`` entries of :meth:`describe`, for a run that has them."""
        out = {}
        if self.teacher is not None:
            out["teacher"] = {"path": str(self.teacher), "sha256": self._teacher_sha, "distil": self.distil}
        if self.init is not None:
            out["init"] = {"path": str(self.init), "sha256": self._init_sha}
        if self.train_lexicon is not None:
            out["train_lexicon"] = {"path": str(self.train_lexicon), "sha256": self._lexicon_sha}
        return out

    def batches(
        self, epoch: int, generator: torch.Generator, batch_size: int, batch_tokens: int | None = None
    ) -> list[tuple[Tensor, Tensor]]:
        """Shuffle, group similar lengths (sort within windows of 50 batches), shuffle the batches.
        With ``batch_tokens``: sort the shuffle by (source, target) length and cut batches whose
        padded tokens, rows x (longest source + longest target with its start or end mark), stay
        within it (:func:`attnkit.train.batching.token_batches`); then shuffle the batches."""
        perm = torch.randperm(len(self.pairs), generator=generator).tolist()
        groups = []
        if batch_tokens is not None:
            dims = lambda i: (len(self.pairs[i][0]), len(self.pairs[i][1]) + 1)
            groups = token_batches(perm, dims, lambda rows, longest: rows * sum(longest), batch_tokens)
        window = 50 * batch_size
        for start in range(0, len(perm) if batch_tokens is None else 0, window):
            chunk = sorted(perm[start : start + window], key=lambda i: (len(self.pairs[i][0]), len(self.pairs[i][1])))
            groups += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
        order = torch.randperm(len(groups), generator=generator).tolist()
        out = []
        for g in order:
            src = self.letters.pad([self.pairs[i][0] for i in groups[g]])
            tgt = self.phonemes.pad([self.pairs[i][1] for i in groups[g]], bos=True, eos=True)
            out.append((src, tgt) if self.soft is None else (src, tgt, self._soft(groups[g], tgt.shape[1] - 1)))
        return out

    def _soft(self, rows: list[int], length: int) -> Tensor:
        """The teacher's distributions of the pairs ``rows``, (B, length, V) float16, zero past each end."""
        out = self.soft.new_zeros(len(rows), length, self.soft.shape[1])
        for r, i in enumerate(rows):
            start, stop = self.soft_at[i], self.soft_at[i + 1]
            out[r, : stop - start] = self.soft[start:stop]
        return out

    def loss(self, model: nn.Module, batch, config) -> tuple[Tensor, int]:
        """Label-smoothed cross-entropy per target token (with a teacher, mixed with the
        cross-entropy on its distributions); with sampled hard attention, plus the REINFORCE loss
        whose reward for step t's draw is log p(y_t), baselined by the batch mean."""
        src, tgt, *soft = batch
        out = model(src, tgt[:, :-1])
        gold = tgt[:, 1:]  # (B, T)
        real = gold.ne(PAD)
        logits = out.logits.reshape(-1, out.logits.shape[-1])
        loss = F.cross_entropy(logits, gold.reshape(-1), ignore_index=PAD, label_smoothing=config.label_smoothing)
        if soft:
            logp = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)
            taught = -(soft[0].reshape(logp.shape).to(logp.dtype) * logp).sum(-1)
            loss = (1 - self.distil) * loss + self.distil * taught[real.reshape(-1)].mean()
        if out.log_prob is not None:
            ll = -F.cross_entropy(logits, gold.reshape(-1), reduction="none").view_as(gold)  # (B, T)
            baseline = (ll * real).sum(0) / real.sum(0).clamp(min=1)  # (T,) batch mean per step
            loss = loss + reinforce_loss(out.log_prob[real], ll[real], baseline.expand_as(ll)[real])
        return loss, int(real.sum())

    def weight(self, batch) -> int:
        """What :meth:`loss` averages over: the batch's target tokens (the end marks included)."""
        return int(batch[1][:, 1:].ne(PAD).sum())

    def validate(self, model: nn.Module) -> dict[str, float]:
        hyps = decode_words(model, [e.word for e in self.valid], self.letters, self.phonemes)
        return score([h.tokens for h in hyps], [e.pronunciations for e in self.valid])


def teacher_targets(teacher: nn.Module, pairs, letters, phonemes, batch_size: int = 512) -> tuple[Tensor, list[int]]:
    """``teacher``'s next-token distributions for every position of every (letters, phonemes)
    pair of ``pairs``, teacher-forced on the pair's phonemes: (Σ len(phonemes) + 1, V) float16
    (computed in float32), pair i's rows from offsets[i] to offsets[i + 1] (its end mark last)."""
    teacher.eval()
    offsets = [0]
    for _, target in pairs:
        offsets.append(offsets[-1] + len(target) + 1)
    soft = None
    order = sorted(range(len(pairs)), key=lambda i: (len(pairs[i][0]), len(pairs[i][1])))
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            src = letters.pad([pairs[i][0] for i in idx])
            tgt = phonemes.pad([pairs[i][1] for i in idx], bos=True, eos=True)
            probs = teacher(src, tgt[:, :-1]).logits.float().softmax(-1).half()
            if soft is None:
                soft = probs.new_empty(offsets[-1], probs.shape[-1])
            for r, i in enumerate(idx):
                soft[offsets[i] : offsets[i + 1]] = probs[r, : offsets[i + 1] - offsets[i]]
    return soft, offsets
