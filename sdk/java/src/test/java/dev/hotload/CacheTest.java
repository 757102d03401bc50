package dev.hotload;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Compiled code kept in a cache directory is reused by a later host. */
class CacheTest {
    @Test
    void aSecondHostLoadsFromTheCache(@TempDir Path dir) throws Exception {
        byte[] v1 = Conformance.pluginBytes("tagger-v1.wasm");
        LoadRequest req = new LoadRequest("auth", "r1", Abi.digest(v1), null, v1);
        HostConfig cfg = HostConfig.builder().cacheDir(dir.resolve("cache")).build();
        try (PluginHost first = new PluginHost(cfg)) {
            assertEquals("miss", first.load(req).cache());
        }
        try (PluginHost second = new PluginHost(cfg)) {
            Loaded l = second.load(req);
            assertEquals("hit", l.cache(), l.health());
            assertEquals("v01:xv01:", new String(second.call("auth", "x".getBytes(StandardCharsets.UTF_8)), StandardCharsets.UTF_8));
        }
        try (PluginHost plain = new PluginHost(HostConfig.defaults())) {
            assertEquals("uncached", plain.load(req).cache());
        }
        try (var files = Files.list(dir.resolve("cache"))) {
            assertEquals(false, files.findAny().isEmpty());
        }
    }
}
