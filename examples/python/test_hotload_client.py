"""Unit tests of the Python client's load path (stdlib unittest; no sidecar needed).

The end-to-end test against the real sidecar agent and Unix socket is
examples/demo-app/tests/python_client.rs. Run: python3 -m unittest discover examples/python
"""

import hashlib
import os
import tempfile
import unittest

from hotload_client import HotloadClient

HERE = os.path.dirname(os.path.abspath(__file__))


def read(name):
    with open(os.path.join(HERE, "plugins", name), "rb") as f:
        return f.read()


class LoadTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.client = HotloadClient(os.path.join(self.dir.name, "unused.sock"))

    def tearDown(self):
        self.dir.cleanup()

    def msg(self, revision, source, digest=None, config=None):
        path = os.path.join(self.dir.name, revision)
        with open(path, "wb") as f:
            f.write(source)
        digest = digest or "sha256:" + hashlib.sha256(source).hexdigest()
        return {"type": "load", "plugin": "handler", "revision": revision, "path": path,
                "digest": digest, "config": config}

    def test_load_swap_and_state_handover(self):
        reply = self.client.load(self.msg("r1", read("greeter_v1.py")))
        self.assertEqual(reply["type"], "loaded", reply)
        self.assertEqual(self.client.call("handler", "a"), "v1:a:1")
        reply = self.client.load(self.msg("r2", read("greeter_v2.py"), config={"greeting": "hi"}))
        self.assertEqual(reply["health"], "self-check passed; state restored")
        self.assertEqual(self.client.call("handler", "b"), "v2:hi b:2")

    def test_failures_keep_the_old_module_and_say_why(self):
        self.client.load(self.msg("r1", read("greeter_v1.py")))
        cases = [
            (self.msg("r2", b"def handle(r)\n"), "import failed: SyntaxError"),
            (self.msg("r3", b"x = 1\n"), "ABI violation: module defines no handle()"),
            (self.msg("r4", b"def handle(r): return r\ndef self_check(): return False\n"),
             "self_check returned False"),
            (self.msg("r5", b"def handle(r): return r\ndef self_check(): raise RuntimeError('db')\n"),
             "self_check raised RuntimeError: db"),
            (self.msg("r6", b"def handle(r): return r\ndef restore_state(s): raise ValueError('v')\n"),
             "restore_state raised ValueError: v"),
            (self.msg("r7", read("greeter_v2.py"), digest="sha256:" + "0" * 64), "digest mismatch"),
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
        self.assertEqual(self.client.unload("handler"), {"type": "unloaded", "plugin": "handler"})
        self.assertIsNone(self.client.serving("handler"))
        with self.assertRaises(LookupError):
            self.client.call("handler", "a")
        self.assertEqual(self.client.unload("handler")["type"], "unloaded")


if __name__ == "__main__":
    unittest.main()
