"""`recipe gate NAME --baseline RUN`: the eval suite's gates turned into a verdict and an exit code for review.

Every gate is judged on a 95% interval, never the point estimate, in the conservative reading: a gate passes only
when the whole interval is on the allowed side, so a regression cannot pass because the eval set is small and noisy
(a small eval set fails more often; the fix is more items, not a looser gate):
  min: B        pass iff the lower bound of the run's value is >= B       (bootstrap over the run's items)
  max: B        pass iff the upper bound of the run's value is <= B
  max_drop: D   pass iff the paired interval of (run - baseline) stays above -D (a lower-is-better metric such as
                perplexity: stays below +D), over the items both answered
A gate that names a `candidate` (export:gguf-q4_k_m, merged...) checks that candidate of each run instead of its
fine-tuned model, and its max_drop is against the run's own fine-tuned model on the same items (no baseline run):
"what we ship is within D of what we trained".
A fail is "clear" when the whole interval is past the bound and "uncertain" when the interval straddles it.
The result is gate.json (GateResult) in each gated run, shown in its report.
"""
from __future__ import annotations

from runner.core import paths
from runner.core.errors import Problem, UserError
from runner.decide import items as it
from runner.decide.runs_select import Side
from runner.recipe import suites
from runner.runs.gate_result import GateResult, GateRow
from runner.runs.rundir import SAMPLES


def _floor_row(metric: str, rule: str, bound: float, items: it.Items, up: bool, sd, where: str,
               candidate: str | None) -> GateRow:
    value, ci, n = it.own_interval(metric, items)
    if ci is None:
        raise UserError(Problem(where, f"gates.{metric}", "the run has no per-item scores for it (no "
                                f"{SAMPLES.replace('*', 'finetuned-*')}); evaluate it again"))
    inside = ci[0] >= bound if rule == "min" else ci[1] <= bound
    beyond = ci[1] < bound if rule == "min" else ci[0] > bound
    side = "above" if rule == "min" else "below"
    why = (f"the whole interval is {side} {bound:g}" if inside else
           f"the whole interval is past {bound:g}" if beyond else f"the interval reaches past {bound:g}")
    why += "" if inside else " (clear)" if beyond else " (uncertain: more items would tell)"
    return GateRow(metric=metric, candidate=candidate, rule=rule, bound=bound, higher_is_better=up, value=value,
                   ci95=ci, n=n, seed_sd=sd, verdict="pass" if inside else "fail", why=why)


def _drop_row(metric: str, bound: float, mine: it.Items, base: it.Items, up: bool, sd, where: str,
              candidate: str | None) -> GateRow:
    ids, _ = it.shared_ids(base, mine)
    paired = it.paired(metric, base, mine, ids)
    if paired is None or paired["ci95"] is None:
        raise UserError(Problem(where, f"gates.{metric}", "the run and the baseline share no test items (another "
                                "test split or prompt format), so a drop cannot be measured; gate against a run of "
                                "the same split"))
    low, high = paired["ci95"]
    worst, best = (low, high) if up else (-high, -low)  # in "better is positive" terms
    inside, beyond = worst >= -bound, best < -bound
    word = "drop" if up else "rise"
    why = (f"the {word} stays within {bound:g} across the interval" if inside else
           f"the whole interval is a {word} beyond {bound:g} (clear)" if beyond else
           f"the interval reaches a {word} beyond {bound:g} (uncertain: more items would tell)")
    return GateRow(metric=metric, candidate=candidate, rule="max_drop", bound=bound, higher_is_better=up,
                   value=paired["delta"], **paired, seed_sd=sd, verdict="pass" if inside else "fail", why=why)


def _other(gate: suites.GateSpec) -> str | None:
    """The candidate a gate checks when it is not the fine-tuned model."""
    return gate.candidate if gate.candidate not in (None, it.SIDE) else None


def _candidate_runs(runs: list[it.RunData], label: str, metric: str, where: str) -> list[it.RunData]:
    """Each run's answers of the gate's candidate; exit 2 naming the eval to run when a run has none."""
    out = []
    for data in runs:
        if label not in data.summary.candidates or metric not in data.summary.candidates[label].metrics:
            run = data.run
            raise UserError(Problem(where, f"gates.{metric}.candidate", f"run {run.path.parent.name}@{run.run_id} "
                                    f"has no {label!r} among its eval candidates; add it to eval.candidates and "
                                    f"evaluate again: recipe eval {run.path.parent.name}@{run.run_id} "
                                    f"'eval.candidates=[base, finetuned, {label}]'"))
        out.append(it.load_run(data.run, side=label))
    return out


def _runs_data(side: Side) -> list[it.RunData]:
    return it.side_runs(side)


def judge(candidate: Side, baseline: Side | None) -> GateResult:
    """Judge the gates of the suite the candidate's runs were evaluated with."""
    runs = _runs_data(candidate)
    names = {(d.summary.suite, d.summary.suite_version) for d in runs}
    if len(names) > 1:
        raise UserError(Problem(candidate.label, "suite", "its runs were evaluated with different suites: " +
                                ", ".join(f"{s} {v}" for s, v in sorted(names))))
    (suite_name, version), = names
    suite = suites.load(suite_name, key="suite", where=paths.display(runs[0].run.summary_path))
    if not suite.gates:
        run = runs[0].run
        raise UserError(Problem(paths.display(suites.path_of(suite.name)), "gates", f"the suite declares no gates; "
                                f"{candidate.label} was evaluated with suite {suite.name!r}: gate it on a suite of "
                                "your workspace that declares some (e.g. `gates: {rouge_l: {max_drop: 0.02}}`), "
                                f"evaluated first: recipe eval {run.path.parent.name}@{run.run_id} eval.suite=NAME"))
    needs_baseline = [m for m, g in suite.gates.items() if g.max_drop is not None and not _other(g)]
    if needs_baseline and baseline is None:
        raise UserError(Problem(paths.display(suites.path_of(suite.name)), f"gates.{needs_baseline[0]}",
                                "max_drop gates compare against a baseline run; give --baseline RUN"))
    base_runs = _runs_data(baseline) if baseline is not None and needs_baseline else []
    where = paths.display(suites.path_of(suite.name))
    notes = [] if version == suite.version else [f"the runs were evaluated with {suite_name} {version}; the gates "
                                                 f"are those of {suite.version}"]
    rows = []
    for metric, gate in suite.gates.items():
        missing = [d.manifest.run_id for d in runs if metric not in d.metrics]
        if missing:
            raise UserError(Problem(", ".join(missing), f"gates.{metric}", f"not in the run's eval/summary.json; "
                                    f"evaluate it again with the suite {suite_name} (`recipe eval`)"))
        task, _ = it.task_and_key(metric)
        other = _other(gate)
        checked = _candidate_runs(runs, other, metric, where) if other else runs
        mine = it.side_items(checked, task)
        up = it.higher_is_better(metric, runs)
        sd, _ = it.seed_spread([d.metrics[metric].value for d in checked])
        for rule in ("min", "max"):
            if getattr(gate, rule) is not None:
                rows.append(_floor_row(metric, rule, getattr(gate, rule), mine, up, sd, where, other))
        if gate.max_drop is not None:
            against = it.side_items(runs if other else base_runs, task)
            rows.append(_drop_row(metric, gate.max_drop, mine, against, up, sd, where, other))
    return GateResult(suite=suite_name, suite_version=suite.version, runs=[d.manifest.run_id for d in runs],
                      baseline=[d.manifest.run_id for d in base_runs], passed=all(r.verdict == "pass" for r in rows),
                      rows=rows, notes=notes)


def format_table(result: GateResult) -> str:
    """The gate table for the terminal, then the verdict."""
    lines = [f"gates of suite {result.suite} {result.suite_version} on {', '.join(result.runs)}" +
             (f" (baseline {', '.join(result.baseline)})" if result.baseline else ""),
             f"{'metric':24} {'rule':16} {'value':>9} {'95% CI':>21} {'n':>5} {'seed sd':>8}  verdict"]
    for r in result.rows:
        rule = f"{r.rule} {r.bound:g}" + (" vs finetuned" if r.candidate and r.rule == "max_drop" else "")
        ci = "-" if r.ci95 is None else f"[{r.ci95[0]:+.4f}, {r.ci95[1]:+.4f}]"
        value = "-" if r.value is None else (f"{r.value:+.4f}" if r.rule == "max_drop" else f"{r.value:.4f}")
        sd = "-" if r.seed_sd is None else f"{r.seed_sd:.4f}"
        metric = f"{r.metric} [{r.candidate}]" if r.candidate else r.metric
        lines.append(f"{metric:24} {rule:16} {value:>9} {ci:>21} {r.n:>5} {sd:>8}  {r.verdict.upper()}: {r.why}")
    lines += [f"note: {n}" for n in result.notes]
    lines.append("PASS: every gate holds" if result.passed else
                 f"FAIL: {sum(r.verdict == 'fail' for r in result.rows)} of {len(result.rows)} gates fail")
    return "\n".join(lines) + "\n"


def record(candidate: Side, result: GateResult) -> None:
    """gate.json into each gated run (its report shows the verdict once written again)."""
    for run in candidate.runs:
        result.write(run.gate_path)
