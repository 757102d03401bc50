package dev.hotload;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;

/** Asks to make {@code revision} the serving revision of {@code plugin}. */
public record LoadRequest(String plugin, String revision, String digest, byte[] config, byte[] wasm) {
    /** Normalises a null config to no bytes. */
    public LoadRequest {
        config = config == null ? new byte[0] : config;
    }

    /** Reads the module from path (the sidecar's store on the shared volume). */
    public static LoadRequest read(String plugin, String revision, Path path, String digest, byte[] config) throws LoadException {
        try {
            return new LoadRequest(plugin, revision, digest, config, Files.readAllBytes(path));
        } catch (IOException | RuntimeException e) {
            throw LoadException.read(plugin, revision, path.toString(), e);
        }
    }
}
