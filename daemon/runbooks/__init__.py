"""The executor of runbooks (DESIGN section 4): the run's context (:mod:`.context`), one
adapter per step kind (:mod:`.steps`), the executor itself (:mod:`.executor`).

Runbooks themselves are data (:mod:`policies.runbooks`); this room carries them out, every
step journaled in the ``runs`` and ``run_steps`` tables, pages in ``pages``.
"""
