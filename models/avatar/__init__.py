"""Interactive talking-head avatar family (after ARIG)."""
