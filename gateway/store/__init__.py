"""LMDB storage: one environment, one named database per table, one writer task (group commit).

Everything here is either a read helper (cheap read transactions, any task) or a function that
runs inside the writer's transaction; nothing else may open a write transaction.
"""
