"""Meaning of the crashed kernel's memory: where struct page lives, and page classes."""
