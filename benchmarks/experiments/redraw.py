"""Redraw an experiment's picture from its JSON, after a change to the plotting layer; the numbers
and the verdict are not recomputed.

    python benchmarks/experiments/redraw.py benchmarks/experiments/bottleneck/bottleneck.json ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from attnkit.experiments import EXPERIMENTS
from attnkit.viz.static import curves


def main() -> None:
    for name in sys.argv[1:]:
        path = Path(name)
        doc = json.loads(path.read_text())
        experiment = EXPERIMENTS[doc["experiment"]]
        png = curves(experiment.figure(doc), path.with_suffix(".png"), title=f"{experiment.name}: {experiment.claim}")
        print(png)


if __name__ == "__main__":
    main()
