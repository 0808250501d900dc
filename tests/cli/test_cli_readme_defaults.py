"""The README and the docs state the defaults of ``attnkit train g2p``, ``--window`` and ``--beam``: they are the
configs' defaults (what ``--help`` prints), so the two cannot drift apart again."""

import dataclasses
import re
from pathlib import Path

from attnkit.cli import _parser
from attnkit.models import RNNConfig, TransformerConfig
from attnkit.tasks.g2p import G2P
from attnkit.train import TrainConfig

ROOT = Path(__file__).parents[2]
# the README and the docs pages it moved into (the G2P page holds the sentence of defaults)
README = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))])


def defaults(*classes) -> dict[str, list]:
    """Field name -> its defaults in ``classes`` (dropout has one per model)."""
    found: dict[str, list] = {}
    for cls in classes:
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                found.setdefault(f.name, []).append(f.default)
    return found


def stated(sentence: str) -> dict[str, str]:
    """``--flag value`` pairs inside the backtick spans of ``sentence``, as field name -> text."""
    spans = " ".join(re.findall(r"`([^`]*)`", sentence.replace("\n", " ")))
    return {flag.replace("-", "_"): value for flag, value in re.findall(r"--([a-z][a-z-]*) ([^\s`-][^\s`]*)", spans)}


def test_the_readme_defaults_of_train_g2p_are_the_configs_defaults():
    found = re.search(r"The defaults \(`attnkit train g2p --help`\):(.*?)\. ", README, flags=re.DOTALL)
    assert found, "the README's sentence of defaults is gone"
    claims = stated(found.group(1))
    assert len(claims) >= 10, claims
    truth = defaults(RNNConfig, TransformerConfig, TrainConfig)
    for name, text in claims.items():
        assert name in truth, f"--{name} is not a field of RNNConfig, TransformerConfig or TrainConfig"
        values = truth[name]
        assert type(values[0])(text) in values, f"README says --{name} {text}, the default is {values}"


def test_the_readme_defaults_of_window_and_beam():
    claims = dict(re.findall(r"`--([a-z-]+) [A-Z]+`, default (\d+)", README))
    assert claims.keys() >= {"window"}, claims
    assert int(claims["window"]) == RNNConfig.window
    sub = next(a for a in _parser()._actions if a.dest == "command")
    assert next(a.default for a in sub.choices["pronounce"]._actions if a.dest == "beam") is None  # the model's
    fast, accurate = re.search(
        r"`--beam K`; by default the model's: (\d+) for the fast model, (\d+) for the accurate one", README
    ).groups()
    assert (int(fast), int(accurate)) == (G2P.load("fast").beam, G2P.load("accurate").beam)


def test_no_other_sentence_calls_other_numbers_the_defaults():
    """The sentence this test replaced called FF 512 and lr 1e-3 the defaults (they are 1024 and 2e-3)."""
    truth = defaults(RNNConfig, TransformerConfig, TrainConfig)
    for sentence in re.split(r"(?<=[.)])\s", README.replace("\n", " ")):
        if "defaults of `attnkit train g2p`" in sentence and "except" not in sentence:
            assert f"FF {TransformerConfig.ff_dim}" in sentence or "FF " not in sentence, sentence
            assert "lr " not in sentence or f"lr {truth['lr'][0]:g}" in sentence, sentence


def argparse_defaults() -> dict[str, set[str]]:
    """``--flag`` -> the defaults it has in any command of ``attnkit`` (as text)."""
    found: dict[str, set[str]] = {}

    def walk(parser):
        for action in parser._actions:
            if getattr(action, "choices", None) and isinstance(action.choices, dict):
                for sub in action.choices.values():
                    walk(sub)
            for flag in action.option_strings:
                if flag.startswith("--") and action.default is not None:
                    found.setdefault(flag, set()).add(str(action.default))

    walk(_parser())
    return found


def test_every_stated_flag_default_is_argparse_default():
    """Every "`--flag X`, default Y" in the README or the docs: Y is that flag's default in the parser
    (in the command that has it), or the model config's default the flag sets."""
    claims = re.findall(r"`(--[a-z][a-z-]*) [A-Za-z_]+`, default `?([\w.]+)`?", README)
    assert claims, claims
    parsed = argparse_defaults()
    truth = defaults(RNNConfig, TransformerConfig, TrainConfig)
    for flag, value in claims:
        known = parsed.get(flag, set()) | {str(v) for v in truth.get(flag[2:].replace("-", "_"), [])}
        assert known, f"{flag} (stated default {value}) is no flag of attnkit"
        assert any(value == k or _same_number(value, k) for k in known), f"the docs say {flag} defaults to {value}, it is {known}"


def _same_number(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return False
