"""On-disk layouts and magic numbers, declared once. No I/O and no policy here."""
