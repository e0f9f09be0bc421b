"""One handler module per route family, as in distribution's registry/handlers."""
