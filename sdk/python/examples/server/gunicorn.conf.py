"""gunicorn settings of the example: one Hotload connection per worker, opened after fork
(never in the master, which serves no requests)."""

import os

workers = int(os.environ.get("WEB_CONCURRENCY", "3"))
worker_class = "sync"
timeout = 30
graceful_timeout = 4
# No gunicornc control socket: nothing here uses it (gunicorn >= 25.1; older ones ignore it).
control_socket_disable = True


def post_fork(server, worker):  # noqa: ANN001, ANN201 - gunicorn hook
    import wsgi

    wsgi.start_worker()
