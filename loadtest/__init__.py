"""Load-testing tools for the gateway, including netsim, the simulated messaging network.

Nothing in here may be imported by the gateway's production paths except loadtest.netsim (for the in-process simulator).
"""
