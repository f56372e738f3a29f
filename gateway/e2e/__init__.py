"""End-to-end encryption wired into the gateway: sender identities and prekeys (`keys`), the
envelope that carries a Signal-protocol message in a Submit payload (`envelope`), and sessions
with their hot cache and stored form (`sessions`). The primitives live in `gateway.crypto`."""
