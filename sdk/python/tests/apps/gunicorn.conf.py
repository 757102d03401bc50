"""gunicorn settings of the test app: the Hotload link starts in each worker, after fork."""

workers = 3
worker_class = "sync"
timeout = 60
graceful_timeout = 5


def post_fork(server, worker):  # noqa: ANN001, ANN201 - gunicorn hook
    import hotload_app

    hotload_app.start_worker()
