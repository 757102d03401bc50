package dev.hotload;

import java.time.Duration;
import java.util.Objects;

/**
 * The limits and knobs of a {@link PluginHost}; every field has hotload-host's production
 * default. Build one with {@link #builder()}.
 */
public final class HostConfig {
    final long maxMemoryBytes;
    final Duration callTimeout;
    final int instancesPerRevision;
    final Duration checkoutTimeout;
    final int maxPlugins;
    final Hooks hooks;
    final boolean compile;
    final java.nio.file.Path cacheDir;

    private HostConfig(Builder b) {
        this.maxMemoryBytes = b.maxMemoryBytes;
        this.callTimeout = b.callTimeout;
        this.instancesPerRevision = b.instancesPerRevision;
        this.checkoutTimeout = b.checkoutTimeout;
        this.maxPlugins = b.maxPlugins;
        this.hooks = b.hooks;
        this.compile = b.compile;
        this.cacheDir = b.cacheDir;
    }

    /** A builder with the defaults. */
    public static Builder builder() {
        return new Builder();
    }

    /** The defaults. */
    public static HostConfig defaults() {
        return builder().build();
    }

    /** Builds a {@link HostConfig}. */
    public static final class Builder {
        private long maxMemoryBytes = 64L << 20;
        private Duration callTimeout = Duration.ofMillis(500);
        private int instancesPerRevision = 4;
        private Duration checkoutTimeout = Duration.ofSeconds(2);
        private int maxPlugins = 16;
        private Hooks hooks = new Hooks() {};
        private boolean compile = true;
        private java.nio.file.Path cacheDir;

        private Builder() {}

        /** Ceiling of one instance's linear memory (default 64 MiB); growth past it traps. */
        public Builder maxMemoryBytes(long bytes) {
            if (bytes <= 0) {
                throw new IllegalArgumentException("maxMemoryBytes must be positive");
            }
            this.maxMemoryBytes = bytes;
            return this;
        }

        /** Longest one guest call (request, self-check, configure, state hand-over) may run (default 500 ms). */
        public Builder callTimeout(Duration timeout) {
            if (timeout.isNegative() || timeout.isZero()) {
                throw new IllegalArgumentException("callTimeout must be positive");
            }
            this.callTimeout = timeout;
            return this;
        }

        /** Warm instances per revision: the most calls one plugin serves in parallel (default 4). */
        public Builder instancesPerRevision(int n) {
            if (n <= 0) {
                throw new IllegalArgumentException("instancesPerRevision must be positive");
            }
            this.instancesPerRevision = n;
            return this;
        }

        /** How long a call waits for a free instance before it fails busy (default 2 s). */
        public Builder checkoutTimeout(Duration timeout) {
            if (timeout.isNegative() || timeout.isZero()) {
                throw new IllegalArgumentException("checkoutTimeout must be positive");
            }
            this.checkoutTimeout = timeout;
            return this;
        }

        /** The most named plugins one host holds (default 16). */
        public Builder maxPlugins(int n) {
            if (n <= 0) {
                throw new IllegalArgumentException("maxPlugins must be positive");
            }
            this.maxPlugins = n;
            return this;
        }

        /** Receives load events (default: none). */
        public Builder hooks(Hooks hooks) {
            this.hooks = Objects.requireNonNull(hooks);
            return this;
        }

        /**
         * Whether to translate each module to JVM bytecode at load time (default true, much
         * faster calls); false runs Chicory's interpreter. Both stop at the call deadline.
         */
        public Builder compile(boolean compile) {
            this.compile = compile;
            return this;
        }

        /**
         * Where compiled code is kept across restarts (default: none, compiled on every load);
         * only with {@link #compile(boolean) compile} on.
         */
        public Builder cacheDir(java.nio.file.Path dir) {
            this.cacheDir = dir;
            return this;
        }

        /** The config. */
        public HostConfig build() {
            return new HostConfig(this);
        }
    }
}
