"""Exact resume: everything needed to continue a run, in one file written atomically every epoch.

What the state holds is defined here and nowhere else: :class:`RunState` (the run's phase, the figures of
the phases already finished as :class:`FinishedPhase`, and either the training phase's :class:`PhaseState` or
the budget search's trials), each with ``to_dict``/``from_dict``; ``from_dict`` refuses damaged values with a
:class:`~sabr.errors.CheckpointError`.

The state is one ``resume.safetensors`` file in the run folder: its tensors (model, best model,
optimiser moments, RNG states) are safetensors tensors, and the rest (phase, epoch, SABR state,
scheduler, history rows, figures) is JSON kept in the file's metadata, where each tensor appears as
``{"__tensor__": key}``. Nothing is pickled. The file is replaced with :func:`os.replace`, so a run
killed at any moment (SIGKILL included) leaves either the previous epoch's state or the new one.
"""

from __future__ import annotations

import json
import numbers
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .budget import Trial
from .checkpoint import atomic_write, load_weights_into
from .errors import CheckpointError
from .train import FitState

FORMAT_VERSION = 1
"""The layout of ``resume.safetensors`` this sabr writes and reads (:func:`save_state`)."""

PHASES = ("base", "sabr", "budget")
"""Where a run can be resumed: in phase 1, in phase 2, or in the budget search after it."""


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor in a nested structure by a reference; tuples become ``{"__tuple__": [...]}``."""
    if isinstance(obj, torch.Tensor):
        key = prefix or "tensor"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {str(k): _flatten(v, f"{prefix}.{k}" if prefix else str(k), tensors) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            key = obj["__tensor__"]
            if not isinstance(key, str) or key not in tensors:
                raise KeyError(key)
            return tensors[key]
        if set(obj) == {"__tuple__"}:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


class _Damaged(ValueError):
    """A value of a resume state that is not what :class:`RunState` defines (said as a phrase)."""


_KINDS = {int: "an integer", str: "a string", dict: "a mapping", list: "a list", torch.Tensor: "a tensor",
          (numbers.Real,): "a number", (numbers.Real, str): "a number or a string"}


def _need(state: Any, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    """``state[key]``, refused unless ``state`` is a dict holding a ``kind`` there (``bool`` is no number)."""
    if not isinstance(state, dict):
        raise _Damaged(f"{what} is a {type(state).__name__}, not a mapping")
    if key not in state:
        raise _Damaged(f"{what} has no {key!r}")
    value = state[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise _Damaged(f"{what}'s {key!r} is {value!r:.40}, not {_KINDS.get(kind, 'a value of its type')}")
    return value


def _tensors(state: dict, key: str, what: str) -> dict[str, torch.Tensor]:
    """``state[key]``, refused unless it maps names to tensors (model weights)."""
    weights = _need(state, key, dict, what)
    if not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise _Damaged(f"{what}'s {key!r} holds values that are not tensors")
    return weights


_NUMBER = (numbers.Real,)


@dataclass
class PhaseState:
    """A training phase's full state after an epoch of :func:`sabr.train.fit` (phase 1 or 2).

    Attributes:
        epoch: the epochs finished (training continues after it).
        model: the live weights; optimizer, scheduler: their ``state_dict()``; generator: the batch-order
            generator's state; rng: :func:`rng_state`; rows: the history rows so far.
        best_accuracy, best_model: the best epoch's validation accuracy and weights, when the loop keeps one.
        sabr: phase 2: ``SABR.state_dict()``. budget: phase 2 under a budget: ``BudgetTracker.state_dict()``.
    """

    epoch: int
    model: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    generator: torch.Tensor
    rng: dict
    rows: list[dict]
    best_accuracy: float | None = None
    best_model: dict[str, torch.Tensor] | None = None
    sabr: dict | None = None
    budget: dict | None = None

    def to_dict(self) -> dict:
        """The state as :func:`save_state` writes it (the optional entries only when set)."""
        state = {k: getattr(self, k) for k in ("epoch", "model", "optimizer", "scheduler", "generator", "rng", "rows")}
        return state | {k: getattr(self, k) for k in ("best_accuracy", "best_model", "sabr", "budget")
                        if getattr(self, k) is not None}

    @classmethod
    def from_dict(cls, state: Any) -> "PhaseState":
        """The state :meth:`to_dict` wrote (extra keys are ignored); raises ``ValueError`` naming a damaged value."""
        what = "the training state"
        epoch = _need(state, "epoch", int, what)
        if epoch < 0:
            raise _Damaged(f"{what}'s 'epoch' is {epoch}, below 0")
        opt = _need(state, "optimizer", dict, what)
        _need(opt, "state", dict, "the optimizer state")
        best = _tensors(state, "best_model", what) if state.get("best_model") is not None else None
        return cls(epoch, _tensors(state, "model", what), opt, _need(state, "scheduler", dict, what),
                   _need(state, "generator", torch.Tensor, what), _need(state, "rng", dict, what),
                   _need(state, "rows", list, what),
                   _need(state, "best_accuracy", _NUMBER, what) if best is not None else None, best,
                   _need(state, "sabr", dict, what) if "sabr" in state else None,
                   _need(state, "budget", dict, what) if "budget" in state else None)


@dataclass
class FinishedPhase:
    """A finished phase's figures as a resume state keeps them (accuracies are fractions)."""

    val_accuracy: float
    test_accuracy: float
    rows: list[dict]
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: Any, name: str) -> "FinishedPhase":
        what = f"the finished phase {name}"
        return cls(_need(state, "val_accuracy", _NUMBER, what), _need(state, "test_accuracy", _NUMBER, what),
                   _need(state, "rows", list, what), _need(state, "extra", dict, what) if "extra" in state else {})


@dataclass
class RunState:
    """What ``resume.safetensors`` holds: the one definition of a run's resume state.

    Attributes:
        phase: where the run stopped: ``"base"`` (phase 1), ``"sabr"`` (phase 2) or ``"budget"`` (the search).
        done: the phases finished before it (``"base"``, then ``"sabr"``), by name.
        training: phase 1 or 2: the phase's :class:`PhaseState` after its last finished epoch.
        epoch: the budget search: phase 2's epoch count (in a training phase, ``training.epoch``).
        trials: the budget search: the factors tried so far on the SABR and the base model (``"sabr"``, ``"base"``).
        sabr_model, sabr_state: the budget search: phase 2's kept weights and ``SABR.state_dict()``.
        config_sha256: the hash of the ``config.yaml`` the state belongs to (set by :class:`~sabr.rundir.RunDir`).
    """

    phase: str
    done: dict[str, FinishedPhase]
    training: PhaseState | None = None
    epoch: int = 0
    trials: dict[str, list[Trial]] = field(default_factory=dict)
    sabr_model: dict[str, torch.Tensor] | None = None
    sabr_state: dict | None = None
    config_sha256: str | None = None

    def __post_init__(self) -> None:
        if self.training is not None:
            self.epoch = self.training.epoch

    def to_dict(self) -> dict:
        """The state as :func:`save_state` writes it: a training phase's entries at the top level beside
        ``phase`` and ``done`` (the layout of format 1)."""
        done = {k: v.to_dict() for k, v in self.done.items()}
        if self.training is not None:
            state = {**self.training.to_dict(), "phase": self.phase, "done": done}
        else:
            state = {"phase": self.phase, "epoch": self.epoch, "done": done,
                     "trials": {k: [asdict(t) for t in v] for k, v in self.trials.items()},
                     "sabr_model": self.sabr_model, "sabr_state": self.sabr_state}
        return state | ({"config_sha256": self.config_sha256} if self.config_sha256 is not None else {})

    @classmethod
    def from_dict(cls, state: Any, source: str = "the resume state") -> "RunState":
        """Read what :meth:`to_dict` wrote, refusing anything else.

        Raises:
            CheckpointError: a value is missing or of the wrong kind (named, with the fix), so a damaged
                file never reaches the training code.
        """
        try:
            return cls._parse(state)
        except (_Damaged, TypeError, KeyError) as exc:
            raise CheckpointError(f"{source} is damaged ({exc}); delete it to restart the run from the beginning "
                                  "(or start again with --overwrite).") from None

    @classmethod
    def _parse(cls, state: Any) -> "RunState":
        phase = _need(state, "phase", str, "the resume state")
        if phase not in PHASES:
            raise _Damaged(f"the resume state's phase {phase!r} is none of {', '.join(PHASES)}")
        needed = PHASES[:PHASES.index(phase)]
        saved = _need(state, "done", dict, "the resume state")
        done = {name: FinishedPhase.from_dict(_need(saved, name, dict, "'done'"), name) for name in needed}
        sha = state.get("config_sha256")
        if sha is not None and not isinstance(sha, str):
            raise _Damaged(f"the resume state's 'config_sha256' is {sha!r:.40}, not a str")
        if phase != "budget":
            training = PhaseState.from_dict(state)
            if phase == "sabr":
                _need(_need(state, "sabr", dict, "the phase 2 state"), "accuracy_threshold", (*_NUMBER, str),
                      "the SABR state")
            return cls(phase, done, training, config_sha256=sha)
        what = "the budget search's state"
        epoch = _need(state, "epoch", int, what)
        trials = {name: [Trial(**_trial(t)) for t in _need(_need(state, "trials", dict, what), name, list, "'trials'")]
                  for name in state["trials"]}
        return cls(phase, done, epoch=epoch, trials=trials, sabr_model=_tensors(state, "sabr_model", what),
                   sabr_state=_need(state, "sabr_state", dict, what), config_sha256=sha)


def _trial(t: Any) -> dict:
    """A saved :class:`~sabr.budget.Trial`'s fields, each checked to be a number."""
    return {k: _need(t, k, _NUMBER, "a budget trial") for k in ("factor", "sparsity", "val_accuracy")}


def rng_state() -> dict:
    """The Python, NumPy and torch (CPU and CUDA) global random states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned (also after a JSON round trip)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def optimizer_state(state: dict) -> dict:
    """An optimiser ``state_dict`` read back from JSON: its per-parameter keys are integers again."""
    return {**state, "state": {int(k): v for k, v in state["state"].items()}}


def training_state(fit: FitState, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                   generator: torch.Generator, sabr: dict | None = None, budget: dict | None = None) -> PhaseState:
    """A training phase's full state after an epoch of :func:`sabr.train.fit`, for :func:`save_state`.

    Holds the epoch, weights, optimiser, scheduler, batch-order generator, global RNG states and
    history rows; the best weights and accuracy when the loop keeps a best epoch; then phase 2's
    ``sabr`` (``reg.state_dict()``) and ``budget``. Tensors are the live ones: copy them to keep them.
    """
    keeps = fit.best_model is not None
    return PhaseState(fit.epoch, model.state_dict(), optimizer.state_dict(), scheduler.state_dict(),
                      generator.get_state(), rng_state(), fit.rows, fit.best_accuracy if keeps else None,
                      fit.best_model, sabr, budget)


def restore_training(state: PhaseState | dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler, generator: torch.Generator) -> FitState:
    """Load what :func:`training_state` saved (or its :meth:`~PhaseState.to_dict`) back into the phase's objects
    and the global RNGs.

    Returns the :class:`~sabr.train.FitState` to give :func:`sabr.train.fit` so that training continues
    after the saved epoch exactly as if it had not stopped.
    """
    state = as_phase_state(state)
    load_weights_into(model, state.model, source="the resume state")
    optimizer.load_state_dict(optimizer_state(state.optimizer))
    scheduler.load_state_dict(state.scheduler)
    generator.set_state(state.generator)
    set_rng_state(state.rng)
    best = state.best_model
    return FitState(epoch=state.epoch, rows=list(state.rows),
                    best_accuracy=-1.0 if state.best_accuracy is None else state.best_accuracy,
                    best_model=None if best is None else dict(best))


def as_phase_state(state: PhaseState | dict) -> PhaseState:
    """``state`` itself, or the :class:`PhaseState` a dict of :meth:`PhaseState.to_dict` (e.g. :func:`load_state`'s)
    holds; a damaged one is refused with a :class:`~sabr.errors.CheckpointError`."""
    if isinstance(state, PhaseState):
        return state
    try:
        return PhaseState.from_dict(state)
    except (_Damaged, TypeError) as exc:
        raise CheckpointError(f"the training state to resume from is damaged ({exc}); save it again from a "
                              "phase's on_epoch.") from None


def save_state(path: str | Path, state: RunState | PhaseState | dict) -> None:
    """Write a state (or any nested dict of JSON values and tensors) to ``path`` atomically (see the module
    docstring)."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    structure = _flatten(state if isinstance(state, dict) else state.to_dict(), "", tensors)
    meta = {"sabr_resume": json.dumps({"version": FORMAT_VERSION, "state": structure})}
    atomic_write({Path(path): save(tensors, metadata=meta)})


def load_state(path: str | Path) -> dict:
    """Read a state written by :func:`save_state` (safetensors only: nothing is unpickled) as a nested dict;
    :meth:`RunState.from_dict` reads a run's from it."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        payload = json.loads(meta["sabr_resume"])
    except (SafetensorError, OSError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(
            f"{path} is not a readable sabr resume state ({exc}); it is damaged or was not written by sabr. "
            "Delete it to restart the run from the beginning (or use --overwrite)."
        ) from exc
    damaged = (f"{path} is damaged ({{}}); delete it to restart the run from the beginning (or start again with "
               "--overwrite).")
    if not isinstance(payload, dict):
        raise CheckpointError(damaged.format(f"its metadata is a {type(payload).__name__}, not a mapping"))
    version = payload.get("version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path} has resume format {version}, this sabr reads {FORMAT_VERSION}; "
                              "finish the run with the sabr version that started it, or start a new run.")
    if not isinstance(payload.get("state"), dict):
        raise CheckpointError(damaged.format("its state is not a mapping"))
    try:
        return _unflatten(payload["state"], tensors)
    except KeyError as exc:
        raise CheckpointError(damaged.format(f"it refers to a tensor {exc} it does not hold")) from None
