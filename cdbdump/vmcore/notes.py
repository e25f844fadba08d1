"""ELF note iteration over a memoryview.

reference: makedumpfile offset_next_note (elf_info.c): name and desc are each
padded to 4 bytes after the 12-byte Elf64_Nhdr.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from cdbdump.errors import CorruptDumpError
from cdbdump.formats.elf import ELF64_NHDR, NOTE_ALIGN

__all__ = ("Note", "iter_notes")


def _align(n: int) -> int:
    return (n + NOTE_ALIGN - 1) & ~(NOTE_ALIGN - 1)


class Note(NamedTuple):
    """One ELF note; offsets are relative to the start of the note segment."""

    name: bytes  # without the terminating NUL
    n_type: int
    note_offset: int  # start of the Elf64_Nhdr
    desc_offset: int  # start of the descriptor
    desc_size: int

    def desc(self, notes: bytes | memoryview) -> bytes:
        return bytes(notes[self.desc_offset : self.desc_offset + self.desc_size])


def iter_notes(notes: bytes | memoryview, base_file_offset: int = 0) -> Iterator[Note]:
    """Yield every note in a PT_NOTE segment's bytes.

    Trailing zero padding (a zero n_namesz with nothing after it) ends the walk,
    as /proc/vmcore pads its merged note segment.
    """
    pos = 0
    size = len(notes)
    while pos + ELF64_NHDR.size <= size:
        namesz, descsz, n_type = ELF64_NHDR.unpack_from(notes, pos)
        if namesz == 0 and descsz == 0 and n_type == 0:
            return  # padding
        name_off = pos + ELF64_NHDR.size
        desc_off = name_off + _align(namesz)
        end = desc_off + _align(descsz)
        if desc_off + descsz > size:
            raise CorruptDumpError(
                f"note (namesz {namesz:#x}, descsz {descsz:#x}) runs past the end of the "
                f"PT_NOTE segment ({size:#x} bytes)",
                file_offset=base_file_offset + pos,
                field="ELF note",
            )
        name = bytes(notes[name_off : name_off + namesz]).rstrip(b"\0")
        yield Note(name, n_type, pos, desc_off, descsz)
        pos = end
