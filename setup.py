"""The optional C extension cdbdump._pagebatch (everything else is in pyproject.toml).

It needs a C compiler, Python's headers and zlib's (Debian: build-essential,
python3-dev, zlib1g-dev); LZO, snappy and zstd are compiled in when liblzo2-dev,
libsnappy-dev and libzstd-dev are installed. Without a compiler or zlib the build
goes on without it and cdbdump compresses through its Python path (same bytes,
slower).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CompileError, LinkError

# feature macro -> (header to include, library to link, a function to call)
_OPTIONAL = {
    "CDBDUMP_HAVE_LZO": ("lzo/lzo1x.h", "lzo2", "lzo_init()"),
    "CDBDUMP_HAVE_SNAPPY": ("snappy-c.h", "snappy", "snappy_max_compressed_length(1)"),
    "CDBDUMP_HAVE_ZSTD": ("zstd.h", "zstd", "ZSTD_compressBound(1)"),
}


class BuildPagebatch(build_ext):
    """Probe for liblzo2, libsnappy and libzstd; compile in the codecs whose library links."""

    def build_extension(self, ext: Extension) -> None:
        if ext.name == "cdbdump._pagebatch":
            for macro, (header, library, call) in _OPTIONAL.items():
                if self._links(header, library, call):
                    ext.define_macros.append((macro, "1"))
                    ext.libraries.append(library)
        super().build_extension(ext)

    def _links(self, header: str, library: str, call: str) -> bool:
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp, "probe.c")
            source.write_text(f"#include <{header}>\nint main(void) {{ {call}; return 0; }}\n")
            try:
                objects = self.compiler.compile([str(source)], output_dir=tmp)
                self.compiler.link_executable(objects, "probe", output_dir=tmp,
                                              libraries=[library])
            except (CompileError, LinkError):
                return False
        return True


setup(
    ext_modules=[
        Extension(
            "cdbdump._pagebatch",
            sources=["cdbdump/_pagebatch.c"],
            libraries=["z"],
            optional=True,  # no compiler or no zlib headers: the Python path
        )
    ],
    cmdclass={"build_ext": BuildPagebatch},
)
