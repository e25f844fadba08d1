"""Fault injection for the reliability tests: a FUSE file with bad ranges, a gate, a shrink."""
