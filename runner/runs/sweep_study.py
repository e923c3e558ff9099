"""runs/_sweep/<recipe>-<key>/optuna.journal: the Optuna study of `recipe sweep --search optuna`, in Optuna's journal
file storage, which several processes (a SLURM array's tasks, on a shared filesystem) append to safely.

Every worker asks for trials until the study holds `total` of them; asking happens under a lock of our own, so the
study never holds more than `total`. A worker that was killed (a requeued array task) first takes back the trial it
left running: same parameters, same run (found by fingerprint), resumed from its checkpoint.
"""
from __future__ import annotations

import os
import socket
import zlib
from dataclasses import dataclass
from pathlib import Path

from runner.core.atomic import file_lock
from runner.recipe.sweep_grid import Space

STUDY_FILE = "optuna.journal"
WORKER, HOST, PID = "worker", "host", "pid"  # user attributes: the worker a trial belongs to, and its process


@dataclass(frozen=True)
class Trial:
    number: int
    overrides: tuple[str, ...]  # key=value, in the space's order

    @property
    def name(self) -> str:
        return " ".join(self.overrides)


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its per-trial lines are ours to print
    return optuna


def open_study(folder: Path, name: str, higher_is_better: bool, worker: str = ""):
    """The sweep's study, created on first use. Each worker samples with a seed of its own (its name and the
    study's size): workers sharing a seed, or a worker started again, would draw the same start-up trials."""
    optuna = _optuna()
    backend = optuna.storages.journal.JournalFileBackend(str(folder / STUDY_FILE))
    study = optuna.create_study(study_name=name, storage=optuna.storages.JournalStorage(backend),
                                direction="maximize" if higher_is_better else "minimize", load_if_exists=True)
    size = len(study.get_trials(deepcopy=False))
    study.sampler = optuna.samplers.TPESampler(seed=zlib.crc32(f"{worker}:{size}".encode()))
    return study


def _alive(attrs: dict) -> bool:
    """Whether the process that took a trial may still run it: only one on this host can be checked."""
    if attrs.get(HOST) != socket.gethostname() or not isinstance(attrs.get(PID), int):
        return True
    try:
        os.kill(attrs[PID], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _distributions(space: dict[str, Space]) -> dict:
    d = _optuna().distributions
    out = {}
    for key, s in space.items():
        if s.kind == "choice":
            out[key] = d.CategoricalDistribution(list(s.choices))
        elif s.kind == "int":
            out[key] = d.IntDistribution(int(s.low), int(s.high), log=s.log)
        else:
            out[key] = d.FloatDistribution(s.low, s.high, log=s.log)
    return out


def _trial(number: int, params: dict, space: dict[str, Space]) -> Trial:
    return Trial(number, tuple(f"{key}={s.format(params[key])}" for key, s in space.items()))


def next_trial(study, folder: Path, space: dict[str, Space], total: int, worker: str) -> Trial | None:
    """The trial this worker should run now: the one it left running (after a kill or a requeue) or one whose
    process on this host is gone, else a new one while the study holds fewer than `total`; None when there is nothing
    left to do."""
    optuna = _optuna()
    running = optuna.trial.TrialState.RUNNING
    with file_lock(folder / (STUDY_FILE + ".lock")):
        for frozen in study.get_trials(deepcopy=False, states=(running,)):
            if frozen.user_attrs.get(WORKER) == worker or not _alive(frozen.user_attrs):
                study._storage.set_trial_user_attr(frozen._trial_id, PID, os.getpid())
                study._storage.set_trial_user_attr(frozen._trial_id, HOST, socket.gethostname())
                return _trial(frozen.number, frozen.params, space)
        if len(study.get_trials(deepcopy=False)) >= total:
            return None
        trial = study.ask(_distributions(space))
        trial.set_user_attr(WORKER, worker)
        trial.set_user_attr(HOST, socket.gethostname())
        trial.set_user_attr(PID, os.getpid())
        return _trial(trial.number, trial.params, space)


def finish(study, trial: Trial, value: float | None) -> None:
    """Tell the study the trial's value (None: it failed)."""
    state = _optuna().trial.TrialState
    if value is None:
        study.tell(trial.number, state=state.FAIL)
    else:
        study.tell(trial.number, value)


def trials(study, space: dict[str, Space]) -> list[tuple[Trial, str]]:
    """Every trial of the study in order, with its state (COMPLETE, FAIL, RUNNING, ...)."""
    return [(_trial(t.number, t.params, space), t.state.name) for t in study.get_trials(deepcopy=False)
            if set(space) <= set(t.params)]


def unfinished(study, total: int) -> int:
    """How many of the study's `total` trials are still to run or running (0: the search is done)."""
    state = _optuna().trial.TrialState
    done = study.get_trials(deepcopy=False, states=(state.COMPLETE, state.FAIL, state.PRUNED))
    return max(total - len(done), 0)
