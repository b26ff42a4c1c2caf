"""Money and rate arithmetic, pure: integer nano-USD, calendar periods, budget admission and GCRA.

Nothing here does I/O; the stores (``mux.stores``) keep the state these functions decide on.
"""
