"""Link to the messaging network: the frame codec (frames.py) and the trio client shell (link.py).

This package owns only wire concerns; it must never touch the store, the outbox or message state.
"""
