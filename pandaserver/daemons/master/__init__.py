"""The master: one event loop (``loop.Master``) and the collaborators it wires, each owning
its state: the worker pool (``workers.WorkerPool`` over ``pool.Slot``), the dispatcher
(``dispatch.Dispatcher``, with the ``timetable`` and the pure ``schedule``), the operator
controls (``controls.Controls``, with ``crashloop``), the reload (``reload``) and the status
file (``statusfile``).
"""
