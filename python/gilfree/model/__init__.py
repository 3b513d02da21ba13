"""The model: what a pipeline is (nodes, DualNode, @stateful, graph, pipelines, nesting,
plans, mapping, hashing). Pure Python: it knows nothing of threads or processes."""
