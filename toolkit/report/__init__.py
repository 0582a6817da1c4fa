"""Human-facing outputs: the stage table (markdown) and the trade-off plot (PNG)."""
