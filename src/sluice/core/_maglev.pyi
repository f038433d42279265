from typing import Any

import numpy.typing as npt

def populate(
    offsets: npt.NDArray[Any],
    skips: npt.NDArray[Any],
    weights: npt.NDArray[Any],
    size: int,
    out: npt.NDArray[Any],
    /,
) -> None: ...
