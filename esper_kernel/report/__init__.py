"""Views of what a run did: ``esper report`` (HTML + PNG), ``esper compare`` (a table across runs).

The event reading (:mod:`~esper_kernel.report.events`) needs neither torch nor
matplotlib; the plots import matplotlib only when a report is drawn.
"""
