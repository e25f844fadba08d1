"""The whole exception hierarchy of cdbdump; nothing else defines exceptions.

Attributes are the contract: ``__str__`` is built from them, and tests assert them.
Messages read "what at where: detail", with hex numbers written ``0x...``.
"""

from __future__ import annotations

__all__ = (
    "AddressError",
    "BadVmcoreInfoValue",
    "CdbdumpError",
    "CorruptDumpError",
    "IncompleteDumpError",
    "InputError",
    "InputReadError",
    "Interrupted",
    "MissingVmcoreInfoKey",
    "NotInDumpError",
    "NotMappedError",
    "OutputError",
    "OutputNoSpaceError",
    "TruncatedDumpError",
    "UnknownFormatError",
    "UnsupportedError",
    "VmcoreInfoError",
)


class CdbdumpError(Exception):
    """Base of every error cdbdump raises on purpose."""


class InputError(CdbdumpError):
    """The input cannot be used."""


class UnknownFormatError(InputError):
    """The input starts with no signature cdbdump knows."""

    def __init__(self, path: str, first_bytes: bytes) -> None:
        self.path = path
        self.first_bytes = first_bytes
        super().__init__(
            f"{path}: unknown dump format at file offset 0x0: first bytes {first_bytes[:16].hex()}"
        )


class CorruptDumpError(InputError):
    """The input is structurally inconsistent."""

    def __init__(self, detail: str, *, file_offset: int | None = None, field: str = "") -> None:
        self.detail = detail
        self.file_offset = file_offset
        self.field = field
        where = f" at file offset {file_offset:#x}" if file_offset is not None else ""
        what = f"{field}{where}: " if field or where else ""
        super().__init__(f"{what}{detail}")


class TruncatedDumpError(CorruptDumpError):
    """A structure needs bytes past the end of the file."""

    def __init__(self, what: str, *, file_offset: int, needed: int, available: int) -> None:
        self.needed = needed
        self.available = available
        super().__init__(
            f"needs {needed:#x} bytes, file has {available:#x}",
            file_offset=file_offset,
            field=what,
        )


class VmcoreInfoError(InputError):
    """No VMCOREINFO note, or content that cannot be used."""


class MissingVmcoreInfoKey(VmcoreInfoError):
    """A VMCOREINFO key the operation needs is absent."""

    def __init__(self, key: str, purpose: str = "") -> None:
        self.key = key
        self.purpose = purpose
        why = f" (needed for {purpose})" if purpose else ""
        super().__init__(f"VMCOREINFO has no {key}{why}")


class BadVmcoreInfoValue(VmcoreInfoError):
    """A VMCOREINFO value does not parse or is absurd."""

    def __init__(self, key: str, raw: str, detail: str = "") -> None:
        self.key = key
        self.raw = raw
        more = f": {detail}" if detail else ""
        super().__init__(f"VMCOREINFO {key}={raw!r} is invalid{more}")


class AddressError(CdbdumpError):
    """A read or an address translation failed."""

    def __init__(self, message: str, *, address: int, space: str) -> None:
        self.address = address
        self.space = space
        super().__init__(message)


class InputReadError(AddressError):
    """Bytes of the input file that could not be read (EIO, or the file shrank).

    An AddressError in the "file" space, so every reader that degrades on an
    address it cannot read (page tables, mem_map windows, cosmetic fields)
    degrades on a bad input range too; the writer records such pages as lost.
    """

    def __init__(self, path: str, file_offset: int, size: int, detail: str) -> None:
        self.path = path
        self.file_offset = file_offset
        self.size = size
        self.detail = detail
        super().__init__(
            f"{path}: cannot read {size:#x} bytes at file offset {file_offset:#x}: {detail}",
            address=file_offset,
            space="file",
        )


class NotMappedError(AddressError):
    """The page tables say the virtual address is not mapped."""

    def __init__(
        self, vaddr: int, *, level: str, entry: int, entry_paddr: int | None = None
    ) -> None:
        self.level = level
        self.entry = entry
        self.entry_paddr = entry_paddr
        super().__init__(
            f"kernel address {vaddr:#x} is not mapped: {level} entry {entry:#x} is not present",
            address=vaddr,
            space="kvaddr",
        )


class NotInDumpError(AddressError):
    """A valid physical address whose data the dump does not hold."""

    def __init__(self, paddr: int, size: int = 1, detail: str = "not in the dump") -> None:
        self.size = size
        super().__init__(
            f"physical address {paddr:#x} (+{size:#x}) is {detail}", address=paddr, space="paddr"
        )


class NotPresentError(AddressError):
    """A physical address the dumped machine had no memory at (a hole of the 1st bitmap).

    Kept apart from NotInDumpError (memory the dump left out), as libkdumpfile
    keeps ADDRXLAT_ERR_NOTPRESENT apart from ADDRXLAT_ERR_NODATA.
    """

    def __init__(self, paddr: int, size: int = 1) -> None:
        self.size = size
        super().__init__(
            f"physical address {paddr:#x} (+{size:#x}) is not present in the dumped machine",
            address=paddr, space="paddr",
        )


class UnsupportedError(CdbdumpError):
    """Valid input that cdbdump does not handle."""

    def __init__(self, feature: str) -> None:
        self.feature = feature
        super().__init__(f"unsupported: {feature}")


class OutputError(CdbdumpError):
    """Invalid writer options or a failure of the output sink (OSError kept as __cause__)."""

    def __init__(self, message: str, *, path: str = "") -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class OutputNoSpaceError(OutputError):
    """The output ran out of room (ENOSPC, EDQUOT, EFBIG, or the -L size limit).

    ``file_offset + written`` is where the data actually on disk ends; the
    kdump writer uses it to keep only the page descriptors whose data made it.
    """

    def __init__(
        self, message: str, *, path: str = "", file_offset: int, requested: int, written: int
    ) -> None:
        self.file_offset = file_offset
        self.requested = requested
        self.written = written
        super().__init__(
            f"{message}: wrote {written:#x} of {requested:#x} bytes at file offset "
            f"{file_offset:#x}",
            path=path,
        )


class IncompleteDumpError(OutputError):
    """What was written is kept, with the header flagged INCOMPLETE.

    Why: the output filled up (``cause`` is the OutputNoSpaceError), a signal
    stopped the run (``signum``), or input pages could not be read (lost pages
    are excluded and listed in the report). reference: makedumpfile
    check_and_modify_kdump_headers ("This is an incomplete dumpfile, but might
    analyzable."), exit status 1; 128 + signum after a signal. ``report`` is
    the run's DumpReport, for the CLI to print.
    """

    def __init__(
        self,
        nr_pages_lost: int,
        reason: str | OutputNoSpaceError,
        report: object = None,
        *,
        cause: OutputNoSpaceError | None = None,
        signum: int | None = None,
    ) -> None:
        if isinstance(reason, OutputNoSpaceError):
            cause = cause or reason
            reason = str(reason)
        self.nr_pages_lost = nr_pages_lost
        self.reason = reason
        self.report = report
        self.cause = cause
        self.signum = signum
        super().__init__(
            f"{reason}; the dump is incomplete ({nr_pages_lost} dumpable pages lost) and its "
            "header is flagged DUMP_DH_COMPRESSED_INCOMPLETE"
        )


    @property
    def file_offset(self) -> int:
        """Where the full write started (OutputNoSpaceError's field), 0 without one."""
        return self.cause.file_offset if self.cause is not None else 0

    @property
    def written(self) -> int:
        """Bytes of that write that made it (OutputNoSpaceError's field), 0 without one."""
        return self.cause.written if self.cause is not None else 0


class Interrupted(BaseException):
    """A termination signal arrived (SIGTERM, SIGINT, SIGHUP).

    A BaseException, as KeyboardInterrupt is, so that no ``except CdbdumpError``
    or ``except OSError`` swallows it; the writer turns it into an incomplete
    dump and the CLI exits 128 + signum. Raised by cdbdump.interrupts handlers.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signum)
