"""Fuzzing cdbdump: mutated vmcores run through the CLI under a memory cap and a time limit."""
