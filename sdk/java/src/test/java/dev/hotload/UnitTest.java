package dev.hotload;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.dylibso.chicory.wasm.types.MemoryLimits;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Map;
import org.junit.jupiter.api.Test;

/** The pure parts: ABI checks, digests, JSON, protocol parsing, failure wording. */
class UnitTest {
    @Test
    void packRoundTripsIncludingHighBitPointers() {
        long[][] cases = {{0, 0}, {1024, 5}, {0xffffffffL, 0xffffffffL}, {0x80000000L, 1}};
        for (long[] c : cases) {
            long p = Abi.pack(c[0], c[1]);
            assertEquals(c[0], Abi.unpackPtr(p));
            assertEquals(c[1], Abi.unpackLen(p));
        }
    }

    @Test
    void checkedRangeRejectsOutOfBoundsAndOverflow() {
        assertTrue(Abi.checkedRange(10, 5, 15));
        assertFalse(Abi.checkedRange(10, 6, 15));
        assertFalse(Abi.checkedRange(0xffffffffL, 0xffffffffL, 1 << 20));
        assertTrue(Abi.checkedRange(0, 0, 0));
    }

    private static Map<String, String> minimal() {
        Map<String, String> m = new HashMap<>();
        m.put("memory", "Memory");
        m.put("alloc", "(i32)->i32");
        m.put("handle", "(i32,i32)->i64");
        return m;
    }

    @Test
    void checkExportsNamesTheOffendingExport() throws Exception {
        Abi.Capabilities caps = Abi.checkExports(minimal());
        assertFalse(caps.selfCheck || caps.configure || caps.saveState || caps.restoreState);
        Map<String, String> e = minimal();
        e.remove("handle");
        assertEquals("missing export `handle` (i32,i32)->i64", assertThrows(Abi.Violation.class, () -> Abi.checkExports(e)).getMessage());
        Map<String, String> s = minimal();
        s.put("self_check", "()->i64");
        assertEquals("export `self_check` has signature ()->i64, want ()->i32",
                assertThrows(Abi.Violation.class, () -> Abi.checkExports(s)).getMessage());
        Map<String, String> m = minimal();
        m.put("memory", "(i32)->i32");
        assertEquals("export `memory` must be a memory, found Func(\"(i32)->i32\")",
                assertThrows(Abi.Violation.class, () -> Abi.checkExports(m)).getMessage());
    }

    @Test
    void digestsAreCheckedForForm() {
        assertEquals("sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", Abi.digest(new byte[0]));
        assertTrue(Abi.wellFormedDigest(Abi.digest(new byte[] {1})));
        assertFalse(Abi.wellFormedDigest("sha256:nope"));
        assertFalse(Abi.wellFormedDigest(Abi.digest(new byte[0]).toUpperCase(java.util.Locale.ROOT)));
    }

    @Test
    void jsonRoundTripsCompactlyKeepingOrderAndNumbers() throws Exception {
        String text = "{ \"b\": [1, 2.50, -3e2], \"a\": {\"x\": null, \"y\": true}, \"s\": \"q\\\"\\n\\u00e9\" }";
        assertEquals("{\"b\":[1,2.50,-3e2],\"a\":{\"x\":null,\"y\":true},\"s\":\"q\\\"\\né\"}", Json.write(Json.parse(text)));
        assertThrows(Json.ParseException.class, () -> Json.parse("{\"a\":1"));
        assertThrows(Json.ParseException.class, () -> Json.parse("[1,]"));
        assertThrows(Json.ParseException.class, () -> Json.parse("1 2"));
    }

    @Test
    void sidecarLinesAreParsedOrRefused() throws Exception {
        Protocol.SidecarMessage m = Protocol.parse(
                "{\"type\":\"load\",\"plugin\":\"auth\",\"revision\":\"r1\",\"path\":\"/p\",\"digest\":\"d\",\"config\":{\"threshold\": 3}}"
                        .getBytes(StandardCharsets.UTF_8));
        assertEquals("auth", m.plugin());
        assertArrayEquals("{\"threshold\":3}".getBytes(StandardCharsets.UTF_8), m.config());
        assertEquals(0, Protocol.parse("{\"type\":\"load\",\"plugin\":\"a\",\"revision\":\"r\",\"config\":null}"
                .getBytes(StandardCharsets.UTF_8)).config().length);
        for (String bad : new String[] {"hello?", "{\"type\":\"reboot\"}", "{\"type\":\"load\",\"plugin\":\"auth\"}", "",
                "{\"type\":\"unload\"}", "[]"}) {
            assertThrows(Protocol.Unusable.class, () -> Protocol.parse(bad.getBytes(StandardCharsets.UTF_8)), bad);
        }
        assertThrows(Protocol.Unusable.class, () -> Protocol.parse(new byte[] {(byte) 0xff, (byte) 0xfe}));
        assertEquals("{\"type\":\"hello\",\"app\":\"a\",\"worker\":\"7\",\"protocol\":2}\n",
                new String(Protocol.hello("a", "7"), StandardCharsets.UTF_8));
    }

    @Test
    void failuresAreWordedAsHotloadHost() {
        assertEquals("returned status 7", Failure.status(7).toString());
        assertEquals("deadline exceeded (interrupted)", Failure.timeout().toString());
        assertEquals("memory limit exceeded: asked for 17 bytes, limit is 16 bytes", Failure.memoryLimit(17, 16).toString());
        assertEquals("returned range ptr=2147418112 len=16 outside its memory", Failure.badRange(2147418112L, 16).toString());
        assertEquals("plugin p revision r: self-check failed: returned status 7",
                LoadException.guest(LoadException.Kind.SELF_CHECK, "p", "r", Failure.status(7)).getMessage());
        assertEquals("plugin p: cannot load more than 2 plugins", LoadException.tooManyPlugins("p", "r", 2).getMessage());
        assertEquals("plugin p: not loaded", CallException.notLoaded("p").getMessage());
    }

    @Test
    void chicorysMemoryIsSizedToTheLimitNotTheWasmMaximum() {
        long limit = 64L << 20; // 1024 pages
        MemoryLimits none = new MemoryLimits(2);
        assertEquals(1024, LimitedMemory.withinLimit(none, limit).maximumPages());
        assertEquals(2, LimitedMemory.withinLimit(none, limit).initialPages());
        MemoryLimits small = new MemoryLimits(1, 10);
        assertEquals(10, LimitedMemory.withinLimit(small, limit).maximumPages(), "a lower declared maximum stays");
        assertEquals(3, LimitedMemory.withinLimit(new MemoryLimits(3), 65536).maximumPages(),
                "never below the initial size");
        LimitedMemory m = new LimitedMemory(none, limit);
        assertEquals(none.maximumPages(), m.maximumPages(), "the guest still sees its own maximum");
        assertEquals(2, m.grow(1022), "grows right up to the limit");
        assertThrows(LimitedMemory.MemoryLimitExceeded.class, () -> m.grow(1));
    }
}
