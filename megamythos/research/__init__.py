"""Research code on top of the library: CPU-sized studies of the recurrent-depth claims and the dense baseline
they (and ``bench/``) compare against.

The library (every other megamythos package) never imports this package; it
imports the library like any user would.
"""
