"""HyperNodes' ``hypernodes.integrations`` import paths, for code that uses them.

``from gilfree.integrations.daft import DaftEngine`` and
``from gilfree.integrations.dask import DaskEngine`` give gilfree's engines (neither
needs daft; DaskEngine needs dask).
"""
