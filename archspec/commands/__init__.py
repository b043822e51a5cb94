"""Click commands by area (reports, design, training); registered on the group in archspec.cli."""
