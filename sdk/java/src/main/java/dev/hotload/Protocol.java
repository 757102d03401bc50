package dev.hotload;

import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The app socket protocol, v2 (docs/protocol.md): newline-delimited JSON over a Unix socket.
 * Pure functions only; {@link AppClient} does the I/O.
 *
 * <pre>
 * app ──► sidecar   {"type":"hello","app":"checkout","worker":"4711","protocol":2}
 * sidecar ──► app   {"type":"load","plugin":"auth","revision":"r2","path":"…","digest":"sha256:…","config":{…}}
 * app ──► sidecar   {"type":"loaded","plugin":"auth","revision":"r2","health":"…"}
 *                   {"type":"failed","plugin":"auth","revision":"r2","reason":"…"}
 * sidecar ──► app   {"type":"unload","plugin":"auth"}
 * app ──► sidecar   {"type":"unloaded","plugin":"auth"}
 * sidecar ──► app   {"type":"error","reason":"…"}   (the app sent something unusable)
 * </pre>
 */
final class Protocol {
    private Protocol() {}

    /** The app protocol version this SDK speaks. */
    static final int VERSION = 2;
    /** Bounds one line from the sidecar; a longer one is skipped, not buffered. */
    static final int MAX_SIDECAR_LINE = 1 << 20;

    /** A usable message from the sidecar; type says which fields are set. */
    record SidecarMessage(String type, String plugin, String revision, String path, String digest, byte[] config, String reason) {}

    /** A line that is not a usable message. */
    static final class Unusable extends Exception {
        private static final long serialVersionUID = 1L;

        Unusable(String message) {
            super(message);
        }
    }

    /** Parses one line (without its newline). Pure. */
    static SidecarMessage parse(byte[] line) throws Unusable {
        String text;
        try {
            text = StandardCharsets.UTF_8.newDecoder()
                    .onMalformedInput(CodingErrorAction.REPORT)
                    .onUnmappableCharacter(CodingErrorAction.REPORT)
                    .decode(ByteBuffer.wrap(line))
                    .toString();
        } catch (CharacterCodingException e) {
            throw new Unusable("not a sidecar message: not UTF-8");
        }
        Object v;
        try {
            v = Json.parse(text);
        } catch (Json.ParseException e) {
            throw new Unusable("not a sidecar message: " + e.getMessage());
        }
        if (!(v instanceof Map)) {
            throw new Unusable("not a sidecar message: not a JSON object");
        }
        Map<?, ?> m = (Map<?, ?>) v;
        String type = str(m, "type");
        String plugin = str(m, "plugin");
        String revision = str(m, "revision");
        switch (type) {
            case "load":
                if (plugin.isEmpty() || revision.isEmpty()) {
                    throw new Unusable("a load without plugin or revision cannot be answered");
                }
                break;
            case "unload":
                if (plugin.isEmpty()) {
                    throw new Unusable("an unload without plugin cannot be answered");
                }
                break;
            case "error":
                break;
            default:
                throw new Unusable("unknown message type " + Json.quote(type));
        }
        return new SidecarMessage(type, plugin, revision, str(m, "path"), str(m, "digest"), configBytes(m.get("config")), str(m, "reason"));
    }

    private static String str(Map<?, ?> m, String key) throws Unusable {
        Object v = m.get(key);
        if (v == null) {
            return "";
        }
        if (!(v instanceof String)) {
            throw new Unusable("not a sidecar message: field " + key + " is not a string");
        }
        return (String) v;
    }

    /**
     * What a plugin's configure export receives for a release's config: nothing for null (no
     * config), else the JSON text, compact, as the Rust host passes it.
     */
    static byte[] configBytes(Object config) {
        return config == null ? new byte[0] : Json.write(config).getBytes(StandardCharsets.UTF_8);
    }

    static byte[] line(Map<String, Object> msg) {
        return (Json.write(msg) + "\n").getBytes(StandardCharsets.UTF_8);
    }

    static byte[] hello(String app, String worker) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("type", "hello");
        m.put("app", app);
        m.put("worker", worker);
        m.put("protocol", VERSION);
        return line(m);
    }

    static byte[] loaded(String plugin, String revision, String health) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("type", "loaded");
        m.put("plugin", plugin);
        m.put("revision", revision);
        m.put("health", health);
        return line(m);
    }

    static byte[] failed(String plugin, String revision, String reason) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("type", "failed");
        m.put("plugin", plugin);
        m.put("revision", revision);
        m.put("reason", reason);
        return line(m);
    }

    static byte[] health(List<PluginHealth> plugins) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("type", "health");
        m.put("plugins", plugins.stream().map(PluginHealth::toMessage).toList());
        return line(m);
    }

    static byte[] unloaded(String plugin) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("type", "unloaded");
        m.put("plugin", plugin);
        return line(m);
    }

    /** The wait before the next connection attempt: doubling, capped. Pure. */
    static Duration nextBackoff(Duration d, Duration lo, Duration hi) {
        if (d.compareTo(lo) < 0) {
            return lo;
        }
        Duration next = d.multipliedBy(2);
        return next.compareTo(hi) > 0 ? hi : next;
    }
}
