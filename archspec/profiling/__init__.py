"""Per-stage counts: analytic (from the Spec alone) and traced (from the compiled module)."""
