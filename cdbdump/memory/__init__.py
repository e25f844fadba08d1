"""Physical memory of the crashed machine, and x86_64 address translation."""
