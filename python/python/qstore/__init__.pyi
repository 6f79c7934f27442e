"""Type stubs of qstore (see the docstrings in qstore/__init__.py)."""

import datetime
import os
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
    LeftOutWarning as LeftOutWarning,
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

Path = Union[str, "os.PathLike[str]"]

class CacheOptions(NamedTuple):
    dir: Optional[Path] = None
    redis_url: Optional[str] = None
    lock: Optional[Literal["redis", "file"]] = None
    lease_s: Optional[float] = None
    mode: Optional[Literal["off", "read", "write"]] = None

Cache = Union[CacheOptions, dict, None]

class Store:
    def __init__(
        self, path: Path, cache: Cache = None, compat: Optional[Literal["none", "qlib"]] = None
    ) -> None: ...
    @property
    def path(self) -> str: ...
    @property
    def compat(self) -> Literal["none", "qlib"]: ...
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


def dump_all(
    path: Path,
    *,
    mysql: Optional[str] = None,
    csv: Optional[Path] = None,
    password: Optional[str] = None,
    table: Optional[str] = None,
    symbol_column: Optional[str] = None,
    date_column: Optional[str] = None,
    fields: Union[str, Sequence[str], None] = None,
    symbols: Union[str, Sequence[str], None] = None,
    limit: Optional[int] = None,
    connections: Optional[int] = None,
    calendar_table: Optional[str] = None,
    calendar_column: Optional[str] = None,
    start: DateLike = None,
    end: DateLike = None,
    freq: str = "day",
    market: str = "all",
    max_date: DateLike = None,
    overwrite: bool = False,
    keep_unknown: bool = False,
    wait: bool = False,
    date_format: Optional[str] = None,
    exclude_fields: Union[str, Sequence[str], None] = None,
) -> dict: ...
def update(
    path: Path,
    *,
    mysql: Optional[str] = None,
    csv: Optional[Path] = None,
    password: Optional[str] = None,
    table: Optional[str] = None,
    symbol_column: Optional[str] = None,
    date_column: Optional[str] = None,
    fields: Union[str, Sequence[str], None] = None,
    symbols: Union[str, Sequence[str], None] = None,
    limit: Optional[int] = None,
    connections: Optional[int] = None,
    since: DateLike = None,
    end: DateLike = None,
    freq: str = "day",
    market: str = "all",
    max_date: DateLike = None,
    update_caches: bool = False,
    wait: bool = False,
    cache: Cache = None,
    date_format: Optional[str] = None,
    exclude_fields: Union[str, Sequence[str], None] = None,
) -> dict: ...
def update_caches(path: Path, cache: Cache = None) -> dict: ...
def warm(
    path: Path,
    exprs: Union[str, Sequence[str]],
    instruments: Instruments = "all",
    market: str = "all",
    freq: str = "day",
    cache: Cache = None,
) -> dict: ...

class KlineLoader:
    path: str
    ttl: float
    def __init__(
        self,
        store: Union[Path, Store],
        *,
        mysql: Optional[str] = None,
        csv: Optional[Path] = None,
        password: Optional[str] = None,
        table: Optional[str] = None,
        symbol_column: Optional[str] = None,
        date_column: Optional[str] = None,
        fields: Union[str, Sequence[str], None] = None,
        ttl: float = 86400,
        freq: str = "day",
        market: str = "all",
        max_date: DateLike = None,
        date_format: Optional[str] = None,
    ) -> None: ...
    def load_kline_data(
        self,
        symbol: str,
        start: DateLike = None,
        end: DateLike = None,
        use_cache: bool = True,
        force_refresh: bool = False,
    ): ...
    def get_features(
        self,
        symbol: str,
        start: DateLike = None,
        end: DateLike = None,
        feature_set: Union[str, Sequence[str]] = "technical",
    ): ...
    def get_cache_info(self) -> dict: ...
    def clear_cache(self, symbol: Optional[str] = None) -> None: ...
    def refresh(self, force: bool = False) -> Optional[dict]: ...
