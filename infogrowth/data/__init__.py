"""Data files the package reads at run time (class names)."""
