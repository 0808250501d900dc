"""``attnkit train classify``, ``attnkit explain``, and ``attnkit eval`` of a classifier checkpoint."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..errors import AttentionError
from . import progress
from .options import (
    add_fields,
    add_run_flags,
    add_shared_fields,
    add_trust_flag,
    check_model_flags,
    check_new_file,
    check_pictures,
    count,
    given,
    train_config,
)
from .runs import RunPlan, train_run

__all__ = ["add_explain_parser", "add_train_parser", "evaluate", "explain", "train"]

SIZES = ("vocab", "classes")  # set by the task, not by flags
RUN_FIELDS = ("limit", "valid_limit", "min_count", "vectors", "freeze_vectors")


def _model_fields() -> dict[str, set[str]]:
    """Model name -> the config fields its flags may set."""
    from ..models import CLASSIFIERS

    return {
        name: {f.name for f in dataclasses.fields(spec.config)} - set(SIZES) - set(spec.fixed)
        for name, spec in CLASSIFIERS.items()
    }


def add_train_parser(sub) -> None:
    from ..models import CLASSIFIERS
    from ..tasks.classify import DEFAULT_MODEL
    from ..train import TrainConfig

    p = sub.add_parser(
        "classify",
        help="train a text classifier with attention on WordNet glosses",
        description=(
            "Train a classifier on WordNet (apt-get install wordnet-base). --task gloss: a definition -> its "
            "supersense (models rnn, cnn, transformer); document: definition and examples -> supersense (han, or "
            "rnn/cnn/transformer on the joined text); pair: (definition, example) -> match (bcnn, abcnn1, abcnn2, "
            "abcnn3). --pooling: last, mean, max or attention (rnn, transformer); attention or max (cnn)."
        ),
    )
    p.add_argument("--task", default="gloss", help="gloss (default), document or pair")
    defaults = ", ".join(f"{model} for {task}" for task, model in DEFAULT_MODEL.items())
    p.add_argument("--model", help=f"one of {', '.join(CLASSIFIERS)} (default {defaults})")
    p.add_argument("--out", help="run folder (default runs/classify-TASK-MODEL[-POOLING])")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument("--limit", type=count, help="train on the first N training examples only")
    p.add_argument("--valid-limit", type=count, help="validate on the first N validation examples only")
    p.add_argument("--min-count", type=count, help="occurrences a word needs for its own id (default 2)")
    p.add_argument(
        "--vectors", help="none (default) or minilm: start the word embeddings from pretrained vectors (extra bert)"
    )
    p.add_argument(
        "--freeze-vectors", action="store_true", default=None, help="keep the pretrained vectors fixed in training"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (epoch lines only)")
    add_run_flags(p)
    add_trust_flag(p)
    configs = {}
    for name, spec in CLASSIFIERS.items():
        configs.setdefault(spec.config, []).append(name)
    add_shared_fields(
        p.add_argument_group("model (fields of the model's config; the help names the models and their defaults)"),
        {", ".join(names): cls for cls, names in configs.items()},
        skip=SIZES + ("attention",),  # ABCNN's attention place is the model name
    )
    add_fields(p.add_argument_group("training (fields of TrainConfig)"), TrainConfig)


def train(args) -> int:
    return train_run(args, _plan)


def _plan(args) -> RunPlan:
    """What ``attnkit train classify`` does its own way (:func:`~attnkit.cli.runs.train_run` does the rest)."""
    from ..tasks.classify import DEFAULT_MODEL, TASKS, ClassifyDoc, ClassifyTask
    from ..train import TrainConfig

    fields = _model_fields()
    train_names = [f.name for f in dataclasses.fields(TrainConfig)]
    model_given = given(args, set().union(*fields.values()))
    changed = {**model_given, **given(args, train_names + list(RUN_FIELDS))}
    if args.model is not None or args.task != "gloss":
        changed.update(model=args.model, task=args.task)

    def resume(doc, out):
        return ClassifyTask(doc.task, doc.model, doc.model_config, **{k: getattr(doc, k) for k in RUN_FIELDS})

    def new(out, claim):
        if args.task not in TASKS:
            raise AttentionError(f"--task {args.task!r} is unknown; expected one of {list(TASKS)}")
        model = args.model or DEFAULT_MODEL[args.task]
        check_model_flags(model, fields, model_given)
        config = train_config(args, train_names)  # bad numbers before the data is read
        task = ClassifyTask(args.task, model, model_given, **given(args, RUN_FIELDS))
        if out is None:
            vectors = None if args.vectors == "none" else args.vectors
            parts = ("classify", args.task, model, model_given.get("pooling"), vectors)
            out = Path("runs") / "-".join(x for x in parts if x)
        claim(out)
        return task, config, out

    def summary(task) -> str:
        frozen = " (frozen)" if task.freeze_vectors else ""
        vectors = "" if task.vectors == "none" else f", {task.vectors} vectors{frozen}"
        return (
            f"classify {task.task} {task.model} {json.dumps(task.model_config)}{vectors}, "
            f"{len(task.train):,} training examples, {len(task.words):,} words"
        )

    return RunPlan(
        task="classify",
        changed=changed,
        read=ClassifyDoc.read,
        resume=resume,
        new=new,
        summary=summary,
        hint="attnkit eval {best}; attnkit explain {best} TEXT",
    )


def evaluate(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..tasks.classify import Classifier

    if args.beam is not None:
        raise AttentionError("--beam applies to G2P checkpoints only; drop it for a classifier")
    clf = Classifier.load(args.checkpoint, trust_unchecked=args.trust_unchecked)
    with progress.bar(f"classifying {args.split}") as bar:
        m = clf.evaluate(args.split, limit=args.limit, progress=bar, precision=args.precision)
    print(f"{clf.path}: {clf.name} on the {clf.task} task, {m['examples']:,} {args.split} examples")
    table = Table()
    table.add_column("metric")
    table.add_column("%", justify="right")
    for name in ("accuracy", "f1", "map"):
        if name in m:
            table.add_row(name, f"{m[name]:.2f}")
    Console().print(table)
    print(f"{clf.parameters():,} parameters; {m['examples_per_s']:.0f} examples/s")
    if args.json:
        doc = {**m, "parameters": clf.parameters(), "task": clf.task, "model": clf.name, "split": args.split}
        Path(args.json).write_text(json.dumps(doc, indent=2))
    return 0


def add_explain_parser(sub) -> None:
    p = sub.add_parser(
        "explain",
        help="the label a trained classifier gives a text, and a picture of the attention behind it",
        description=(
            "Print the predicted label and save the attention weights as a picture (needs matplotlib: "
            "pip install 'attnkit[viz]'). Gloss task: one text. Document task: one text, split into sentences "
            "at . ; ! ? and line ends. Pair task: two texts, the definition and the example."
        ),
    )
    p.add_argument("checkpoint", help="best.safetensors of attnkit train classify, or its run folder")
    p.add_argument("texts", nargs="+", metavar="TEXT")
    p.add_argument("--plot", default="explain.png", help="the picture, .png or .svg (default explain.png)")
    add_trust_flag(p)


def _windows(words: list[str], count: int, width: int) -> list[str]:
    """Labels of the wide convolution's ``count`` windows: window k covers words k - w + 1 .. k."""
    return [" ".join(words[max(0, k - width + 1) : k + 1]) for k in range(count)]


def explain(args) -> int:
    from .. import viz
    from ..tasks.classify import Classifier

    plot = check_new_file(args.plot, "--plot", (".png", ".svg"))
    check_pictures("explain")
    with progress.spinner("loading the classifier, classifying"):
        clf = Classifier.load(args.checkpoint, trust_unchecked=args.trust_unchecked)
        e = clf.explain(*args.texts)
    title = f"{clf.name}: {e.label} (p = {e.probability:.2f})"
    saved = []
    if e.sentences is not None:
        saved.append(viz.document(e.words, e.sentences, e.tokens, plot, title=title))
    elif e.words is not None:
        saved.append(viz.alignment(e.words[None], e.tokens, ["weight"], plot, title=title, xlabel="word", ylabel=""))
    elif e.matrix is not None or e.conv_matrix is not None:
        first, second = e.tokens
        if e.matrix is not None:
            saved.append(viz.alignment(e.matrix, second, first, plot, title=title, xlabel="second", ylabel="first"))
        if e.conv_matrix is not None:
            w = clf.model.config.width
            rows, cols = (_windows(t, n, w) for t, n in zip(e.tokens, e.conv_matrix.shape))
            path = plot if e.matrix is None else plot.with_name(f"{plot.stem}-conv{plot.suffix}")
            saved.append(
                viz.alignment(
                    e.conv_matrix,
                    cols,
                    rows,
                    path,
                    title=f"{clf.name}: after convolution",
                    xlabel="second",
                    ylabel="first",
                )
            )
    print(f"{e.label}  (p = {e.probability:.3f})")
    for path in saved:
        print(f"attention: {path}")
    if not saved:
        print(f"(model {clf.name} has no attention weights here: no picture)")
    return 0
