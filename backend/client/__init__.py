"""The application's side of bagbot jobs: typed tasks, job handles, a client (async and sync).

Import it through `backend.jobs`, the one public module; these modules may move. Nothing in
`backend/workers` imports from here: the worker runs plain handlers from the registry.
"""
