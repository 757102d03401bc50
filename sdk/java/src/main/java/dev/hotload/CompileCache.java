package dev.hotload;

import com.dylibso.chicory.compiler.Cache;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.AtomicMoveNotSupportedException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.concurrent.atomic.AtomicBoolean;

/**
 * Chicory's compiled classes kept on disk, so a restarted app (or a rollback to a revision it
 * ran before) skips translating the module again. One file per entry, named by the sha256 of
 * Chicory's key, written to a temporary name and moved into place, so a crash never leaves a
 * torn entry.
 */
final class CompileCache implements Cache {
    private final Path dir;

    CompileCache(Path dir) throws IOException {
        this.dir = Files.createDirectories(dir);
    }

    private Path file(String key) {
        return dir.resolve(Abi.digest(key.getBytes(StandardCharsets.UTF_8)).substring("sha256:".length()));
    }

    @Override
    public byte[] get(String key) throws IOException {
        try {
            return Files.readAllBytes(file(key));
        } catch (NoSuchFileException e) {
            return null;
        }
    }

    @Override
    public void putIfAbsent(String key, byte[] data) throws IOException {
        Path target = file(key);
        if (Files.exists(target)) {
            return;
        }
        Path tmp = Files.createTempFile(dir, "entry", ".tmp");
        try {
            Files.write(tmp, data);
            try {
                Files.move(tmp, target, StandardCopyOption.ATOMIC_MOVE);
            } catch (AtomicMoveNotSupportedException e) {
                Files.move(tmp, target, StandardCopyOption.REPLACE_EXISTING);
            }
        } finally {
            Files.deleteIfExists(tmp);
        }
    }

    /** A view for one load that notes whether anything was found. */
    static final class Tracking implements Cache {
        private final Cache inner;
        final AtomicBoolean hit = new AtomicBoolean();
        final AtomicBoolean miss = new AtomicBoolean();

        Tracking(Cache inner) {
            this.inner = inner;
        }

        @Override
        public byte[] get(String key) throws IOException {
            byte[] b = inner.get(key);
            (b != null ? hit : miss).set(true);
            return b;
        }

        @Override
        public void putIfAbsent(String key, byte[] data) throws IOException {
            inner.putIfAbsent(key, data);
        }
    }
}
