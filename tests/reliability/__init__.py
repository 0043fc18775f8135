"""Reliability and security suites: each promise of the service is a test that measures a
figure (written to ``tests/reliability/out/<mode>/``) and asserts its target. Bounded in
``make test``; full with ``XPCS_IO_SOAK=1`` (``make soak``)."""
