"""Virtual keys: the record (``model``), hashing (``hashing``), pure decisions (``decide``), the config and
admin input form (``spec``) and the short-lived lookup cache in front of a key store (``cache``).

The stores themselves live in ``mux.stores.keys``.
"""
