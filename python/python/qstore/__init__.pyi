"""Type stubs of qstore (see the docstrings in qstore/__init__.py)."""

import datetime
from typing import Literal, NamedTuple, Optional, Sequence, Tuple, Union, overload

import numpy as np
import numpy.typing as npt

from . import errors as errors
from .errors import (
    ConfigError as ConfigError,
    CorruptFile as CorruptFile,
    Error as Error,
    ExpressionError as ExpressionError,
    InvalidArgument as InvalidArgument,
    LockBusy as LockBusy,
    NotFound as NotFound,
)

__version__: str

DateLike = Union[str, datetime.date, datetime.datetime, np.datetime64, None]
Instruments = Union[str, Sequence[str]]

class FeatureArrays(NamedTuple):
    values: npt.NDArray[np.float32]
    codes: npt.NDArray[np.uint32]
    instruments: list[str]
    datetime: npt.NDArray[np.datetime64]
    columns: list[str]
    def rows_of(self, instrument: str) -> slice: ...

def feature_set(name: str) -> list[Tuple[str, str]]: ...

class Store:
    def __init__(self, path: Union[str, "os.PathLike[str]"]) -> None: ...
    @property
    def path(self) -> str: ...
    def calendar(self, freq: str = "day") -> npt.NDArray[np.datetime64]: ...
    def instruments(
        self, market: str = "all", start: DateLike = None, end: DateLike = None
    ) -> list[str]: ...
    def fields(self, instrument: str, freq: str = "day") -> list[str]: ...
    @overload
    def read(
        self,
        instrument: str,
        field: str,
        start: DateLike = None,
        end: DateLike = None,
        freq: str = "day",
        with_dates: Literal[False] = False,
    ) -> npt.NDArray[np.float32]: ...
    @overload
    def read(
        self,
        instrument: str,
        field: str,
        start: DateLike = None,
        end: DateLike = None,
        freq: str = "day",
        *,
        with_dates: Literal[True],
    ) -> Tuple[npt.NDArray[np.datetime64], npt.NDArray[np.float32]]: ...
    def read_rows(
        self, instrument: str, field: str, start: int, end: int, freq: str = "day"
    ) -> npt.NDArray[np.float32]: ...
    def panel(
        self,
        fields: Union[str, Sequence[str]],
        instruments: Instruments = "all",
        start: DateLike = None,
        end: DateLike = None,
        freq: str = "day",
        market: str = "all",
    ) -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.datetime64], list[str], list[str]]: ...
    def features(
        self,
        exprs: Union[str, Sequence[str]],
        instruments: Instruments = "all",
        start: DateLike = None,
        end: DateLike = None,
        freq: str = "day",
        market: str = "all",
        output: Literal["pandas", "numpy", "arrow", "polars"] = "pandas",
    ): ...
    def cache_stats(self) -> dict: ...
    def refresh(self) -> None: ...

class WindowSampler:
    window: int
    n_features: int
    instruments: list[str]
    def __init__(
        self,
        store: Store,
        features: Union[str, Sequence[str]],
        label: Optional[str] = None,
        window: int = 60,
        instruments: Instruments = "all",
        start: DateLike = None,
        end: DateLike = None,
        freq: str = "day",
        market: str = "all",
    ) -> None: ...
    def __len__(self) -> int: ...
    def index(self, i: int) -> Tuple[str, np.datetime64]: ...
    def __getitem__(
        self, i: int
    ) -> Union[npt.NDArray[np.float32], Tuple[npt.NDArray[np.float32], np.float32]]: ...

import os
