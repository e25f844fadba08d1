"""makedumpfile's flattened format (-F), from makedumpfile.h.

A 4096-byte start header, then records {offset, buf_size} (big-endian int64)
each followed by buf_size bytes that belong at offset of the real file, and an
end marker record (-1, -1).
"""

from __future__ import annotations

import struct

MAKEDUMPFILE_SIGNATURE = b"makedumpfile\0\0\0\0"  # SIG_LEN_MDF = 16
TYPE_FLAT_HEADER = 1
VERSION_FLAT_HEADER = 1
MAX_SIZE_MDF_HEADER = 4096
END_FLAG_FLAT_HEADER = -1

# struct makedumpfile_header: signature, type, version (big endian)
MAKEDUMPFILE_HEADER = struct.Struct(">16sqq")
# struct makedumpfile_data_header: offset, buf_size (big endian)
MAKEDUMPFILE_DATA_HEADER = struct.Struct(">qq")
