"""The master: one event loop and what it is composed of (worker pool, dispatch, supervision,
operator controls, reload, timetable).
"""
