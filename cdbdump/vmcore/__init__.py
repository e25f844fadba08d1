"""Input containers: ELF vmcores, kdump-compressed files, flattened streams."""
