"""Drawing pipelines: DOT text, gilfree's own SVG layout (no Graphviz needed) and themes."""
