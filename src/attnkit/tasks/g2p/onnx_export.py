"""A G2P model exported to ONNX, and pronounced with ONNX Runtime: :func:`export`, :class:`OnnxG2P`.

Shape legend: B batch, S source positions (letters), L decoder layers, H encoder hidden dim per
direction, M memory dim, V phonemes.

The export is a folder of three files (:data:`FILES`):

- ``encoder.onnx``: ``src`` (B, S) letter ids padded with 0 -> the memory (``padding`` (B, S),
  True at padded letters; per member i ``states{i}`` (B, S, M) and, for a score with a key
  projection, ``keys{i}`` (B, S, M)) and the decoder's initial state (``h{i}`` (B, L, M); ``c{i}``
  for an LSTM; ``feed{i}`` (B, M) with input feeding). It computes what ``RNNSeq2Seq.encode`` and
  ``start`` compute, without packed sequences, which ONNX lacks (:class:`PaddedEncoder`).
- ``step.onnx``: the memory, the state and ``token`` (B,), the previous phoneme ids -> ``log_probs``
  (B, V) of the next phoneme (an ensemble's combined distribution), ``weights`` (B, S) (an
  ensemble's mean) and the next state, each named ``next_`` + its input's name. It is the model's
  own ``step``, traced.
- ``g2p.json``: the vocabularies, the length cap, the names above in order, and what was exported.

Batch and source length are dynamic in both graphs. Exported: :class:`~attnkit.models.RNNSeq2Seq`
(LSTM or GRU cells, any layers, one or two directions, input feeding or not) with an attention in
:data:`ATTENTIONS`, and ensembles of such models. :class:`OnnxG2P` decodes greedily as
:func:`~attnkit.models.greedy` does: the same batches sorted by length, per-word length limits and
end of output, so its phones are PyTorch's (``G2P.pronounce(words, beam=1)``).

To time it, as ``benchmarks/g2p/inference.py`` times ``G2P.pronounce``: ``OnnxG2P(folder,
threads=1)``, then the wall time of ``pronounce(words)`` over the test words.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ...data.vocab import BOS, EOS, PAD, SPECIALS, Vocab
from ...errors import AttentionError, check_int
from ...models.base import Memory
from ...models.decoding import Hypothesis, length_limit
from ...models.ensemble import Ensemble, EnsembleMemory, EnsembleState
from ...models.rnn import RNNSeq2Seq, RNNState
from .decode import sorted_batches
from .predictor import LengthLimitWarning, Pronunciation, checked, length_note

__all__ = [
    "ATTENTIONS",
    "FILES",
    "FORMAT",
    "OLDEST_OPSET",
    "OnnxG2P",
    "PaddedEncoder",
    "check_opset",
    "export",
    "require",
]

FILES = ("encoder.onnx", "step.onnx", "g2p.json")
FORMAT = "attnkit-g2p-onnx/1"  # g2p.json's "format": what OnnxG2P reads
ATTENTIONS = ("luong-dot", "luong-general", "luong-concat")  # RNNConfig.attention names that export
OLDEST_OPSET = 18  # torch.onnx's dynamo exporter converts to older opsets only as best it can
EXTRA = "pip install 'attnkit[onnx]'"


def require(*modules: str) -> None:
    """The packages ``modules`` of the ``onnx`` extra are there, or an error that says how to install them."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise AttentionError(f"ONNX export and inference need {' and '.join(missing)}: {EXTRA}")


def _members(model: nn.Module) -> list[nn.Module]:
    """The models ``model`` decodes with, each checked to export, or an error naming what does."""
    members = list(model.members) if isinstance(model, Ensemble) else [model]
    for i, m in enumerate(members):
        where = f"ensemble member {i}: " if isinstance(model, Ensemble) else ""
        if not isinstance(m, RNNSeq2Seq):
            raise AttentionError(
                f"{where}ONNX export takes RNN models (RNNSeq2Seq) and ensembles of them, got {type(m).__name__}"
            )
        if m.config.attention not in ATTENTIONS:
            raise AttentionError(
                f"{where}ONNX export takes the attentions {list(ATTENTIONS)}, got attention={m.config.attention!r}"
            )
    return members


def _rnn_pass(rnn: nn.RNNBase, x: Tensor, layer: int, reverse: bool) -> Tensor:
    """One layer and direction of ``rnn`` (an ``nn.LSTM`` / ``nn.GRU``) over ``x`` (B, S, In) from
    zero states -> its outputs (B, S, H); ``reverse`` takes that layer's backward weights (``x``
    already reversed)."""
    suffix = f"_l{layer}" + ("_reverse" if reverse else "")
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if rnn.bias else ("weight_ih", "weight_hh")
    params = [getattr(rnn, name + suffix) for name in names]
    h0 = x.new_zeros(1, x.shape[0], rnn.hidden_size)  # (1, B, H)
    if isinstance(rnn, nn.LSTM):
        return torch.lstm(x, (h0, h0), params, rnn.bias, 1, 0.0, False, False, True)[0]
    return torch.gru(x, h0, params, rnn.bias, 1, 0.0, False, False, True)[0]


class PaddedEncoder(nn.Module):
    """``model.encode(src)`` over a padded batch without packed sequences (ONNX has none): the same
    memory for every row, whatever the other rows' lengths.

    A row of n letters reads its first n positions (n = 0 reads one, as packing does). The forward
    direction reads the padded row as it is: positions past n do not reach the first n. The
    backward direction reads each row reversed within its own length (a gather), then reverses
    back. The final states are each direction's output after its last real position: position
    n - 1 forwards, 0 backwards. Padded positions of the states are 0, as ``pad_packed_sequence``
    leaves them."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, src: Tensor) -> Memory:
        model, rnn = self.model, self.model.encoder
        b, s = src.shape
        padding = src.eq(PAD)  # (B, S)
        lengths = (~padding).sum(-1, keepdim=True).clamp(min=1)  # (B, 1)
        pos = torch.arange(s, device=src.device)[None]  # (1, S)
        real = pos < lengths  # (B, S)
        flip = torch.where(real, lengths - 1 - pos, pos)  # (B, S): each row reversed within its length
        last = (lengths - 1)[..., None].expand(b, 1, rnn.hidden_size)  # (B, 1, H)
        x = model.src_embed(src)  # (B, S, E)
        for layer in range(rnn.num_layers):
            fwd = _rnn_pass(rnn, x, layer, reverse=False)  # (B, S, H)
            outputs, finals = [fwd], [fwd.gather(1, last).squeeze(1)]  # (B, H)
            if rnn.bidirectional:
                index = flip[..., None].expand(b, s, x.shape[-1])  # (B, S, In)
                backward = _rnn_pass(rnn, x.gather(1, index), layer, reverse=True)  # (B, S, H), reversed
                bwd = backward.gather(1, flip[..., None].expand(b, s, rnn.hidden_size))  # (B, S, H)
                outputs.append(bwd)
                finals.append(bwd[:, 0])  # (B, H)
            x = torch.cat(outputs, -1)  # (B, S, H x dirs)
        states = x.masked_fill(~real[..., None], 0.0)  # (B, S, M)
        context = torch.cat(finals, -1)  # (B, M): the top layer's final states
        keys = model.attention.project_keys(states)  # (B, S, M) or None
        return Memory(states, padding, context, keys)


class _Encoder(nn.Module):
    """``src`` -> the memory and the decoder's initial state, flat (the names of :func:`_layout`)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.encoders = nn.ModuleList(PaddedEncoder(m) for m in _members(model))

    def forward(self, src: Tensor) -> tuple[Tensor, ...]:
        memories = [e(src) for e in self.encoders]
        memory = EnsembleMemory(tuple(memories)) if isinstance(self.model, Ensemble) else memories[0]
        return (*_flat_memory(memories), *_flat_state(_member_states(self.model, self.model.start(memory))))


class _Step(nn.Module):
    """The model's ``step`` over flat inputs (memory, state, token) -> (log_probs, weights, *next state)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.members = _members(model)

    def forward(self, *flat: Tensor) -> tuple[Tensor, ...]:
        flat = list(flat)
        padding = flat.pop(0)  # (B, S)
        memories = []
        for m in self.members:
            states = flat.pop(0)  # (B, S, M)
            keys = flat.pop(0) if m.attention.score.project is not None else None  # (B, S, M)
            memories.append(Memory(states, padding, None, keys))
        hidden = []
        for m in self.members:
            h = flat.pop(0)  # (B, L, M)
            c = flat.pop(0) if m.config.cell == "lstm" else None  # (B, L, M)
            feed = flat.pop(0) if m.config.input_feed else None  # (B, M)
            hidden.append(RNNState(h, c, feed))
        (token,) = flat  # (B,)
        if isinstance(self.model, Ensemble):
            memory, state = EnsembleMemory(tuple(memories)), EnsembleState(tuple(hidden))
        else:
            memory, state = memories[0], hidden[0]
        logits, state, weights, _ = self.model.step(memory, state, token, 0, True)
        log_probs = logits.float().log_softmax(-1)  # (B, V): what greedy ranks
        return (log_probs, weights.float(), *_flat_state(_member_states(self.model, state)))


def _member_states(model: nn.Module, state) -> list[RNNState]:
    return list(state.members) if isinstance(model, Ensemble) else [state]


def _flat_memory(memories: list[Memory]) -> list[Tensor]:
    return [memories[0].padding] + [t for m in memories for t in (m.states, m.keys) if t is not None]


def _flat_state(states: list[RNNState]) -> list[Tensor]:
    return [t for s in states for t in s if t is not None]


def _layout(members: list[nn.Module]) -> tuple[list[str], list[str]]:
    """The names of the memory and of the state tensors, in the order the graphs take them."""
    memory, state = ["padding"], []
    for i, m in enumerate(members):
        memory += [f"states{i}"] + ([f"keys{i}"] if m.attention.score.project is not None else [])
        state += [f"h{i}"] + ([f"c{i}"] if m.config.cell == "lstm" else [])
        state += [f"feed{i}"] if m.config.input_feed else []
    return memory, state


def export(g2p, folder: str | os.PathLike, *, opset: int | None = None, force: bool = False) -> list[Path]:
    """Write ``g2p`` (a :class:`~attnkit.tasks.g2p.G2P`) to ``folder`` as the files of :data:`FILES`
    (see the module docstring); returns their paths. ``folder`` is made if it is not there; a file
    of those already in it is an error unless ``force``. ``opset``: the ONNX opset, from
    :data:`OLDEST_OPSET` to onnx's newest (default: the exporter's). Uses ``torch.onnx.export``
    with ``dynamo=True`` (the ``onnx`` extra: onnx and onnxscript)."""
    require("onnx", "onnxscript")
    folder = Path(folder)
    check_opset(opset)
    if folder.exists() and not folder.is_dir():
        raise AttentionError(f"{str(folder)!r} is a file; an ONNX export is a folder")
    paths = [folder / name for name in FILES]
    there = [str(p) for p in paths if p.exists()]
    if there and not force:
        raise AttentionError(f"{there[0]!r} already exists; pass force=True (--force) to overwrite it")
    members = _members(g2p.model)
    memory, state = _layout(members)
    model = g2p.model.eval()
    letters = len(g2p.letters) - len(SPECIALS)
    ids = [len(SPECIALS) + i % letters for i in range(4)]  # any letters, in a ragged batch
    src = torch.tensor([ids, ids[:2] + [PAD, PAD]], device=next(model.parameters()).device)  # (2, 4)
    batch, source = torch.export.Dim("batch"), torch.export.Dim("source")

    def dims(name: str) -> dict:  # the memory's tensors are (B, S, ...), the state's and token (B, ...)
        return {0: batch, 1: source} if name in memory else {0: batch}

    inputs = [*memory, *state, "token"]
    outputs = ["log_probs", "weights"] + [f"next_{n}" for n in state]
    with torch.no_grad():
        encoder = _onnx(_Encoder(model), (src,), ({0: batch, 1: source},), ["src"], memory + state, opset)
        token = torch.full((src.shape[0],), BOS, device=src.device)  # (B,)
        example = (*_Encoder(model)(src), token)
        step = _onnx(_Step(model), example, (tuple(dims(n) for n in inputs),), inputs, outputs, opset)
    doc = {
        "format": FORMAT,
        "letters": g2p.letters.symbols,
        "phonemes": g2p.phonemes.symbols,
        "cap": g2p.cap,
        "longest": g2p.longest,
        "memory": memory,
        "state": state,
        "opset": encoder.model.opset_imports[""],
        "source": g2p.path,
        "model": {
            "members": [{"kind": "rnn", "config": dataclasses.asdict(m.config)} for m in members],
            "combine": g2p.model.combine if isinstance(g2p.model, Ensemble) else None,
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    with_source = {"weights", *memory}  # the outputs whose dim 1 is S
    for program, path in ((encoder, paths[0]), (step, paths[1])):
        _save(program, path, with_source)
    paths[2].write_text(json.dumps(doc, indent=2) + "\n")
    return paths


def check_opset(opset, name: str = "opset") -> None:
    """``opset`` is None or an opset :func:`export` writes: from :data:`OLDEST_OPSET` to onnx's newest."""
    require("onnx")
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if opset is not None and not (type(opset) is int and OLDEST_OPSET <= opset <= newest):
        raise AttentionError(
            f"{name} must be an int from {OLDEST_OPSET} (the exporter's oldest) to {newest} (this onnx's newest), "
            f"got {opset!r}"
        )


def _onnx(module: nn.Module, args: tuple, shapes: tuple, inputs: list[str], outputs: list[str], opset: int | None):
    """``module`` at ``args`` as an ONNX program (dynamo), with ``shapes`` the dynamic dims of each input."""
    with warnings.catch_warnings(), _quiet("torch.onnx", "torch.export"):
        warnings.simplefilter("ignore")  # the exporter's own notes (deprecations inside torch.export)
        return torch.onnx.export(
            module.eval(),
            args,
            dynamo=True,
            dynamic_shapes=shapes,
            input_names=inputs,
            output_names=outputs,
            opset_version=opset,
            verbose=False,
        )


@contextlib.contextmanager
def _quiet(*names: str):
    """The loggers ``names`` at ERROR while the block runs: torch's exporter logs notes that are no
    user's concern (e.g. that torchvision's operators are not registered)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def _save(program, path: Path, with_source: set[str]) -> None:
    """Write ``program`` to ``path`` as one file. The exporter writes the example's source length
    into the shapes it records after an RNN (ONNX's LSTM / GRU), which ONNX Runtime then expects
    and warns about: the recorded shapes of the graph's values are dropped (the runtime infers
    them), and the outputs' batch dim, and S of ``with_source``, are named."""
    import onnx

    proto = program.model_proto
    del proto.graph.value_info[:]
    for value in proto.graph.output:
        dims = value.type.tensor_type.shape.dim
        dims[0].dim_param = "batch"
        if value.name.removeprefix("next_") in with_source:
            dims[1].dim_param = "source"
    onnx.save(proto, str(path))


class OnnxG2P:
    """A G2P model exported by :func:`export`, pronounced by ONNX Runtime with greedy decoding.

    ``folder``: the export's folder. ``threads``: ONNX Runtime's intra-op threads (default 1).
    :meth:`pronounce` gives what ``G2P.pronounce(words, beam=1)`` gives: the same phones (and
    attention weights, up to float rounding), cut at the same length limits.
    """

    def __init__(self, folder: str | os.PathLike, *, threads: int = 1):
        require("onnxruntime")
        import onnxruntime as ort

        check_int("threads", threads)
        folder = Path(folder)
        for name in FILES:
            if not (folder / name).is_file():
                raise AttentionError(f"{str(folder / name)!r} does not exist; {str(folder)!r} is not an ONNX export")
        try:
            doc = json.loads((folder / "g2p.json").read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            doc = None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise AttentionError(f"{str(folder / 'g2p.json')!r} is not the g2p.json of an export ({FORMAT})")
        self.folder, self.doc = folder, doc
        self.letters = Vocab(doc["letters"][len(SPECIALS) :], name="letters")
        self.phonemes = Vocab(doc["phonemes"][len(SPECIALS) :], name="phonemes")
        self.cap, self.longest = doc["cap"], doc["longest"]
        self.memory, self.state = doc["memory"], doc["state"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(folder / "encoder.onnx"), options, providers=providers)
        self.step = ort.InferenceSession(str(folder / "step.onnx"), options, providers=providers)

    def check_word(self, word: str) -> str:
        """``word`` as :meth:`pronounce` reads it (stripped, lower-cased), or an error naming it."""
        clean = word.strip().lower()
        if not clean:
            raise AttentionError(f"{word!r} is empty; give at least one letter")
        self.letters.encode(clean)  # names any character outside the alphabet
        return clean

    def pronounce(self, words: list[str], *, batch_size: int = 512) -> list[Pronunciation]:
        """Phonemes of each word (stripped, lower-cased), greedy (see :meth:`decode`), with its
        ``probability``. The first bad word is an error naming it (``words[i]``); an output cut at
        its length limit (``cut=True``), or a word longer than any the model was trained on, is a
        :class:`~attnkit.tasks.g2p.LengthLimitWarning` (:meth:`note`)."""
        clean = checked(words, self.check_word)
        results = []
        for i, (w, h) in enumerate(zip(clean, self.decode(clean, batch_size=batch_size))):
            results.append(Pronunciation(w, h.tokens, h.weights, not h.finished, probability=math.exp(h.score)))
            note = self.note(results[-1])
            if note is not None:
                warnings.warn(f"words[{i}] {note}", LengthLimitWarning, stacklevel=2)
        return results

    def note(self, result: Pronunciation) -> str | None:
        """What a warning says of ``result``, as :meth:`G2P.note <attnkit.tasks.g2p.G2P.note>` says it:
        its output was cut at its length limit, or its word is longer than any the model was trained
        on; None when neither."""
        return length_note(result, self.longest, self.cap)

    def decode(self, words: list[str], *, batch_size: int = 512) -> list[Hypothesis]:
        """Greedy hypotheses of ``words`` (lower-case, checked) in their order, decoded in batches of
        ``batch_size`` sorted by length, as :func:`~attnkit.tasks.g2p.decode_words` does with
        ``beam=1``: ``tokens`` the phonemes, ``score`` the summed log-probability, ``weights``
        (steps, letters)."""
        out: list[Hypothesis | None] = [None] * len(words)
        for idx, src in sorted_batches(words, self.letters, batch_size):
            for i, h in zip(idx, self._greedy(src.numpy())):  # src (B, S)
                out[i] = h._replace(tokens=tuple(self.phonemes.decode(h.tokens)))
        return out

    def _greedy(self, src: np.ndarray) -> list[Hypothesis]:
        """:func:`~attnkit.models.greedy` over ``src`` (B, S) with the exported graphs: a row stops at
        EOS or at its length limit, and the stopped rows leave the batch once a quarter of it has."""
        b, s = src.shape
        lengths = (src != PAD).sum(-1)  # (B,)
        limits = np.array([length_limit(int(n), self.cap) for n in lengths])  # (B,)
        steps = int(limits.max())
        encoded = self.encoder.run(None, {"src": src.astype(np.int64)})
        memory = dict(zip(self.memory, encoded))
        state = dict(zip(self.state, encoded[len(self.memory) :]))
        tokens = np.full((b, steps), PAD, dtype=np.int64)  # (B, T)
        weights = np.zeros((b, steps, s), dtype=np.float32)  # (B, T, S)
        scores = np.zeros(b, dtype=np.float32)  # (B,)
        rows = np.arange(b)  # the batch row of each row still decoding
        token = np.full(b, BOS, dtype=np.int64)
        done = np.zeros(b, dtype=bool)
        limit = limits
        for t in range(steps):
            log_probs, w, *after = self.step.run(None, {**memory, **state, "token": token})  # (N, V), (N, S)
            state = dict(zip(self.state, after))
            stopped = done | (t >= limit)  # (N,): ended, or at its length limit
            token = np.where(stopped, PAD, log_probs.argmax(-1))  # (N,)
            scores[rows] += np.where(stopped, 0.0, np.take_along_axis(log_probs, token[:, None], -1)[:, 0])
            tokens[rows, t] = token
            weights[rows, t] = w
            done |= token == EOS
            over = done | (t + 1 >= limit)
            if over.all():
                break
            if 4 * int(over.sum()) >= len(rows):  # drop the stopped rows from the batch
                keep = ~over
                rows, token, done, limit = rows[keep], token[keep], done[keep], limit[keep]
                memory = {k: v[keep] for k, v in memory.items()}
                state = {k: v[keep] for k, v in state.items()}
        out = []
        for i, (row, n_max) in enumerate(zip(tokens.tolist(), limits.tolist())):
            finished = EOS in row
            n = row.index(EOS) if finished else min(len(row), n_max)  # a cut row is padded after its limit
            w = torch.from_numpy(weights[i, : n + finished, : lengths[i]].copy())  # (steps, letters)
            out.append(Hypothesis(row[:n], float(scores[i]), w, finished))
        return out
