"""Reports: terminal tables, markdown, LaTeX, CSV/JSON and plots."""
