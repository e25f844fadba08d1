"""Output writers: the kdump-compressed format, per-page codecs, and output sinks."""

from __future__ import annotations
