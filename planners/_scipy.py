"""The scipy the MILP builders use, behind typed signatures (scipy ships no type stubs).

Sparse matrices are seen through the ``Sparse`` protocol (the operations the builders apply);
HiGHS results are copied into ``HighsResult``. Each function calls scipy exactly as the
builders did before, so matrices and solver runs are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, cast, overload

import numpy as np
import scipy.sparse  # pyright: ignore[reportMissingTypeStubs]
from numpy.typing import NDArray

if TYPE_CHECKING:
    import cvxpy as cp

__all__: list[str] = []  # internal to planners.bands and planners.miqp

# scipy has no stubs: its modules are used through these untyped handles only, and every
# value they return is cast to ``Sparse`` or copied into ``HighsResult`` right here.
_sp: Any = scipy.sparse

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]


class Sparse(Protocol):
    """The part of a scipy sparse matrix the builders use."""

    @property
    def shape(self) -> tuple[int, int]: ...

    @property
    def indices(self) -> NDArray[np.int32]:
        """CSR column indices (after ``tocsr``)."""
        ...

    @property
    def indptr(self) -> NDArray[np.int32]:
        """CSR row pointers (after ``tocsr``)."""
        ...

    def tocsr(self) -> Sparse: ...

    def __neg__(self) -> Sparse: ...

    def __sub__(self, other: Sparse, /) -> Sparse: ...

    @overload
    def __matmul__(self, other: Sparse, /) -> Sparse: ...

    @overload
    def __matmul__(self, other: cp.Expression, /) -> cp.Expression: ...

    def __getitem__(self, key: slice | BoolArray, /) -> Sparse: ...


def _sparse(value: object) -> Sparse:
    return cast(Sparse, value)


def zeros(rows: int, cols: int) -> Sparse:
    """An all-zero (rows, cols) CSR matrix."""
    return _sparse(_sp.csr_matrix((rows, cols)))


def dense(values: FloatArray | Sequence[Sequence[float]]) -> Sparse:
    """A CSR matrix holding the non-zeros of a dense 2-D array."""
    return _sparse(_sp.csr_matrix(values))


def triplets(values: FloatArray, rows: IntArray, cols: IntArray, shape: tuple[int, int],
             ) -> Sparse:
    """A (rows, cols) CSR matrix with ``values[k]`` at ``(rows[k], cols[k])``."""
    return _sparse(_sp.csr_matrix((values, (rows, cols)), shape=shape))


def diags(values: FloatArray) -> Sparse:
    """The diagonal matrix of ``values``."""
    return _sparse(_sp.diags(values))


def identity(n: int) -> Sparse:
    """The n x n identity, CSR."""
    return _sparse(_sp.identity(n, format="csr"))


def hstack(blocks: Sequence[Sparse]) -> Sparse:
    """Blocks side by side (equal row counts)."""
    return _sparse(_sp.hstack(blocks))


def vstack(blocks: Sequence[Sparse]) -> Sparse:
    """Blocks stacked (equal column counts)."""
    return _sparse(_sp.vstack(blocks))


class HighsResult(NamedTuple):
    """What HiGHS returned, through ``scipy.optimize``.

    Attributes:
      status: scipy's code: 0 solved, 1 iteration or time limit, 2 infeasible, others failures.
      x: the solution (None when there is none).
      fun: its objective value (None when there is none).
      dual_bound: MILP only: the proven bound on the objective, None when unknown.
      lower_marginals: LP only: the reduced costs of the variables at their lower bounds.
    """

    status: int
    x: FloatArray | None
    fun: float | None
    dual_bound: float | None
    lower_marginals: FloatArray | None


def _float_or_none(value: object) -> float | None:
    return None if value is None else float(cast(float, value))


def _array_or_none(value: object) -> FloatArray | None:
    return None if value is None else np.asarray(value, dtype=np.float64)


def _optimize() -> Any:
    """scipy.optimize, imported on first use (it is slow to import and most planners never
    solve a MILP)."""
    import scipy.optimize  # pyright: ignore[reportMissingTypeStubs]

    return scipy.optimize


def milp(cost: FloatArray, A: Sparse, row_lower: FloatArray, row_upper: FloatArray,
         var_lower: FloatArray, var_upper: FloatArray, integrality: FloatArray,
         options: dict[str, float | bool]) -> HighsResult:
    """``scipy.optimize.milp``: min cost @ x s.t. row_lower <= A x <= row_upper, bounds and
    integrality on x."""
    opt = _optimize()
    res = opt.milp(cost, constraints=opt.LinearConstraint(A, row_lower, row_upper),
                   bounds=opt.Bounds(var_lower, var_upper), integrality=integrality,
                   options=options)
    return HighsResult(int(res.status), _array_or_none(res.x), _float_or_none(res.fun),
                       _float_or_none(getattr(res, "mip_dual_bound", None)), None)


def linprog(cost: FloatArray, A_ub: Sparse, b_ub: FloatArray, A_eq: Sparse, b_eq: FloatArray,
            bounds: FloatArray, options: dict[str, float]) -> HighsResult:
    """``scipy.optimize.linprog`` with HiGHS: min cost @ x s.t. A_ub x <= b_ub, A_eq x = b_eq,
    bounds[:, 0] <= x <= bounds[:, 1]."""
    res = _optimize().linprog(cost, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq, bounds=bounds,
                              method="highs", options=options)
    lower = getattr(res, "lower", None)
    marginals = None if lower is None else getattr(lower, "marginals", None)
    return HighsResult(int(res.status), _array_or_none(res.x), _float_or_none(res.fun), None,
                       _array_or_none(marginals))
