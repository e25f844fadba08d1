"""The with-statement for objects that have close(): one definition of the protocol."""

from __future__ import annotations

from types import TracebackType
from typing import Self

__all__ = ("Closing",)


class Closing:
    """``with obj:`` returns obj and calls ``obj.close()`` on the way out."""

    __slots__ = ()

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
