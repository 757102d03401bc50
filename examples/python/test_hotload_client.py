"""Unit tests of the Python client (stdlib unittest; no sidecar needed).

LoadTest covers the load path; ConnectionTest the v2 connection: hello, one connection
per worker, reconnects, fork. In ConnectionTest a small Unix socket server (FakeSidecar)
stands in for the sidecar, because these are unit tests of the client: it only accepts
connections, records the lines the client sends and sends the lines a test writes. The
real sidecar (worker accounting, readiness) is exercised elsewhere: the end-to-end test
against the real sidecar agent and Unix socket is examples/demo-app/tests/python_client.rs.

Run: python3 -m unittest discover -s examples/python
"""

import hashlib
import json
import os
import signal
import socket
import tempfile
import time
import unittest

from hotload_client import HotloadClient

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 5.0


def read(name):
    with open(os.path.join(HERE, "plugins", name), "rb") as f:
        return f.read()


def load_msg(directory, revision, source, digest=None, config=None, plugin="handler"):
    path = os.path.join(directory, revision)
    with open(path, "wb") as f:
        f.write(source)
    digest = digest or "sha256:" + hashlib.sha256(source).hexdigest()
    return {
        "type": "load",
        "plugin": plugin,
        "revision": revision,
        "path": path,
        "digest": digest,
        "config": config,
    }


class FakeSidecar:
    """Stands in for the sidecar in these client unit tests (see the module docstring)."""

    def __init__(self, path):
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(8)
        self.listener.settimeout(TIMEOUT)
        self.conns = []

    def accept(self):
        """The next connection a client opened (clients connect before it is accepted)."""
        sock, _ = self.listener.accept()
        conn = FakeConn(sock)
        self.conns.append(conn)
        return conn

    def close(self):
        for conn in self.conns:
            conn.close()
        self.listener.close()


class FakeConn:
    """One accepted connection: send lines to the client, read its lines."""

    def __init__(self, sock):
        sock.settimeout(TIMEOUT)
        self.sock = sock
        self.reader = sock.makefile("rb")

    def send(self, msg):
        self.sock.sendall((json.dumps(msg) + "\n").encode())

    def recv(self):
        """The client's next message, or None once it closed the connection."""
        line = self.reader.readline()
        return json.loads(line) if line else None

    def close(self):
        self.reader.close()
        self.sock.close()


class LoadTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.client = HotloadClient(os.path.join(self.dir.name, "unused.sock"))

    def tearDown(self):
        self.dir.cleanup()

    def msg(self, revision, source, digest=None, config=None):
        return load_msg(self.dir.name, revision, source, digest, config)

    def test_load_swap_and_state_handover(self):
        reply = self.client.load(self.msg("r1", read("greeter_v1.py")))
        self.assertEqual(reply["type"], "loaded", reply)
        self.assertEqual(self.client.call("handler", "a"), "v1:a:1")
        reply = self.client.load(
            self.msg("r2", read("greeter_v2.py"), config={"greeting": "hi"})
        )
        self.assertEqual(reply["health"], "self-check passed; state restored")
        self.assertEqual(self.client.call("handler", "b"), "v2:hi b:2")

    def test_failures_keep_the_old_module_and_say_why(self):
        self.client.load(self.msg("r1", read("greeter_v1.py")))
        cases = [
            (self.msg("r2", b"def handle(r)\n"), "import failed: SyntaxError"),
            (self.msg("r3", b"x = 1\n"), "ABI violation: module defines no handle()"),
            (
                self.msg(
                    "r4", b"def handle(r): return r\ndef self_check(): return False\n"
                ),
                "self_check returned False",
            ),
            (
                self.msg(
                    "r5",
                    b"def handle(r): return r\ndef self_check(): raise RuntimeError('db')\n",
                ),
                "self_check raised RuntimeError: db",
            ),
            (
                self.msg(
                    "r6",
                    b"def handle(r): return r\ndef restore_state(s): raise ValueError('v')\n",
                ),
                "restore_state raised ValueError: v",
            ),
            (
                self.msg("r7", read("greeter_v2.py"), digest="sha256:" + "0" * 64),
                "digest mismatch",
            ),
        ]
        for msg, want in cases:
            reply = self.client.load(msg)
            self.assertEqual(reply["type"], "failed", reply)
            self.assertIn(want, reply["reason"])
            self.assertEqual(self.client.serving("handler"), "r1")
        self.assertEqual(self.client.call("handler", "a"), "v1:a:1")

    def test_repeated_load_of_the_serving_revision_is_a_no_op(self):
        msg = self.msg("r1", read("greeter_v1.py"))
        self.client.load(msg)
        self.client.call("handler", "a")
        self.assertEqual(self.client.load(msg)["health"], "already serving")
        self.assertEqual(self.client.call("handler", "b"), "v1:b:2")

    def test_unload_stops_serving_and_is_answered_even_when_nothing_ran(self):
        self.client.load(self.msg("r1", read("greeter_v1.py")))
        self.assertEqual(
            self.client.unload("handler"), {"type": "unloaded", "plugin": "handler"}
        )
        self.assertIsNone(self.client.serving("handler"))
        with self.assertRaises(LookupError):
            self.client.call("handler", "a")
        self.assertEqual(self.client.unload("handler")["type"], "unloaded")


class ConnectionTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.socket = os.path.join(self.dir.name, "app.sock")
        self.sidecar = FakeSidecar(self.socket)
        self.clients = []

    def tearDown(self):
        for client in self.clients:
            client.stop()
        self.sidecar.close()
        self.dir.cleanup()

    def client(self, **kwargs):
        client = HotloadClient(self.socket, **kwargs)
        self.clients.append(client)
        return client.start()

    def msg(self, revision, source, **kwargs):
        return load_msg(self.dir.name, revision, source, **kwargs)

    def test_hello_is_the_first_line_and_names_the_worker(self):
        self.client(app="checkout", worker="w-7")
        conn = self.sidecar.accept()
        # The sidecar sends the current set at once, without waiting for the hello.
        conn.send(self.msg("r1", read("greeter_v1.py")))
        self.assertEqual(
            conn.recv(),
            {"type": "hello", "app": "checkout", "worker": "w-7", "protocol": 2},
        )
        self.assertEqual(conn.recv()["type"], "loaded")

    def test_the_default_worker_is_the_process_id(self):
        self.client()
        hello = self.sidecar.accept().recv()
        self.assertEqual(hello["worker"], str(os.getpid()))
        self.assertEqual(hello["protocol"], 2)

    def test_two_workers_each_have_their_own_connection_and_answer_their_own_loads(
        self,
    ):
        a, b = self.client(worker="4711"), self.client(worker="4712")
        conns = {}
        for _ in range(2):
            conn = self.sidecar.accept()
            conns[conn.recv()["worker"]] = conn
        self.assertEqual(sorted(conns), ["4711", "4712"])

        current = self.msg("r1", read("greeter_v1.py"))
        for conn in conns.values():  # the current set, to each connection
            conn.send(current)
        for conn in conns.values():
            reply = conn.recv()
            self.assertEqual((reply["type"], reply["revision"]), ("loaded", "r1"))
        self.assertEqual((a.serving("handler"), b.serving("handler")), ("r1", "r1"))

        # A load only 4712 is sent is answered by 4712 alone, on its connection.
        bad = b"def handle(r): return r\ndef self_check(): return False\n"
        conns["4712"].send(self.msg("r2", bad))
        reply = conns["4712"].recv()
        self.assertEqual((reply["type"], reply["revision"]), ("failed", "r2"))
        self.assertEqual(reply["reason"], "self_check returned False")
        conns["4711"].send(self.msg("r3", read("greeter_v2.py")))
        reply = conns["4711"].recv()  # the next line on 4711 answers r3: nothing of r2
        self.assertEqual((reply["type"], reply["revision"]), ("loaded", "r3"))
        self.assertEqual((a.serving("handler"), b.serving("handler")), ("r3", "r1"))
        self.assertEqual(a.call("handler", "x"), "v2:hello x:1")
        self.assertEqual(b.call("handler", "x"), "v1:x:1")

    def test_reconnect_resends_hello_and_the_set_is_answered_again(self):
        client = self.client(worker="4711")
        first = self.sidecar.accept()
        self.assertEqual(first.recv()["worker"], "4711")
        load = self.msg("r1", read("greeter_v1.py"))
        first.send(load)
        self.assertEqual(first.recv()["type"], "loaded")

        first.close()  # a sidecar restart
        second = self.sidecar.accept()
        self.assertEqual(
            second.recv(),
            {"type": "hello", "app": "python-example", "worker": "4711", "protocol": 2},
        )
        second.send(load)  # the set again: answered without reloading
        reply = second.recv()
        self.assertEqual(
            (reply["type"], reply["health"]), ("loaded", "already serving")
        )
        self.assertEqual(client.serving("handler"), "r1")

    def test_stop_closes_the_connection(self):
        client = self.client(worker="4711")
        conn = self.sidecar.accept()
        self.assertEqual(conn.recv()["type"], "hello")
        client.stop()
        self.assertIsNone(conn.recv())

    @unittest.skipUnless(hasattr(os, "fork"), "needs fork")
    def test_a_forked_child_opens_its_own_connection_and_leaves_the_parents_alone(self):
        parent = self.client()  # worker: this process's id
        parent_conn = self.sidecar.accept()
        self.assertEqual(parent_conn.recv()["worker"], str(os.getpid()))

        inherited = parent._sock.fileno()
        verdict_r, verdict_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: a pre-fork server's worker starting its client
            try:
                os.close(verdict_r)
                try:
                    os.fstat(inherited)
                    os.write(verdict_w, b"inherited connection still open")
                except OSError:
                    os.write(verdict_w, b"inherited connection closed")
                os.close(verdict_w)
                parent.start()
                time.sleep(TIMEOUT * 2)
            finally:
                os._exit(0)
        os.close(verdict_w)
        with os.fdopen(verdict_r, "rb") as verdict:
            self.assertEqual(verdict.read(), b"inherited connection closed")
        try:
            child_conn = self.sidecar.accept()
            self.assertEqual(child_conn.recv()["worker"], str(pid))
            child_conn.send(self.msg("r1", read("greeter_v1.py")))
            reply = child_conn.recv()
            self.assertEqual((reply["type"], reply["revision"]), ("loaded", "r1"))
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        self.assertIsNone(child_conn.recv(), "the child's connection ends with it")

        # The parent's connection is untouched: the child wrote nothing on it, and the
        # parent still answers its own loads there (it loaded nothing yet itself).
        parent_conn.send(self.msg("r2", read("greeter_v2.py")))
        reply = parent_conn.recv()
        self.assertEqual((reply["type"], reply["revision"]), ("loaded", "r2"))
        self.assertEqual(parent.serving("handler"), "r2")


if __name__ == "__main__":
    unittest.main()
