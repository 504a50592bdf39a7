"""Local development tooling: the local stack, Lambda emulators and the test driver.

Never imported by Lambda code (``functions/`` and ``payments_core``); it only drives them.
"""
