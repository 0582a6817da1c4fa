"""Converters, each a plain function `<src>_to_<dst>` that knows nothing about the pipeline."""
