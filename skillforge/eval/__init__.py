"""How close is a splice to a full recompute, and how much faster is it: `skillforge eval` and `bench`.

  metrics.py  distribution metrics (cosine, KL, top-1, recovery, the two-answer split)
  cases.py    eval case files (JSON Lines), validated with file and line in errors
  arms.py     the full-prefill reference and the splice arm; EvalMemo, what runs may share
  run.py      the eval: every case, aggregates, the edit modes against the recompute oracle
  bench.py    time to first token by skill length, and its plot
Results are plain JSON documents; the CLI (cli/eval_cmd.py, cli/bench_cmd.py) renders them as text.
"""

from skillforge.eval.arms import EvalMemo
from skillforge.eval.bench import plot_bench, run_bench
from skillforge.eval.cases import Case, CaseError, load_cases, parse_cases
from skillforge.eval.run import BASELINES, run_eval

__all__ = ["BASELINES", "Case", "CaseError", "EvalMemo", "load_cases", "parse_cases", "plot_bench", "run_bench", "run_eval"]
