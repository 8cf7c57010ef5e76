"""Training losses, one module per family."""
