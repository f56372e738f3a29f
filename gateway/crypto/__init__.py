"""End-to-end encryption: Signal's X3DH/PQXDH agreement and Double Ratchet, and sealing at rest."""
