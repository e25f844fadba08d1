"""One BLAS thread for the command line, set before numpy is first imported.

numpy's wheels bundle OpenBLAS, which starts one spinning thread per core when
numpy is imported: about 70 ms of CPU time on a 2-core machine, for nothing, as
cdbdump never multiplies matrices. Only the command line imports this module
(first among cdbdump's, see cli.py); a library user's process is left alone,
and an OPENBLAS_NUM_THREADS already set is kept.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
