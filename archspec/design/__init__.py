"""Design tools: search and split specs for balanced local stages."""
