"""Which stages an optimizer's traced update couples, and how: the dependency pass.

The update is traced on the whole model as one jaxpr over flat leaves,

    (grads..., state..., params...) -> (new params..., new state...)

Every input leaf gets a label, the set of stages it belongs to: a gradient or a parameter its
stage's; a state leaf the stages its own new value (and its initial value) depends on, found
as a fixpoint from the init's labels. Labels flow forward through the equations (an output
depends on every operand; conservative inside sub-programs). The update then falls in one of
three cases:

    leaf-local    every new parameter depends on its own stage only; every state leaf on at
                  most one stage. Unlabelled state (step counts, schedules) depends on no
                  leaf at all, so every stage keeps a copy and the copies evolve identically.
    sum-coupled   some scalars depend on several stages, but each is an `add` tree whose
                  operands depend on one stage each (global-norm clipping's sum of squares).
                  Each such scalar is *exchanged*: cut from its equation, it becomes an input
                  that depends on no stage, and each stage computes the sum of its own terms.
    coupled       anything else; `refusal` says which output leaves and where it started.

Indices: k is a stage, S the number of stages.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass

from jaxpipe._jax_compat import Atom, Jaxpr, JaxprEqn, Literal, Var, aval_of, traced_at

__all__ = ["Analysis", "Label", "analyse", "propagate"]

Label = frozenset[int]
NONE: Label = frozenset()


def label_of(deps: dict[Var, Label], atom: Atom) -> Label:
    return NONE if isinstance(atom, Literal) else deps.get(atom, NONE)


def propagate(jaxpr: Jaxpr, inputs: Sequence[Label], cut: Container[Var] = ()) -> dict[Var, Label]:
    """The label of every variable of `jaxpr`, given its inputs' labels; `cut` variables
    depend on no stage (their values come from outside)."""
    deps: dict[Var, Label] = dict(zip(jaxpr.invars, inputs, strict=True))
    deps.update((v, NONE) for v in jaxpr.constvars)
    for eqn in jaxpr.eqns:
        label = NONE.union(*(label_of(deps, x) for x in eqn.invars))
        for out in eqn.outvars:
            deps[out] = NONE if out in cut else label
    return deps


def sum_terms(jaxpr: Jaxpr, deps: dict[Var, Label]) -> dict[Var, list[Atom]]:
    """Scalars that are `add` trees of operands on at most one stage each: var -> its terms."""
    terms: dict[Var, list[Atom]] = {}
    for eqn in jaxpr.eqns:
        out = eqn.outvars[0]
        if eqn.primitive.name != "add" or aval_of(out).shape != ():
            continue
        parts: list[Atom] = []
        for x in eqn.invars:
            parts += terms[x] if isinstance(x, Var) and x in terms else [x]
        if all(len(label_of(deps, p)) <= 1 for p in parts):
            terms[out] = parts
    return terms


def _read_whole(jaxpr: Jaxpr, deps: dict[Var, Label], terms: dict[Var, list[Atom]]) -> list[Var]:
    """Sums over several stages that something other than a larger sum reads."""
    found: list[Var] = []

    def note(x: Atom) -> None:
        if isinstance(x, Var) and x in terms and len(deps[x]) > 1 and x not in found:
            found.append(x)

    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "add" and eqn.outvars[0] in terms:
            continue  # an inner node of a larger sum
        for x in eqn.invars:
            note(x)
    for x in jaxpr.outvars:
        note(x)
    return found


@dataclass(frozen=True)
class Analysis:
    """What `analyse` found.

    Attributes:
      state_labels: per state leaf, the stage that owns it, or none (every stage keeps a copy).
      exchanged: the scalars the stages exchange, in equation order.
      terms: per exchanged scalar, its terms (each on at most one stage).
      deps: every variable's label, with the exchanged scalars cut.
      refusal: why the update cannot run per stage (one line per leaf), or () if it can.
    """

    state_labels: tuple[Label, ...]
    exchanged: tuple[Var, ...]
    terms: dict[Var, list[Atom]]
    deps: dict[Var, Label]
    refusal: tuple[str, ...]


def analyse(jaxpr: Jaxpr, param_stages: Sequence[int], init_labels: Sequence[Label],
            param_names: Sequence[str], state_names: Sequence[str]) -> Analysis:
    """Labels, exchanged scalars and refusals of an update jaxpr (see the module docstring).

    Args:
      jaxpr: `(grads, state, params) -> (new params, new state)`, flat, params in one order.
      param_stages: the stage of each parameter leaf, in that order.
      init_labels: per state leaf, the stages its initial value depends on.
      param_names, state_names: the leaves' paths, for the refusal.
    """
    n = len(param_stages)
    own = [frozenset({k}) for k in param_stages]
    exchanged: list[Var] = []
    labels = list(init_labels)
    deps: dict[Var, Label] = {}
    terms: dict[Var, list[Atom]] = {}
    for _ in range(len(jaxpr.eqns) + 1):  # each round exchanges at least one more scalar
        labels = list(init_labels)  # afresh: a new cut can only shrink them
        while True:  # labels only grow, and are bounded by every stage
            deps = propagate(jaxpr, own + labels + own, exchanged)
            grown = [old | label_of(deps, out) for old, out in zip(labels, jaxpr.outvars[n:],
                                                                   strict=True)]
            if grown == labels:
                break
            labels = grown
        terms = sum_terms(jaxpr, deps)
        more = [v for v in _read_whole(jaxpr, deps, terms) if v not in exchanged]
        if not more:
            break
        exchanged += more
    refusal = [f"new {name} (stage {k}) depends on stages {_stages(label_of(deps, out))}"
               for name, k, out in zip(param_names, param_stages, jaxpr.outvars[:n], strict=True)
               if not label_of(deps, out) <= {k}]
    refusal += [f"optimizer state {name} depends on stages {_stages(label)}"
                for name, label in zip(state_names, labels, strict=True) if len(label) > 1]
    refusal += [f"a sum exchanged between stages lost its per-stage terms at {_where(jaxpr, v)}"
                for v in exchanged if v not in terms]
    if refusal:
        origin = first_coupling(jaxpr, deps, terms)
        if origin is not None:
            refusal.append(f"the coupling starts at `{origin.primitive.name}`, traced at "
                           f"{traced_at(origin)}")
    return Analysis(tuple(labels), tuple(exchanged), terms, deps, tuple(refusal))


def first_coupling(jaxpr: Jaxpr, deps: dict[Var, Label], terms: dict[Var, list[Atom]],
                   ) -> JaxprEqn | None:
    """The first equation that joins stages other than as a sum of per-stage terms."""
    for eqn in jaxpr.eqns:
        if any(len(label_of(deps, x)) > 1 for x in eqn.invars):
            continue  # joined already, upstream
        if any(len(deps.get(o, NONE)) > 1 and o not in terms for o in eqn.outvars):
            return eqn
    return None


def _where(jaxpr: Jaxpr, v: Var) -> str:
    eqn = next((e for e in jaxpr.eqns if v in e.outvars), None)
    return traced_at(eqn) if eqn is not None else str(v)


def _stages(label: Label) -> str:
    return ", ".join(map(str, sorted(label)))
