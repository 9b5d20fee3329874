"""Research code on top of the library: CPU-sized studies of the recurrent-depth claims and the dense baseline
they (and ``bench/``) compare against.

The library (``megamythos/*.py``, ``megamythos.training``, ``megamythos.data``) never imports this package; it
imports the library like any user would.
"""
