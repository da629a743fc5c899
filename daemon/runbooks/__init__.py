"""The executor of runbooks (DESIGN section 4): the run's context (:mod:`.context`), one
adapter per step kind (:mod:`.steps`), the executor itself (:mod:`.executor`) and the
recovery of runs a crash cut short (:mod:`.recovery`).

Runbooks themselves are data (:mod:`policies.runbooks`); this room carries them out, every
step journaled in the ``runs`` and ``run_steps`` tables, pages in ``pages`` (delivered by
the paging room once it exists; reports of runs are :mod:`.reports`' business).
"""
