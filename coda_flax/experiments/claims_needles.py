"""Where the text runs' routers send the needles (`coda claims`, stage 3): the measured "why"
behind a text claim that does not hold (issue 18), e.g. a router that never learned to find the
needles against one that did.

For every routed text run given (seed 0, and other seeds where they are asked for), on its
validation examples, per encoder layer
(analysis.routing_report.batch_report -> routing_stats.evidence_share, the needles' token
offsets from the givers records):

    recall   the share of the needles' tokens that the layer routes
    share    the share of the routed tokens that are needle tokens
    chance   needle tokens / real tokens: the share of a router blind to content

Nothing here reads argv or gin.
"""

from __future__ import annotations

from typing import Callable, Mapping

from coda_flax.experiments.runner import Run, load
from coda_flax.tasks.metrics import as_text

Log = Callable[[str], None]


def needle_spans(records_file: str) -> dict[str, list[tuple[int, int]]]:
    """{record id: [(start, end) of each needle's tokens]} of a givers records file."""
    from coda_flax.datasets.records import read_jsonl
    return {r["id"]: list(zip(r["needle_starts"], r["needle_ends"]))
            for r in read_jsonl(records_file)}


def needle_routing(runs: Mapping[str, Run], root: str, records: Mapping[int, str],
                   max_examples: int | None, log: Log) -> dict[str, dict]:
    """{label: evidence_share's lists plus "n" and "k"} of every routed run in runs ({label:
    Run}, finished under root); records: {input length: givers records file}."""
    from coda_flax import tasks
    from coda_flax.analysis.routing_report import batch_report
    from coda_flax.analysis.routing_stats import is_routed
    from coda_flax.train import run as train_run

    out, inputs = {}, {}
    for g, run in runs.items():
        if not is_routed(run.model):
            continue
        lengths = dict(run.feature_lengths)
        n = lengths["inputs"]
        if (run.task, n) not in inputs:          # read and tokenised once per task and length
            examples = train_run.eval_examples(tasks.get_task_or_mixture(run.task), lengths,
                                               "validation", max_examples)
            spans = needle_spans(records[n])
            inputs[run.task, n] = (train_run.to_batch(examples, lengths)["encoder_input_tokens"],
                                   [spans[as_text(e["id"])] for e in examples])
        tokens, needles = inputs[run.task, n]
        out[g] = dict(batch_report(run.model, load(root, run)[1], tokens,
                                   spans=needles)["evidence"],
                      n=n, k=run.model.coda.k(n))
        log(f"  {g}: needle tokens routed per layer " + " / ".join(
            f"{100 * x:.0f}%" for x in out[g]["evidence_recall"]))
    return out


def needles_table(needles: Mapping[str, dict]) -> str:
    """Markdown: per routed run (needle_routing's), each layer's recall and share against
    chance."""
    lines = ["Needle tokens per encoder layer (validation; seed 0 unless named): the share of "
             "the needles' tokens routed, and the share of the routed tokens that are needle "
             "tokens (chance: a router blind to content).", "",
             "| run | k | needle tokens routed % (per layer) | routed tokens that are needles % | "
             "chance % |", "|---|---|---|---|---|"]
    pct = (lambda xs: " / ".join(f"{100 * x:.0f}" for x in xs))
    for g, v in needles.items():
        lines.append(f"| {g} | {v['k']} | {pct(v['evidence_recall'])} | "
                     f"{pct(v['routed_evidence_share'])} | {100 * v['chance']:.1f} |")
    return "\n".join(lines) + "\n"


__all__ = ["needle_spans", "needle_routing", "needles_table"]
